//! The DAG core: pure decisions from a run's recorded state. Given the
//! workflow and the step records, `plan` says which steps start, which are
//! skipped, which waiting steps wake, when to look again and whether the run
//! is over; `attempt` records the outcome of a try and applies the retry
//! policy. Nothing here does I/O or reads the clock: both orchestrators (the
//! embedded loop and the Step Functions driver) call these and carry out the
//! answers.

mod attempt;
mod plan;

pub use attempt::{
    backoff, begin_attempt, cancel_step, checked_result, close_open_steps, finish_attempt,
    record_attempt, skip_step,
};
pub use plan::{Cursors, Decision, Outcome, Plan, Records, plan, plan_from};

#[cfg(test)]
mod tests;
