//! Carries out the DAG core's decisions for the steps that need no I/O.

mod advance;
mod context;
pub mod steps;

pub use advance::{Advanced, advance};
pub use context::{RunInfo, context_for, value_of};

#[cfg(test)]
mod tests;
