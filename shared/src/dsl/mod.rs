//! The workflow definition language: JSON in, a validated `Workflow` out.

mod definition;
mod duration;
mod graph;
mod parse;
mod path;

pub use definition::*;
pub use duration::{parse_duration, MAX_DURATION};
pub use parse::{parse_workflow, step_ids, MAX_DEFINITION_BYTES, MAX_MAP_CONCURRENCY, MAX_STEPS};
pub use path::{Path, ValidationError};

#[cfg(test)]
mod tests;
