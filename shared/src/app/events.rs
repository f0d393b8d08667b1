//! Events: `POST /v1/events` starts a run of every workflow with a trigger
//! for the event's name whose condition holds. An event with an id is
//! claimed under it (as an Idempotency-Key claims a run): the same id sent
//! again with the same name and data starts nothing new and answers with
//! the runs the first one started (a retry after a failure half-way starts
//! only those that are missing: each run is claimed under the event's id
//! and its workflow); with another name or other data it is refused.

use chrono::Duration;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::runs::{Claim, Delivery, IDEMPOTENCY_TTL_HOURS};
use super::{App, AppError, StartRun, cut};
use crate::domain::{RunId, WorkflowId, WorkspaceId};
use crate::ports::IdempotencyClaim;

/// Most workflows listening for one event name that an event is matched
/// against (a condition may leave many out; at most `MAX_RUNS_PER_EVENT`
/// start).
pub const MAX_WORKFLOWS_MATCHED: usize = 1_000;
/// Most runs one event starts: an event matching more is refused.
pub const MAX_RUNS_PER_EVENT: usize = 100;
/// Most waiting steps one event is delivered to.
pub const MAX_WAITERS_PER_EVENT: usize = 1000;
/// Times an event is offered to a step whose pass is being written
/// (waiting 20 ms, then twice as long each time: about 10 s in all).
const NOT_YET_TRIES: usize = 9;

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
    /// Workflows whose trigger matched (or could not be evaluated) but
    /// whose run did not start, with why.
    pub errors: Vec<(WorkflowId, String)>,
    /// Steps waiting for the event that it completed (run, step).
    pub resumed: Vec<(RunId, String)>,
}

/// A run an event started (or had started, when `replayed`).
#[derive(Clone, Debug, PartialEq)]
pub struct EventRun {
    pub workflow_id: WorkflowId,
    pub run_id: RunId,
    pub replayed: bool,
}

/// A workflow that listens for the event, at the version matched.
struct Candidate {
    id: WorkflowId,
    version: u32,
    conditions: Vec<Option<String>>,
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
        if let Some(given) = &ev.id {
            // A space cannot be in an Idempotency-Key a client sends, so
            // these claims are the events' own.
            let claim = IdempotencyClaim {
                key: format!("event {given}"),
                request_hash: event_hash(&ev.name, given, Some(&ev.data)),
                expires_at: chrono::Utc::now() + Duration::hours(IDEMPOTENCY_TTL_HOURS),
            };
            // A repeat goes through as the first did: each run it starts is
            // claimed, and it is kept and delivered once (by its id).
            if let Some(held) = self.stores.runs.claim(ws, &claim).await?
                && held != claim.request_hash
            {
                return Err(AppError::InvalidRequest(vec![
                    crate::dsl::ValidationError::new(
                        &crate::dsl::Path::root().key("id"),
                        "an event with this id was sent before with another name or other data; give a new event a new id",
                    ),
                ]));
            }
        }
        let event = json!({"name": ev.name, "id": id, "data": ev.data});
        let mut out = EventOutcome {
            id: id.clone(),
            name: ev.name.clone(),
            runs: Vec::new(),
            errors: Vec::new(),
            resumed: Vec::new(),
        };
        let candidates = self.listening(ws, &ev.name).await?;
        let matched = matching(&candidates, &event, &mut out.errors);
        if matched.len() > MAX_RUNS_PER_EVENT {
            return Err(AppError::BadRequest(format!(
                "the event would start {} runs; an event starts at most {MAX_RUNS_PER_EVENT}",
                matched.len()
            )));
        }
        // Kept before the runs start (a step of a run it starts does not
        // take it unless it looks back), once per id: a repeat finds when
        // the first arrived.
        let data_omitted = ev.data.to_string().len() > crate::ports::MAX_KEPT_EVENT_BYTES;
        let kept = crate::ports::KeptEvent {
            name: ev.name.clone(),
            id: id.clone(),
            data: if data_omitted {
                Value::Null
            } else {
                ev.data.clone()
            },
            at: chrono::Utc::now(),
            data_omitted,
        };
        let received = self.stores.events.keep_event(ws, &kept).await?;
        for c in matched {
            let mut cmd = StartRun::with_input(ev.data.clone());
            cmd.input_memory = ev.data_memory;
            // The version whose trigger matched.
            cmd.version = Some(c.version);
            let claim = ev.id.as_ref().map(|given| Claim {
                key: format!("event {given} {}", c.id),
                request_hash: event_hash(&ev.name, given, None),
            });
            match self.start_run_claimed(ws, &c.id, cmd, claim).await {
                Ok((run, replayed)) => out.runs.push(EventRun {
                    workflow_id: c.id.clone(),
                    run_id: run.id,
                    replayed,
                }),
                Err(AppError::InvalidRequest(errors)) => {
                    let detail = errors
                        .iter()
                        .map(|e| format!("{}: {}", e.path, e.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    out.errors.push((
                        c.id.clone(),
                        cut(format!("the event's data is not a valid input: {detail}")),
                    ));
                }
                Err(AppError::NotFound(m) | AppError::Conflict(m)) => {
                    out.errors.push((c.id.clone(), cut(m)));
                }
                // Said for this workflow; the runs started are still told.
                Err(e) => {
                    tracing::error!(workspace_id = %ws, workflow_id = %c.id, error = %e, "an event could not start a run");
                    out.errors.push((
                        c.id.clone(),
                        "the run could not be started (the error was logged); send the event again with the same id to retry".into(),
                    ));
                }
            }
        }
        // Steps waiting since before it arrived take it (a repeat: only
        // those the first would have; see `deliver_event`).
        self.resume_waiting(ws, &event, received, &mut out).await?;
        Ok(out)
    }

    /// Completes the steps waiting for the event whose `match` holds.
    async fn resume_waiting(
        &self,
        ws: &WorkspaceId,
        event: &Value,
        received: chrono::DateTime<chrono::Utc>,
        out: &mut EventOutcome,
    ) -> Result<(), AppError> {
        let waiters = self
            .stores
            .runs
            .waiters(ws, &out.name, MAX_WAITERS_PER_EVENT)
            .await?;
        for w in waiters {
            let done = match self.deliver_now_or_soon(ws, &w, event, received).await {
                Ok(Delivery::Resumed) => {
                    out.resumed.push((w.run_id.clone(), w.step_key.clone()));
                    true
                }
                Ok(Delivery::Gone) => true,
                Ok(Delivery::NoMatch | Delivery::NotYet) => false,
                Ok(Delivery::Failed(why)) => {
                    tracing::warn!(workspace_id = %ws, run_id = %w.run_id, step_id = %w.step_key, error = %why, "a waiting step's match could not be evaluated");
                    false
                }
                Err(e) => {
                    tracing::warn!(workspace_id = %ws, run_id = %w.run_id, step_id = %w.step_key, error = %e, "an event could not be delivered to a waiting step");
                    false
                }
            };
            // One left behind is found gone by a later event.
            if done && let Err(e) = self.stores.runs.delete_waiter(ws, &w).await {
                tracing::warn!(workspace_id = %ws, run_id = %w.run_id, step_id = %w.step_key, error = %e, "removing a waiter");
            }
        }
        Ok(())
    }

    /// Delivers an event to a waiting step; one whose pass is being
    /// written (indexed, not yet waiting) is tried again for a moment: the
    /// pass read the kept events before the event was kept, so the step is
    /// this event's to complete.
    async fn deliver_now_or_soon(
        &self,
        ws: &WorkspaceId,
        w: &crate::ports::Waiter,
        event: &Value,
        received: chrono::DateTime<chrono::Utc>,
    ) -> Result<Delivery, AppError> {
        let mut wait = std::time::Duration::from_millis(20);
        for _ in 0..NOT_YET_TRIES {
            match self
                .deliver_event(ws, &w.run_id, &w.step_key, event, received)
                .await?
            {
                Delivery::NotYet => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                }
                other => return Ok(other),
            }
        }
        Ok(Delivery::NotYet)
    }

    /// The live workflows whose latest version listens for `name`, from
    /// the store's index by event name (definitions are read only for
    /// those).
    async fn listening(&self, ws: &WorkspaceId, name: &str) -> Result<Vec<Candidate>, AppError> {
        let mut found = Vec::new();
        for summary in self
            .stores
            .workflows
            .workflows_listening(ws, name, MAX_WORKFLOWS_MATCHED)
            .await?
        {
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
            found.push(Candidate {
                id: summary.id,
                version: summary.latest_version,
                conditions: wf
                    .triggers
                    .iter()
                    .filter(|t| t.event == name)
                    .map(|t| t.condition.clone())
                    .collect(),
            });
        }
        Ok(found)
    }
}

/// The candidates a trigger of which holds for the event. All conditions
/// of one event share one template budget, off the async threads; one
/// that cannot be evaluated is named in `errors` (once per workflow).
fn matching<'c>(
    candidates: &'c [Candidate],
    event: &Value,
    errors: &mut Vec<(WorkflowId, String)>,
) -> Vec<&'c Candidate> {
    crate::orchestrator::tick::cpu(|| {
        let ctx = crate::template::context_from_json(&json!({ "event": event }));
        let _budget = crate::template::scope();
        let mut matched = Vec::new();
        for c in candidates {
            let mut failed = None;
            let fires = c.conditions.iter().any(|cond| match cond {
                None => true,
                Some(src) => match crate::template::eval_condition(src, &ctx) {
                    Ok(b) => b,
                    Err(e) => {
                        failed.get_or_insert(e.to_string());
                        false
                    }
                },
            });
            match (fires, failed) {
                (true, _) => matched.push(c),
                (false, Some(e)) => errors.push((
                    c.id.clone(),
                    cut(format!(
                        "its trigger's condition could not be evaluated: {e}"
                    )),
                )),
                (false, None) => {}
            }
        }
        matched
    })
}

/// What a claim under an event's id is checked against: its name and, for
/// the event's own claim, its data.
fn event_hash(name: &str, id: &str, data: Option<&Value>) -> String {
    let mut h = Sha256::new();
    h.update(b"event\0");
    h.update(name.as_bytes());
    h.update([0]);
    h.update(id.as_bytes());
    if let Some(d) = data {
        h.update([0]);
        h.update(d.to_string().as_bytes());
    }
    format!("{:x}", h.finalize())
}
