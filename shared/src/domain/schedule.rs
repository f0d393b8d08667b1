//! Schedules: a workflow started on a cron pattern or at a fixed rate, in
//! a time zone, with what to do about fire times missed and runs that
//! overlap. The rules for when one fires are in `crate::schedules`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{RunId, ScheduleId, WorkflowId, WorkspaceId};

/// Fire times missed while nothing ticked (downtime).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Only the latest missed fire time starts a run.
    #[default]
    Latest,
    /// Every missed fire time starts a run (at most `MAX_CATCH_UP`).
    All,
    /// None: the schedule goes on from now.
    None,
}

/// A fire time while the schedule's previous run is still active.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Starts another run beside it.
    #[default]
    Allow,
    /// Starts nothing for that fire time.
    Skip,
    /// Keeps one fire time, started once the previous run ends.
    BufferOne,
    /// Cancels the previous run and starts the new one.
    CancelOther,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub workspace_id: WorkspaceId,
    pub id: ScheduleId,
    pub workflow_id: WorkflowId,
    /// A cron pattern (5 or 6 fields, or `@hourly`-style) or `rate(N unit)`.
    pub spec: String,
    /// The IANA time zone the pattern is read in.
    pub timezone: String,
    /// The input of each run it starts.
    pub input: Value,
    pub paused: bool,
    pub catch_up: CatchUp,
    pub overlap: Overlap,
    /// The next fire time not yet handled; None while paused.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The last fire time that started a run, and that run.
    pub last_fire_at: Option<DateTime<Utc>>,
    pub last_run_id: Option<RunId>,
    /// A fire time kept for when the previous run ends (`BufferOne`).
    pub buffered_fire_at: Option<DateTime<Utc>>,
    /// When a tick next has something to do for it (the store's index of
    /// due schedules); None while paused.
    pub due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Moves on with every write; writes are conditioned on it.
    pub revision: u64,
}
