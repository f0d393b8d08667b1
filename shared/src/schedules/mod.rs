//! Schedules: when each fires (`timing`) and what a tick does about the
//! fire times that are due (`fire`), once, for both modes.

pub mod timing;

pub use timing::Timing;
