//! Events: `POST /v1/events` starts a run of every workflow with a trigger
//! for the event's name whose condition holds. An event sent again with
//! the same id (within `IDEMPOTENCY_TTL_HOURS`) starts nothing new: each
//! run it starts is claimed under the event's id and its workflow, the way
//! an Idempotency-Key claims a run, so a repeat, or a retry after a failure
//! half-way, finds the runs the first one started and starts only those
//! that are missing.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::runs::Claim;
use super::{App, AppError, StartRun};
use crate::domain::{RunId, WorkflowId, WorkspaceId};
use crate::ports::PageRequest;

/// Most workflows an event is matched against (their definitions are read
/// through the definition cache).
pub const MAX_WORKFLOWS_MATCHED: usize = 1000;

/// An event to send, as the API parsed it.
#[derive(Clone, Debug, PartialEq)]
pub struct SendEvent {
    /// Its name (`dsl::is_event_name`).
    pub name: String,
    pub data: Value,
    /// The sender's id for it (1-255 visible ASCII characters): repeats
    /// start nothing new. None: one is made.
    pub id: Option<String>,
    /// What `data` takes in memory once parsed.
    pub data_memory: u64,
}

/// What an event started.
#[derive(Clone, Debug, PartialEq)]
pub struct EventOutcome {
    pub id: String,
    pub name: String,
    pub runs: Vec<EventRun>,
    /// Workflows whose trigger matched but whose run could not start.
    pub errors: Vec<(WorkflowId, String)>,
}

/// A run an event started (or had started, when `replayed`).
#[derive(Clone, Debug, PartialEq)]
pub struct EventRun {
    pub workflow_id: WorkflowId,
    pub run_id: RunId,
    pub replayed: bool,
}

impl App {
    pub async fn send_event(
        &self,
        ws: &WorkspaceId,
        ev: SendEvent,
    ) -> Result<EventOutcome, AppError> {
        let id = ev
            .id
            .clone()
            .unwrap_or_else(|| format!("evt_{}", ulid::Ulid::new().to_string().to_lowercase()));
        let event = json!({"name": ev.name, "id": id, "data": ev.data});
        let ctx = crate::template::context_from_json(&json!({ "event": event }));
        let mut out = EventOutcome {
            id: id.clone(),
            name: ev.name.clone(),
            runs: Vec::new(),
            errors: Vec::new(),
        };
        for wf_id in self.triggered_by(ws, &ev.name, &ctx, &mut out).await? {
            let mut cmd = StartRun::with_input(ev.data.clone());
            cmd.input_memory = ev.data_memory;
            // A space cannot be in an Idempotency-Key a client sends, so
            // these claims are the events' own.
            let claim = ev.id.as_ref().map(|id| Claim {
                key: format!("event {id} {wf_id}"),
                request_hash: event_hash(&ev.name, id),
            });
            match self.start_run_claimed(ws, &wf_id, cmd, claim).await {
                Ok((run, replayed)) => out.runs.push(EventRun {
                    workflow_id: wf_id,
                    run_id: run.id,
                    replayed,
                }),
                Err(AppError::IdempotencyMismatch) => out.errors.push((
                    wf_id,
                    format!("event id `{id}` was already used for an event of another name"),
                )),
                Err(AppError::InvalidRequest(errors)) => {
                    let detail = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.path, e.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    out.errors.push((
                        wf_id,
                        format!("the event's data is not a valid input: {detail}"),
                    ));
                }
                Err(AppError::NotFound(m)) => out.errors.push((wf_id, m)),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The live workflows with a trigger for `name` whose condition holds
    /// for the event (conditions that fail to evaluate go to `out.errors`).
    async fn triggered_by(
        &self,
        ws: &WorkspaceId,
        name: &str,
        ctx: &crate::template::Context,
        out: &mut EventOutcome,
    ) -> Result<Vec<WorkflowId>, AppError> {
        let mut matched = Vec::new();
        let mut seen = 0;
        let mut page = PageRequest::first(crate::ports::MAX_LIMIT);
        loop {
            let listed = self.stores.workflows.list_workflows(ws, &page).await?;
            for summary in &listed.items {
                seen += 1;
                if seen > MAX_WORKFLOWS_MATCHED {
                    return Err(AppError::BadRequest(format!(
                        "the workspace has more than {MAX_WORKFLOWS_MATCHED} workflows; events are matched against at most that many"
                    )));
                }
                let wf = self
                    .definitions
                    .get(
                        self.stores.workflows.as_ref(),
                        ws,
                        &summary.id,
                        summary.latest_version,
                    )
                    .await
                    .map_err(|e| AppError::Internal(e.to_string()))?;
                let mut fires = false;
                for t in wf.triggers.iter().filter(|t| t.event == name) {
                    match t.condition.as_deref() {
                        None => fires = true,
                        Some(src) => match crate::template::eval_condition(src, ctx) {
                            Ok(true) => fires = true,
                            Ok(false) => {}
                            Err(e) => out.errors.push((
                                summary.id.clone(),
                                format!("its trigger's condition could not be evaluated: {e}"),
                            )),
                        },
                    }
                    if fires {
                        break;
                    }
                }
                if fires {
                    matched.push(summary.id.clone());
                }
            }
            match listed.next_cursor {
                Some(c) => page.cursor = Some(c),
                None => return Ok(matched),
            }
        }
    }
}

/// What a claim of an event's run is checked against: its name under its
/// id (the same id with another name is refused; the same id and name is
/// the same event, whatever its data).
fn event_hash(name: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"event\0");
    h.update(name.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    format!("{:x}", h.finalize())
}
