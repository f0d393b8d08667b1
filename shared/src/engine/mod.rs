//! Carries out the DAG core's decisions: pure steps inline, I/O steps handed
//! out as dispatches whose results come back through `record_external`.

mod advance;
mod context;
mod external;
pub mod steps;

pub use advance::{Advanced, DEFAULT_STEP_TIMEOUT, Dispatch, Limits, advance, advance_from};
pub use context::{RunInfo, context_for, records_read, value_of};
pub use external::{
    InFlight, ORPHAN_GRACE, Orphans, attempt_deadline, interrupt_orphans, record_external,
};

#[cfg(test)]
mod tests;
