//! Recorded state of runs and their steps: what the DAG core reads and what the
//! stores persist.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Usd;
use super::ids::{RunId, WorkflowId, WorkspaceId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    Pending,
    Running,
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Waiting => "WAITING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Running,
            Self::Waiting,
            Self::Completed,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|v| v.as_str().eq_ignore_ascii_case(s))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Skipped | Self::Cancelled
        )
    }
}

/// Why a step attempt failed. `retryable` decides whether the step's retry
/// policy applies at all (a template error fails the same way every time).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepError {
    /// Machine-readable class, e.g. `template_error`, `timeout`, `extract_json_failed`.
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
    /// How long the other side asked us to wait before trying again
    /// (`Retry-After`); the retry waits at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<f64>,
}

impl StepError {
    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable: false,
            retry_after_secs: None,
        }
    }

    pub fn transient(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            retryable: true,
            retry_after_secs: None,
        }
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// One try of a step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

/// The recorded state of one step instance. Top-level steps are keyed by their
/// id; steps inside a map iteration by `map_id.index.step_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub key: String,
    #[serde(rename = "type")]
    pub step_type: String,
    pub status: StepStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    /// Why a step was skipped or cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// When a pending step's next attempt is due (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<DateTime<Utc>>,
    /// When a waiting step wakes: a delay's end or an approval's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<DateTime<Utc>>,
    /// A map step's resolved items, fixed when the map starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Value>>,
    /// About how many bytes its output (and items) take as JSON: what the
    /// step adds to its run's state.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub size: u64,
}

/// A step record read without its output and items: what ordering and
/// counting a run's steps needs, whatever its outputs hold (they are read
/// for the steps shown, by key). `size` still says how large they are.
pub struct StepHead(pub StepRecord);

impl<'de> Deserialize<'de> for StepHead {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IgnoredAny;
        #[derive(Deserialize)]
        struct Fields {
            key: String,
            #[serde(rename = "type")]
            step_type: String,
            status: StepStatus,
            #[serde(default)]
            attempts: Vec<Attempt>,
            #[serde(default)]
            #[allow(dead_code)]
            output: Option<IgnoredAny>,
            #[serde(default)]
            error: Option<StepError>,
            #[serde(default)]
            reason: Option<String>,
            #[serde(default)]
            started_at: Option<DateTime<Utc>>,
            #[serde(default)]
            finished_at: Option<DateTime<Utc>>,
            #[serde(default)]
            retry_at: Option<DateTime<Utc>>,
            #[serde(default)]
            wake_at: Option<DateTime<Utc>>,
            #[serde(default)]
            #[allow(dead_code)]
            items: Option<IgnoredAny>,
            #[serde(default)]
            size: u64,
        }
        let f = Fields::deserialize(d)?;
        Ok(StepHead(StepRecord {
            key: f.key,
            step_type: f.step_type,
            status: f.status,
            attempts: f.attempts,
            output: None,
            error: f.error,
            reason: f.reason,
            started_at: f.started_at,
            finished_at: f.finished_at,
            retry_at: f.retry_at,
            wake_at: f.wake_at,
            items: None,
            size: f.size,
        }))
    }
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

impl StepRecord {
    pub fn new(key: impl Into<String>, step_type: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            step_type: step_type.into(),
            status: StepStatus::Pending,
            attempts: Vec::new(),
            output: None,
            error: None,
            reason: None,
            started_at: None,
            finished_at: None,
            retry_at: None,
            wake_at: None,
            items: None,
            size: 0,
        }
    }

    pub fn duration_ms(&self) -> Option<i64> {
        Some((self.finished_at? - self.started_at?).num_milliseconds())
    }
}

/// A run's row: everything but its steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub workspace_id: WorkspaceId,
    pub id: RunId,
    pub workflow_id: WorkflowId,
    pub workflow_version: u32,
    pub status: RunStatus,
    pub input: Value,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<StepError>,
    pub created_at: DateTime<Utc>,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// When the orchestrator must look at the run again (None: only an outside
    /// event such as an approval can move it).
    #[serde(default)]
    pub wake_at: Option<DateTime<Utc>>,
    /// Most the run may spend on model calls, in USD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<Usd>,
    /// Bumped on every write; writers condition on it (optimistic concurrency).
    pub revision: u64,
    /// Who drives the run and until when, where drivers can vanish (on AWS;
    /// see `orchestrator::lease`). None where the process driving runs is
    /// the one holding them (embedded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<Lease>,
    /// What its steps' outputs take in memory, as of its last pass (the sum
    /// of their `size`): known before its steps are read.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub state_bytes: u64,
    /// What its input and output take in memory (`memory::mem_size`):
    /// known before they are read.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub io_bytes: u64,
}

/// A run's row read without its input and output (`input` is null,
/// `output` None): what listing runs needs, whatever they hold.
pub struct RunHead(pub RunRecord);

impl<'de> Deserialize<'de> for RunHead {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::IgnoredAny;
        #[derive(Deserialize)]
        struct Fields {
            workspace_id: WorkspaceId,
            id: RunId,
            workflow_id: WorkflowId,
            workflow_version: u32,
            status: RunStatus,
            #[allow(dead_code)]
            input: IgnoredAny,
            #[serde(default)]
            #[allow(dead_code)]
            output: Option<IgnoredAny>,
            #[serde(default)]
            error: Option<StepError>,
            created_at: DateTime<Utc>,
            #[serde(default)]
            started_at: Option<DateTime<Utc>>,
            #[serde(default)]
            finished_at: Option<DateTime<Utc>>,
            #[serde(default)]
            wake_at: Option<DateTime<Utc>>,
            #[serde(default)]
            budget_usd: Option<Usd>,
            revision: u64,
            #[serde(default)]
            lease: Option<Lease>,
            #[serde(default)]
            state_bytes: u64,
            #[serde(default)]
            io_bytes: u64,
        }
        let f = Fields::deserialize(d)?;
        Ok(RunHead(RunRecord {
            workspace_id: f.workspace_id,
            id: f.id,
            workflow_id: f.workflow_id,
            workflow_version: f.workflow_version,
            status: f.status,
            input: Value::Null,
            output: None,
            error: f.error,
            created_at: f.created_at,
            started_at: f.started_at,
            finished_at: f.finished_at,
            wake_at: f.wake_at,
            budget_usd: f.budget_usd,
            revision: f.revision,
            lease: f.lease,
            state_bytes: f.state_bytes,
            io_bytes: f.io_bytes,
        }))
    }
}

/// A run's driver on AWS: one execution at a time holds the run, and must
/// come back to it before `until`, or the sweeper resumes the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// The execution holding the run (`lease::owner_id` of its ARN); None:
    /// the next to come takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// After this, with the run not finished, its driver is gone.
    pub until: DateTime<Utc>,
    /// How many Standard executions were started for the run (the next is
    /// named `{run}-{generation + 1}`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u32,
    /// History events the holding execution has used, roughly.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub events: u32,
    /// Times the sweeper resumed the run without a pass making progress
    /// in between.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sweeps: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One line of a run's execution log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub timestamp: DateTime<Utc>,
    pub level: LogLevel,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_id: Option<String>,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

impl LogEntry {
    pub fn new(level: LogLevel, step_id: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            timestamp: Utc::now(),
            level,
            step_id: step_id.map(str::to_owned),
            message: message.into(),
        }
    }
}
