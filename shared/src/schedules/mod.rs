//! Schedules: when each fires (`timing`) and what a tick does about the
//! fire times that are due (`fire`), once, for both modes.

pub mod fire;
pub mod timing;

pub use fire::{Fire, plan};
pub use timing::Timing;
