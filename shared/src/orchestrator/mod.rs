//! Drivers of runs. The embedded one lives here; the AWS deployment drives
//! runs with Step Functions calling the same `engine::advance`.

mod embedded;
mod fair;
mod kept;
pub mod lease;
pub(crate) mod lookback;
mod recovery;
pub mod stepfunctions;
pub mod tick;

pub use embedded::Embedded;

#[cfg(test)]
mod embedded_tests;
