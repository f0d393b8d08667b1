//! Carries out the DAG core's decisions for the steps that need no I/O.

mod advance;
mod context;
pub mod steps;

pub use advance::{advance, Advanced};
pub use context::{context_for, value_of, RunInfo};

#[cfg(test)]
mod tests;
