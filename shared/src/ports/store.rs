//! Store ports, one trait per table. Every call about tenant data takes the
//! workspace id, so no call can reach another workspace's items.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::page::{Page, PageRequest};
use crate::domain::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the item changed or already exists.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The backend failed; the message is for logs, not for clients.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait WorkspaceStore: Send + Sync {
    async fn create_workspace(&self, ws: &Workspace) -> StoreResult<()>;
    async fn get_workspace(&self, id: &WorkspaceId) -> StoreResult<Option<Workspace>>;
}

/// What a change to a key came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyChange {
    Done,
    NotFound,
    /// Refused: the workspace would be left with no owner key that lasts.
    LastOwner,
}

#[async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Stores a key unless its workspace has `most` keys already (false
    /// then). Conflict if a key with the same hash exists.
    async fn insert_api_key(&self, key: &ApiKeyRecord, most: usize) -> StoreResult<bool>;
    /// The one lookup not scoped by workspace: the key is what names it.
    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>>;
    /// The workspace's keys (at most the `most` it may hold), by id, with
    /// `last_used_at`.
    async fn list_api_keys(&self, ws: &WorkspaceId) -> StoreResult<Vec<ApiKeyRecord>>;
    async fn get_api_key(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
    ) -> StoreResult<Option<ApiKeyRecord>>;
    /// Removes the key. Once this returns, `find_api_key` no longer finds
    /// it. Refused (`LastOwner`) for the workspace's last lasting owner key
    /// (an owner key without an expiry), however many requests race.
    async fn delete_api_key(&self, ws: &WorkspaceId, id: &ApiKeyId) -> StoreResult<KeyChange>;
    /// Makes the key expire at `at`, unless it expires sooner already (then
    /// nothing changes), noting the key that replaced it if one did.
    /// Refused for the last lasting owner key.
    async fn set_api_key_expiry(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
        replaced_by: Option<&ApiKeyId>,
    ) -> StoreResult<KeyChange>;
    /// Records that the key was used at `at` (for `last_used_at`).
    async fn touch_api_key(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// What both limiters of a request said (taken from both or neither).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    pub workspace: Verdict,
    pub key: Verdict,
}

/// Request rates, per workspace and per key: the GCRA state of each
/// (`domain::gcra` decides; the store keeps the times and makes each
/// decision atomic across every process that serves the API).
#[async_trait]
pub trait RateStore: Send + Sync {
    /// Takes one request from the workspace's and the key's allowance at
    /// `now` (microseconds since the epoch): both, or neither when one
    /// refuses. `key` names the key's limiter (its rotation chain's
    /// first key).
    async fn take_request(
        &self,
        ws: &WorkspaceId,
        key: &ApiKeyId,
        rates: (Rate, Rate),
        now: i64,
    ) -> StoreResult<Taken>;
}

/// The audit log: appended to, listed newest first, never changed.
#[async_trait]
pub trait AuditStore: Send + Sync {
    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()>;
    /// The workspace's entries the filter admits, newest first.
    async fn list_audit(
        &self,
        ws: &WorkspaceId,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AuditEntry>>;
    /// Removes entries older than `before` where the store does not expire
    /// them itself; how many.
    async fn forget_audit(&self, before: DateTime<Utc>) -> StoreResult<usize>;
}

#[async_trait]
pub trait WorkflowStore: Send + Sync {
    /// Stores version 1 of a new workflow; Conflict if the id is taken.
    async fn create_workflow(&self, v: &WorkflowVersion) -> StoreResult<()>;
    /// Stores `v.version`, which must be the latest version + 1 of a workflow
    /// that is not archived — or, with `revive`, that is archived, which it
    /// then no longer is; Conflict otherwise.
    async fn add_version(&self, v: &WorkflowVersion, revive: bool) -> StoreResult<()>;
    /// The given version, or the latest. Archived workflows are returned too
    /// (with `archived_at`), because their runs stay readable.
    async fn get_workflow(
        &self,
        ws: &WorkspaceId,
        id: &WorkflowId,
        version: Option<u32>,
    ) -> StoreResult<Option<WorkflowVersion>>;
    /// Workflows that are not archived, by id.
    async fn list_workflows(
        &self,
        ws: &WorkspaceId,
        page: &PageRequest,
    ) -> StoreResult<Page<WorkflowSummary>>;
    /// Live workflows whose latest version's triggers listen for `event`
    /// (at most `limit`, by id): an index by event name, never a scan.
    async fn workflows_listening(
        &self,
        ws: &WorkspaceId,
        event: &str,
        limit: usize,
    ) -> StoreResult<Vec<WorkflowSummary>>;
    /// False if there was no such live workflow.
    async fn archive_workflow(
        &self,
        ws: &WorkspaceId,
        id: &WorkflowId,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;
}

/// An Idempotency-Key claim stored with the run it created.
#[derive(Clone, Debug, PartialEq)]
pub struct IdempotencyClaim {
    pub key: String,
    /// A digest of the request, to tell a retry from a different request.
    pub request_hash: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum CreateRun {
    Created,
    /// The key was already claimed (and has not expired).
    Existing {
        run_id: RunId,
        request_hash: String,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub workflow_id: Option<WorkflowId>,
}

/// One conditional write of a run: its row, changed steps and new log lines.
#[derive(Clone, Debug)]
pub struct RunWrite {
    /// The new row; its `revision` must be the stored revision + 1.
    pub run: RunRecord,
    pub steps: Vec<StepRecord>,
    pub logs: Vec<LogEntry>,
}

/// A step waiting for an event (`wait_for_event`), as the index of waiting
/// steps holds it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Waiter {
    pub event: String,
    pub run_id: RunId,
    pub step_key: String,
    /// After this it is not waiting any more (its timeout, or a bound).
    pub expires_at: DateTime<Utc>,
}

/// The result of an I/O attempt left for its run's next pass by an
/// executor that does not drive the run (on AWS, the step function that ran
/// it). Leaving one writes nothing else of the run, so attempts finishing
/// together never contend for the run; the pass that next reads the run
/// records it (`RunStore::load_run_with_results`) and then clears it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingResult {
    pub key: String,
    pub attempt: u32,
    pub result: Result<serde_json::Value, StepError>,
    /// When the attempt ended (its step's finish time).
    pub finished_at: DateTime<Utc>,
}

impl PendingResult {
    /// A stored result read back. One that does not parse is the attempt's
    /// failure, not a pass that can never read its run's inbox (results are
    /// checked before they are left: `dag::checked_result`).
    pub fn read(key: &str, attempt: u32, json: &[u8]) -> Self {
        serde_json::from_slice(json).unwrap_or_else(|e| Self {
            key: key.to_owned(),
            attempt,
            result: Err(StepError::permanent(
                "result_unreadable",
                format!("the attempt's result could not be read back: {e}"),
            )),
            finished_at: Utc::now(),
        })
    }
}

/// How much one `save_run` may hold in one atomic write. Steps that only
/// become `cancelled` are exempt: a store may write them apart, after the rest
/// (cancelling an unfinished step is what any later pass would do too, and a
/// store that does reads the unfinished steps of a finished run as
/// cancelled, as its last pass left them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteLimits {
    /// Most changed step records (not counting cancellations) per write.
    pub max_steps: Option<usize>,
}

#[async_trait]
pub trait RunStore: Send + Sync {
    /// What one write may hold (DynamoDB transactions are bounded).
    fn write_limits(&self) -> WriteLimits {
        WriteLimits::default()
    }
    /// Indexes a step waiting for an event under the event's name (writing
    /// it again changes nothing).
    async fn put_waiter(&self, ws: &WorkspaceId, w: &Waiter) -> StoreResult<()>;
    /// The steps waiting for `event` in the workspace (at most `limit`,
    /// none past its `expires_at`), by run.
    async fn waiters(
        &self,
        ws: &WorkspaceId,
        event: &str,
        limit: usize,
    ) -> StoreResult<Vec<Waiter>>;
    async fn delete_waiter(&self, ws: &WorkspaceId, w: &Waiter) -> StoreResult<()>;
    /// Claims `claim.key` for no run (an event's id): None if this call
    /// claimed it, else the request hash it is held with (until it expires).
    async fn claim(
        &self,
        ws: &WorkspaceId,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Option<String>>;
    /// Inserts a new run, claiming the idempotency key if one is given.
    async fn create_run(
        &self,
        run: &RunRecord,
        claim: Option<&IdempotencyClaim>,
    ) -> StoreResult<CreateRun>;
    async fn get_run(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Option<RunRecord>>;
    /// The run's row without its input and output (`RunHead`).
    async fn get_run_head(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Option<RunRecord>>;
    /// Every step record of a run.
    async fn get_steps(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Vec<StepRecord>>;
    /// Every step record of a run without its output and items (see
    /// `StepHead`): a read whose memory does not grow with the outputs.
    async fn get_step_heads(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Vec<StepRecord>>;
    /// The step records at `keys`, whole, in that order (missing ones left
    /// out).
    async fn get_steps_by_keys(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        keys: &[String],
    ) -> StoreResult<Vec<StepRecord>>;
    /// One step record without its output and items (`StepHead`).
    async fn get_step_head(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
    ) -> StoreResult<Option<StepRecord>>;
    /// One step record, whole.
    async fn get_step(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
    ) -> StoreResult<Option<StepRecord>> {
        Ok(self
            .get_steps_by_keys(ws, id, &[key.to_owned()])
            .await?
            .pop())
    }
    /// A run with all its steps, read together (one query where the store
    /// allows it: the orchestrator does this on every tick).
    async fn load_run(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        let Some(run) = self.get_run(ws, id).await? else {
            return Ok(None);
        };
        Ok(Some((run, self.get_steps(ws, id).await?)))
    }
    /// The run and its step records at `keys` (those that exist, in that
    /// order), read together where the store allows (one request on
    /// DynamoDB): what a step function reads of a run of any size.
    async fn load_run_at(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        keys: &[String],
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        let Some(run) = self.get_run(ws, id).await? else {
            return Ok(None);
        };
        Ok(Some((run, self.get_steps_by_keys(ws, id, keys).await?)))
    }
    /// Leaves an attempt's result for the run's next pass (see
    /// `PendingResult`). The first result left for an attempt stands: a
    /// second (a retried function's, or a failure the state machine
    /// records after the function had left its result) is dropped.
    async fn put_result(&self, ws: &WorkspaceId, id: &RunId, r: &PendingResult) -> StoreResult<()>;
    /// Whether a result of this attempt waits for the run's next pass (a
    /// step function invoked again for it does not run it again).
    async fn has_result(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
        attempt: u32,
    ) -> StoreResult<bool>;
    /// The results left for the run, by step key and attempt.
    async fn pending_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Vec<PendingResult>>;
    /// Removes the results of these attempts (those a pass has recorded or
    /// found stale); others left meanwhile stay.
    async fn clear_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        attempts: &[(String, u32)],
    ) -> StoreResult<()>;
    /// `load_run` and the results left for the run (one query where the
    /// store allows it: an AWS pass does this every time).
    async fn load_run_with_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>, Vec<PendingResult>)>> {
        let Some((run, steps)) = self.load_run(ws, id).await? else {
            return Ok(None);
        };
        Ok(Some((run, steps, self.pending_results(ws, id).await?)))
    }
    /// Newest first, each without its input and output (`RunHead`).
    async fn list_runs(
        &self,
        ws: &WorkspaceId,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<RunRecord>>;
    /// Applies the write if the stored revision is `w.run.revision - 1`;
    /// Conflict otherwise.
    async fn save_run(&self, w: &RunWrite) -> StoreResult<()>;
    /// Oldest first.
    async fn list_logs(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        page: &PageRequest,
    ) -> StoreResult<Page<LogEntry>>;
}

/// Runs that are not finished, across workspaces: what the embedded
/// orchestrator must resume after a restart. (On AWS, Step Functions holds
/// this state.)
#[async_trait]
pub trait ActiveRunIndex: Send + Sync {
    async fn active_runs(&self) -> StoreResult<Vec<(WorkspaceId, RunId)>>;
}

/// Unfinished runs whose lease (`RunRecord::lease`) ran out: their driver
/// is gone. Read from an index of active runs, never a scan of all runs.
#[async_trait]
pub trait StalledRuns: Send + Sync {
    /// At most `limit`, those whose lease ran out first first.
    async fn stalled_runs(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<(WorkspaceId, RunId)>>;
}

/// A secret as listed: never its value.
#[derive(Clone, Debug, PartialEq)]
pub struct SecretMeta {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[async_trait]
pub trait SecretStore: Send + Sync {
    /// Creates or replaces a secret.
    async fn put_secret(
        &self,
        ws: &WorkspaceId,
        name: &str,
        value: &str,
    ) -> StoreResult<SecretMeta>;
    /// By name.
    async fn list_secrets(&self, ws: &WorkspaceId) -> StoreResult<Vec<SecretMeta>>;
    /// False if there was no such secret.
    async fn delete_secret(&self, ws: &WorkspaceId, name: &str) -> StoreResult<bool>;
    /// The value, for the executors of I/O steps only.
    async fn get_secret(&self, ws: &WorkspaceId, name: &str) -> StoreResult<Option<String>>;
}

/// Schedules, by workspace and workflow, and by when they are next due
/// (across workspaces: what the tick reads, never a scan).
#[async_trait]
pub trait ScheduleStore: Send + Sync {
    /// Stores a new schedule unless its workspace has `most` already
    /// (false then), counted atomically with the write. Conflict if a
    /// schedule with its id exists.
    async fn create_schedule(&self, s: &Schedule, most: usize) -> StoreResult<bool>;
    async fn get_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
    ) -> StoreResult<Option<Schedule>>;
    /// A workflow's schedules, by id.
    async fn list_schedules(&self, ws: &WorkspaceId, wf: &WorkflowId)
    -> StoreResult<Vec<Schedule>>;
    /// Writes `s` at `s.revision` if it is stored at `s.revision - 1`
    /// (Conflict otherwise, also when it is gone).
    async fn save_schedule(&self, s: &Schedule) -> StoreResult<()>;
    /// False if there was none.
    async fn delete_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
    ) -> StoreResult<bool>;
    /// Schedules due at `now` (`due_at` at or before it), earliest first.
    async fn due_schedules(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Schedule>>;
}

/// Inbound webhooks ("hooks"), by workspace and workflow, and by their id
/// alone (what a request to a hook's public URL names).
#[async_trait]
pub trait HookStore: Send + Sync {
    /// Stores a new hook unless its workflow has `most` already (false
    /// then), counted atomically with the write.
    async fn create_hook(&self, h: &Hook, most: usize) -> StoreResult<bool>;
    /// A workflow's hooks, by id.
    async fn list_hooks(&self, ws: &WorkspaceId, wf: &WorkflowId) -> StoreResult<Vec<Hook>>;
    /// False if there was none.
    async fn delete_hook(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &HookId,
    ) -> StoreResult<bool>;
    /// The hook with this id, in whichever workspace it is.
    async fn find_hook(&self, id: &HookId) -> StoreResult<Option<Hook>>;
}

/// Where a verified request to a hook waits until a run is started from
/// it: kept durably before the sender is answered, handed on at least once
/// (the run start is claimed, so a repeat starts nothing twice).
#[async_trait]
pub trait HookInbox: Send + Sync {
    async fn enqueue(&self, r: &Receipt) -> StoreResult<()>;
}

/// An event as it is kept for steps that begin waiting after it arrived
/// (`wait_for_event`'s `lookback`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeptEvent {
    pub name: String,
    pub id: String,
    pub data: serde_json::Value,
    /// When it was received.
    pub at: DateTime<Utc>,
    /// Its data was larger than `MAX_KEPT_EVENT_BYTES` and is not kept
    /// (`data` is null): steps that look back pass over it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_omitted: bool,
}

/// How long events are kept (the longest `lookback`).
pub const EVENT_KEEP_HOURS: i64 = 24;
/// Largest event data kept for steps that look back (as JSON).
pub const MAX_KEPT_EVENT_BYTES: usize = 32 * 1024;

/// The events a workspace was sent lately, by name and time.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Keeps an event once per id: returns when the event of this id was
    /// received (`e.at`, or the time kept before for a repeat).
    async fn keep_event(&self, ws: &WorkspaceId, e: &KeptEvent) -> StoreResult<DateTime<Utc>>;
    /// Events of `name` received at or after `since`, oldest first, at
    /// most `limit`.
    async fn events_since(
        &self,
        ws: &WorkspaceId,
        name: &str,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<KeptEvent>>;
    /// Forgets the events received before `before` (where the store has
    /// no expiry of its own). Returns how many.
    async fn forget_events(&self, before: DateTime<Utc>) -> StoreResult<usize>;
}

/// Where deliveries wait to be sent by another process (on AWS: an SQS
/// queue the deliver function consumes). Without one, the app's own
/// sender loop sends them (`weft dev`).
#[async_trait]
pub trait DeliveryQueue: Send + Sync {
    /// Hands each delivery on, to be tried `after` from now (at most
    /// `MAX_QUEUE_DELAY`).
    async fn enqueue(&self, refs: &[DeliveryRef], after: std::time::Duration) -> StoreResult<()>;
}

/// The longest a queue holds a delivery back (SQS's bound); longer waits
/// are kept as due times that the tick hands on.
pub const MAX_QUEUE_DELAY: std::time::Duration = std::time::Duration::from_secs(900);

/// Outbound webhooks: a workspace's endpoints, the deliveries made to
/// them (by workspace and endpoint, and by when each is next due, across
/// workspaces: what the deliverer reads), and the runs that ended whose
/// deliveries are not yet made (written with the run's last save).
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores a new endpoint unless its workspace has `most` already
    /// (false then), counted atomically with the write.
    async fn create_endpoint(&self, e: &Endpoint, most: usize) -> StoreResult<bool>;
    async fn get_endpoint(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
    ) -> StoreResult<Option<Endpoint>>;
    /// A workspace's endpoints, by id.
    async fn list_endpoints(&self, ws: &WorkspaceId) -> StoreResult<Vec<Endpoint>>;
    /// Writes `e` at `e.revision` if it is stored at `e.revision - 1`.
    async fn save_endpoint(&self, e: &Endpoint) -> StoreResult<()>;
    /// False if there was none.
    async fn delete_endpoint(&self, ws: &WorkspaceId, id: &EndpointId) -> StoreResult<bool>;

    /// Stores a new delivery; false if one with its id exists (made
    /// already: deliveries of one run event to one endpoint share an id).
    async fn create_delivery(&self, d: &Delivery) -> StoreResult<bool>;
    async fn get_delivery(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        id: &str,
    ) -> StoreResult<Option<Delivery>>;
    /// Writes `d` at `d.revision` if it is stored at `d.revision - 1`.
    async fn save_delivery(&self, d: &Delivery) -> StoreResult<()>;
    /// An endpoint's deliveries (those with `status`, if given), newest
    /// first.
    async fn list_deliveries(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        status: Option<DeliveryStatus>,
        page: &PageRequest,
    ) -> StoreResult<Page<Delivery>>;
    /// Pending deliveries due at `now`, earliest first, but those of the
    /// `busy` workspaces (their sends are full: the others go first).
    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &[WorkspaceId],
    ) -> StoreResult<Vec<Delivery>>;
    /// Forgets deliveries made before `before` that are done.
    async fn forget_deliveries(&self, before: DateTime<Utc>) -> StoreResult<usize>;

    /// Takes one of `limit` sends to an endpoint in the second `second`
    /// (Unix seconds), counted atomically across processes; false when
    /// all are taken.
    async fn take_send(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        second: i64,
        limit: u32,
    ) -> StoreResult<bool>;
    /// Run events whose deliveries are not made yet (the outbox a run's
    /// saves wrote), oldest first.
    async fn outbox(&self, limit: usize) -> StoreResult<Vec<OutboxEntry>>;
    /// The entry's deliveries are made.
    async fn forget_outbox(&self, entry: &OutboxEntry) -> StoreResult<()>;
}
