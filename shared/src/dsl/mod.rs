//! The workflow definition language: JSON in, a validated `Workflow` out.

mod definition;
mod duration;
mod graph;
mod parse;
mod path;

pub use definition::*;
pub use duration::{MAX_DURATION, parse_duration};
pub use parse::{
    LLM_PROVIDERS, MAX_BUDGET_USD, MAX_DEFINITION_BYTES, MAX_MAP_CONCURRENCY, MAX_STEPS,
    MAX_TRIGGERS, budget_usd, is_event_name, is_provider_name, is_secret_name, parse_workflow,
    step_ids,
};
pub use path::{Path, ValidationError};

#[cfg(test)]
mod tests;
