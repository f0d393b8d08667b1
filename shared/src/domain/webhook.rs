//! Outbound webhooks: endpoints a workspace registers, and the deliveries
//! of run events to them (Standard Webhooks: signed, retried on a
//! schedule, disabled by a 410). How they are sent is in
//! `crate::webhooks`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{EndpointId, RunId, RunStatus, WorkflowId, WorkspaceId};

/// The events an endpoint can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "run.completed")]
    RunCompleted,
    #[serde(rename = "run.failed")]
    RunFailed,
    #[serde(rename = "run.cancelled")]
    RunCancelled,
    /// Another endpoint of the workspace was disabled by Weft (it answered
    /// 410, or failed for days).
    #[serde(rename = "endpoint.disabled")]
    EndpointDisabled,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        Self::RunCompleted,
        Self::RunFailed,
        Self::RunCancelled,
        Self::EndpointDisabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RunCompleted => "run.completed",
            Self::RunFailed => "run.failed",
            Self::RunCancelled => "run.cancelled",
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
/// bytes). After a rotation the old key signs too until `expires_at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    pub secret: String,
    pub expires_at: Option<DateTime<Utc>>,
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

    /// The keys that sign at `now`.
    pub fn signing_keys(&self, now: DateTime<Utc>) -> impl Iterator<Item = &str> {
        self.keys
            .iter()
            .filter(move |k| k.expires_at.is_none_or(|t| t > now))
            .map(|k| k.secret.as_str())
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
