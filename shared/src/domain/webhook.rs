//! Outbound webhooks: endpoints a workspace registers, and the deliveries
//! of run events to them (Standard Webhooks: signed, retried on a
//! schedule, disabled by a 410). How they are sent is in
//! `crate::webhooks`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    EndpointId, RunId, RunRecord, RunStatus, StepError, StepRecord, StepStatus, WorkflowId,
    WorkspaceId,
};

/// The events an endpoint can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "run.completed")]
    RunCompleted,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "run.cancelled")]
    RunCancelled,
    /// A step began waiting for an approval or an event.
    #[serde(rename = "run.waiting")]
    RunWaiting,
    /// A step failed (its retries spent); the run may go on.
    #[serde(rename = "step.failed")]
    StepFailed,
    /// A model call was refused: the run's or the month's budget is spent.
    #[serde(rename = "budget.exceeded")]
    BudgetExceeded,
    /// Another endpoint of the workspace was disabled by Weft (it answered
    /// 410, or failed for days).
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
}

impl EventType {
    pub const ALL: [EventType; 7] = [
        Self::RunCompleted,
        Self::RunFailed,
        Self::RunCancelled,
        Self::RunWaiting,
        Self::StepFailed,
        Self::BudgetExceeded,
        Self::EndpointDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunCompleted => "run.completed",
            Self::RunFailed => "run.failed",
            Self::RunCancelled => "run.cancelled",
            Self::RunWaiting => "run.waiting",
            Self::StepFailed => "step.failed",
            Self::BudgetExceeded => "budget.exceeded",
            Self::EndpointDisabled => "endpoint.disabled",
        }
    }

    /// The names, for messages (`run.completed, run.failed, …`).
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }

    /// The event of a run that ended with `status` (None: not ended).
    pub fn of_run(status: RunStatus) -> Option<Self> {
        match status {
            RunStatus::Completed => Some(Self::RunCompleted),
            RunStatus::Failed => Some(Self::RunFailed),
            RunStatus::Cancelled => Some(Self::RunCancelled),
            _ => None,
        }
    }
}

/// A key deliveries are signed with (`whsec_` + base64 of 24 random
/// bytes), kept in the workspace's secret store under `secret_name` (never
/// in the endpoint's record). After a rotation the old key signs too until
/// `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub secret_name: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl SigningKey {
    /// A new key's name: `endpoint-{id}-{random}` (a `-` no tenant's
    /// secret name has, so the API neither shows nor takes it).
    pub fn new_name(endpoint: &EndpointId) -> String {
        let n: u64 = rand::random();
        format!("endpoint-{endpoint}-{n:016x}")
    }

    /// Whether a secret of this name holds an endpoint's signing key.
    pub fn is_key_name(name: &str) -> bool {
        name.starts_with("endpoint-")
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub workspace_id: WorkspaceId,
    pub id: EndpointId,
    pub url: String,
    /// The events it takes.
    pub events: Vec<EventType>,
    /// Only runs of these workflows (empty: every workflow).
    pub workflow_ids: Vec<WorkflowId>,
    pub description: Option<String>,
    /// Most deliveries sent to it in one second (None: no limit but
    /// Weft's own).
    #[serde(default)]
    pub rate_limit: Option<u32>,
    pub disabled: bool,
    /// Why it was disabled, when Weft did it (a 410 answer, or failing
    /// for `FAILING_DAYS_TO_DISABLE`).
    pub disabled_reason: Option<String>,
    /// When its deliveries began failing (None: the last attempt
    /// succeeded).
    #[serde(default)]
    pub failing_since: Option<DateTime<Utc>>,
    /// The newest first; never shown but on creation and rotation.
    pub keys: Vec<SigningKey>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Moves on with every write; writes are conditioned on it.
    pub revision: u64,
}

impl Endpoint {
    /// Whether an event goes to it: of a run of workflow `wf`, or of no
    /// run (None: the workflow filter does not apply).
    pub fn wants(&self, ty: EventType, wf: Option<&WorkflowId>) -> bool {
        !self.disabled
            && self.events.contains(&ty)
            && (self.workflow_ids.is_empty() || wf.is_none_or(|w| self.workflow_ids.contains(w)))
    }

    /// The names of the keys that sign at `now`.
    pub fn signing_keys(&self, now: DateTime<Utc>) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .filter(move |k| k.expires_at.is_none_or(|t| t > now))
            .map(|k| k.secret_name.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not yet accepted; `next_attempt_at` says when it is tried.
    Pending,
    Succeeded,
    /// Every attempt failed, or the endpoint went away (dead-lettered:
    /// listed by `?status=failed`, replayable).
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// One try of a delivery.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    pub at: DateTime<Utc>,
    /// The endpoint's answer, if it answered.
    pub status_code: Option<u16>,
    /// What went wrong (no answer, a non-2xx one), short.
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The start of the answer's body (at most `ANSWER_KEPT_BYTES`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
}

/// How much of an endpoint's answer an attempt keeps.
pub const ANSWER_KEPT_BYTES: usize = 1024;
/// An endpoint whose deliveries have failed this long (no success
/// between) is disabled.
pub const FAILING_DAYS_TO_DISABLE: i64 = 5;

/// One message to one endpoint, and its attempts. Its id is the
/// `webhook-id` the endpoint sees, the same on every attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub workspace_id: WorkspaceId,
    pub id: String,
    pub endpoint_id: EndpointId,
    pub event_type: EventType,
    /// The run it tells of (None: an event of no run, `endpoint.disabled`).
    #[serde(default)]
    pub run_id: Option<RunId>,
    /// The body sent, fixed when the delivery is made.
    pub payload: String,
    pub created_at: DateTime<Utc>,
    pub status: DeliveryStatus,
    pub attempts: Vec<DeliveryAttempt>,
    /// Attempts since it was made or last replayed (what the retry
    /// schedule counts).
    pub round: u32,
    /// When it is next tried (None once it is done).
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub revision: u64,
}

impl Delivery {
    /// A new delivery of `payload`, due at once.
    pub fn pending(
        ws: &WorkspaceId,
        id: String,
        endpoint: &EndpointId,
        event_type: EventType,
        run_id: Option<RunId>,
        payload: String,
    ) -> Self {
        let now = Utc::now();
        Self {
            workspace_id: ws.clone(),
            id,
            endpoint_id: endpoint.clone(),
            event_type,
            run_id,
            payload,
            created_at: now,
            status: DeliveryStatus::Pending,
            attempts: Vec::new(),
            round: 0,
            next_attempt_at: Some(now),
            revision: 1,
        }
    }
}

/// Which delivery a queue message is about (the message's whole body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRef {
    pub workspace_id: WorkspaceId,
    pub endpoint_id: EndpointId,
    pub id: String,
}

impl From<&Delivery> for DeliveryRef {
    fn from(d: &Delivery) -> Self {
        Self {
            workspace_id: d.workspace_id.clone(),
            endpoint_id: d.endpoint_id.clone(),
            id: d.id.clone(),
        }
    }
}

/// What of a step an event tells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepSummary {
    pub key: String,
    #[serde(rename = "type")]
    pub step_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
    /// When a waiting step times out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<DateTime<Utc>>,
    /// When it happened: the step's end, or its start (a wait); the same
    /// each time the step's record is read.
    pub at: DateTime<Utc>,
}

impl StepSummary {
    fn of(s: &StepRecord, run: &RunRecord) -> Self {
        // An error's message can quote what a step got (an answer, a
        // model's reply): the outbox keeps its start only, so a save's
        // outbox entry stays small (one DynamoDB item).
        let error = s.error.clone().map(|mut e| {
            if let Some((i, _)) = e.message.char_indices().nth(MAX_TOLD_ERROR_CHARS) {
                e.message.truncate(i);
                e.message.push('…');
            }
            e
        });
        Self {
            key: s.key.clone(),
            step_type: s.step_type.clone(),
            error,
            wake_at: s.wake_at,
            at: s.finished_at.or(s.started_at).unwrap_or(run.created_at),
        }
    }
}

/// Something a save of a run did that endpoints may be told of: the
/// outbox holds these, written in the save's own transaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run ended (which way, its stored status says).
    Ended,
    Waiting {
        step: StepSummary,
    },
    StepFailed {
        step: StepSummary,
    },
    BudgetExceeded {
        step: StepSummary,
    },
}

/// The step types whose waiting is told (`run.waiting`): those waiting on
/// someone, not a delay's timer.
const TOLD_WAITS: [&str; 2] = ["approval", "wait_for_event"];

impl RunEvent {
    /// The events of a save of `run` that wrote `steps` (those it changed).
    pub fn of_save(run: &RunRecord, steps: &[StepRecord]) -> Vec<RunEvent> {
        let mut out = Vec::new();
        for s in steps {
            match s.status {
                StepStatus::Waiting if TOLD_WAITS.contains(&s.step_type.as_str()) => {
                    out.push(RunEvent::Waiting {
                        step: StepSummary::of(s, run),
                    });
                }
                StepStatus::Failed => {
                    let step = StepSummary::of(s, run);
                    if s.error.as_ref().is_some_and(|e| e.code == BUDGET_EXCEEDED) {
                        out.push(RunEvent::BudgetExceeded { step: step.clone() });
                    }
                    out.push(RunEvent::StepFailed { step });
                }
                _ => {}
            }
        }
        if run.status.is_terminal() {
            out.push(RunEvent::Ended);
        }
        out
    }

    /// Its type, given the run as it is now (None: an end of a run that
    /// has not ended).
    pub fn event_type(&self, run: &RunRecord) -> Option<EventType> {
        match self {
            RunEvent::Ended => EventType::of_run(run.status),
            RunEvent::Waiting { .. } => Some(EventType::RunWaiting),
            RunEvent::StepFailed { .. } => Some(EventType::StepFailed),
            RunEvent::BudgetExceeded { .. } => Some(EventType::BudgetExceeded),
        }
    }

    /// Its name as stored (the serde tag).
    pub fn kind(&self) -> &'static str {
        match self {
            RunEvent::Ended => "ended",
            RunEvent::Waiting { .. } => "waiting",
            RunEvent::StepFailed { .. } => "step_failed",
            RunEvent::BudgetExceeded { .. } => "budget_exceeded",
        }
    }

    pub fn step(&self) -> Option<&StepSummary> {
        match self {
            RunEvent::Ended => None,
            RunEvent::Waiting { step }
            | RunEvent::StepFailed { step }
            | RunEvent::BudgetExceeded { step } => Some(step),
        }
    }
}

/// Most characters of a step's error message an event keeps.
const MAX_TOLD_ERROR_CHARS: usize = 1000;

/// The error code of a model call refused for budget.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";

/// A run's events not yet made into deliveries (one save's, or one of
/// them); `key` names it in the store, to forget it once they are made.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxEntry {
    pub workspace_id: WorkspaceId,
    pub run_id: RunId,
    pub events: Vec<RunEvent>,
    pub key: String,
}
