//! The plan function's logic for the DAG-driver state machines
//! (statemachines/). The machines only carry out what this answers: the DAG
//! core's decisions, made by the same `tick` the embedded orchestrator runs.
//! Payload shapes are the machines' contract.
//!
//! A run starts on the Express machine (dag-fast), billed per request and
//! duration rather than per state transition. It stays there while it only
//! runs steps and short sleeps; when it must wait on a person or an event,
//! sleep long, or would outlast an Express execution's five minutes, the
//! answer says `hand_off` and the fast machine starts the Standard machine
//! (dag-driver) with that answer, which carries on from it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tick::{self, Stores};
use crate::domain::{RunId, StepError, WorkspaceId};
use crate::ports::{StepCall, StepExecutor};

/// Longest a Wait or a task token may last in one go (Step Functions allows
/// a year per execution; runs longer than that are out of scope).
pub const MAX_WAIT_SECS: i64 = 364 * 24 * 3600;

/// How long a run may stay on the Express machine, whose executions end
/// after five minutes: the rest is margin for invocations and retries.
pub const EXPRESS_BUDGET_SECS: i64 = 4 * 60;

/// The longest sleep the Express machine does itself. Waiting there costs
/// duration (about $1 per 1M runs per second); handing off costs a few
/// Standard transitions ($25 per 1M each), so short sleeps stay.
pub const EXPRESS_SLEEP_SECS: i64 = 60;

/// What the state machine sends the plan function.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PlanRequest {
    Plan {
        workspace_id: WorkspaceId,
        run_id: RunId,
        /// The Map's results: items with `ok: false` are failed calls.
        #[serde(default)]
        results: Vec<Value>,
        /// Set by the Express machine: when its execution started.
        #[serde(default)]
        express_started_at: Option<DateTime<Utc>>,
    },
    /// The single step's function failed (caught by the machine).
    RecordFailure {
        workspace_id: WorkspaceId,
        run_id: RunId,
        dispatch: Vec<Target>,
        failure: Value,
    },
    /// The machine waits for an outside event with a task token: the plan
    /// function parks the token with the run (AWS only; see `aws::park`).
    Park {
        workspace_id: WorkspaceId,
        run_id: RunId,
        /// The run's revision when Plan chose to wait.
        revision: u64,
        task_token: String,
    },
}

impl PlanRequest {
    /// The run the request is about.
    pub fn run(&self) -> (&WorkspaceId, &RunId) {
        match self {
            Self::Plan {
                workspace_id,
                run_id,
                ..
            }
            | Self::RecordFailure {
                workspace_id,
                run_id,
                ..
            }
            | Self::Park {
                workspace_id,
                run_id,
                ..
            } => (workspace_id, run_id),
        }
    }
}

/// A step to run: the function to invoke and its payload.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Target {
    pub function: String,
    pub call: StepCall,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    /// Look again at once.
    Plan,
    DispatchOne,
    Dispatch,
    Sleep,
    WaitEvent,
    Finished,
}

/// What the plan function answers (the machine's next state's input).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct PlanResponse {
    pub workspace_id: WorkspaceId,
    pub run_id: RunId,
    pub next: Next,
    /// The run's revision this answer was made from.
    pub revision: u64,
    pub dispatch: Vec<Target>,
    /// For `dispatch_one`: the one step (the machine calls its function
    /// directly, without a Map and without indexing into `dispatch`).
    pub step: Option<Target>,
    /// For `sleep`: RFC 3339, as a Wait state's TimestampPath wants.
    pub wake_at: Option<String>,
    /// For `wait_event`: the task token's timeout (the next deadline).
    pub wait_seconds: i64,
    /// On the Express machine: carry out this answer on the Standard
    /// machine instead (see the module's description).
    #[serde(default)]
    pub hand_off: bool,
}

/// Names the function that runs each step type.
pub trait FunctionNames {
    fn function_for(&self, step_type: &str) -> Option<String>;
}

/// The failure a caught Lambda error becomes: `{"Error", "Cause"}`, where
/// a function error's cause is its JSON payload (`errorType`,
/// `errorMessage`).
fn failure_error(failure: &Value) -> StepError {
    let kind = failure["Error"].as_str().unwrap_or("States.TaskFailed");
    let raw = failure["Cause"]
        .as_str()
        .unwrap_or("the step function failed");
    let payload = serde_json::from_str::<Value>(raw).ok();
    let cause = payload
        .as_ref()
        .and_then(|p| p["errorMessage"].as_str())
        .unwrap_or(raw);
    // A function's own typed errors carry the step error as the cause.
    if let Ok(e) = serde_json::from_str::<StepError>(cause) {
        return e;
    }
    let retryable = !matches!(kind, "States.Permissions" | "States.Runtime");
    let message = format!(
        "the step function failed ({kind}): {}",
        cause.chars().take(500).collect::<String>()
    );
    if retryable {
        StepError::transient("function_failed", message)
    } else {
        StepError::permanent("function_failed", message)
    }
}

/// What a step function does with its payload: runs the attempt and records
/// the result with the run (a failed attempt is a result too). Only a
/// failure to record is an error.
pub async fn run_step(
    s: Stores<'_>,
    executor: Option<&dyn StepExecutor>,
    call: &StepCall,
) -> anyhow::Result<()> {
    let result = tick::attempt(executor, call).await;
    tick::record(
        s,
        &call.workspace_id,
        &call.run_id,
        &call.step_key,
        call.attempt,
        result,
    )
    .await
}

/// Handles one request of the state machine.
pub async fn handle(
    s: Stores<'_>,
    names: &dyn FunctionNames,
    req: PlanRequest,
    now: DateTime<Utc>,
) -> anyhow::Result<PlanResponse> {
    let mut express_started_at = None;
    let (ws, run_id) = match req {
        PlanRequest::Plan {
            workspace_id,
            run_id,
            results,
            express_started_at: started,
        } => {
            express_started_at = started;
            for r in results.iter().filter(|r| r["ok"] == false) {
                if let Ok(call) = serde_json::from_value::<StepCall>(r["call"].clone()) {
                    let err = failure_error(&r["failure"]);
                    tick::record(
                        s,
                        &workspace_id,
                        &run_id,
                        &call.step_key,
                        call.attempt,
                        Err(err),
                    )
                    .await?;
                }
            }
            (workspace_id, run_id)
        }
        PlanRequest::RecordFailure {
            workspace_id,
            run_id,
            dispatch,
            failure,
        } => {
            let err = failure_error(&failure);
            for t in &dispatch {
                tick::record(
                    s,
                    &workspace_id,
                    &run_id,
                    &t.call.step_key,
                    t.call.attempt,
                    Err(err.clone()),
                )
                .await?;
            }
            (workspace_id, run_id)
        }
        PlanRequest::Park { .. } => {
            anyhow::bail!("`park` needs the AWS task-token store; the plan function handles it")
        }
    };
    let mut out = answer(s, names, ws, run_id, now).await?;
    if let Some(started) = express_started_at {
        out.hand_off = leaves_express(&out, started, now);
    }
    Ok(out)
}

/// Whether an answer made on the Express machine must be carried out on
/// the Standard one: waits on events always, sleeps past
/// `EXPRESS_SLEEP_SECS`, and anything that could outlast the budget.
fn leaves_express(out: &PlanResponse, started: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    let left = (started + chrono::Duration::seconds(EXPRESS_BUDGET_SECS) - now).num_seconds();
    match out.next {
        Next::Finished => false,
        Next::Plan => left <= 0,
        Next::WaitEvent => true,
        Next::Sleep => {
            let secs = out
                .wake_at
                .as_deref()
                .and_then(|w| DateTime::parse_from_rfc3339(w).ok())
                .map_or(i64::MAX, |at| (at.with_timezone(&Utc) - now).num_seconds());
            secs > EXPRESS_SLEEP_SECS.min(left)
        }
        Next::DispatchOne | Next::Dispatch => {
            let longest = out
                .dispatch
                .iter()
                .map(|t| t.call.timeout.as_secs())
                .max()
                .unwrap_or(0);
            i64::try_from(longest).unwrap_or(i64::MAX) >= left
        }
    }
}

/// The DAG core's next decision for the run, as the machine's next state.
async fn answer(
    s: Stores<'_>,
    names: &dyn FunctionNames,
    ws: WorkspaceId,
    run_id: RunId,
    now: DateTime<Utc>,
) -> anyhow::Result<PlanResponse> {
    // Between Plan calls no step function is running: a running attempt
    // seen now was cut off (its function crashed before recording).
    let ticked = tick::tick(s, &ws, &run_id, |_, _| false, |_, _| {}).await?;
    let mut out = PlanResponse {
        workspace_id: ws,
        run_id,
        next: Next::Finished,
        revision: 0,
        dispatch: Vec::new(),
        step: None,
        wake_at: None,
        wait_seconds: 0,
        hand_off: false,
    };
    let Some(t) = ticked else {
        return Ok(out);
    };
    out.revision = t.run.revision;
    if t.finished {
        return Ok(out);
    }
    if !t.dispatch.is_empty() {
        for d in &t.dispatch {
            let call = t.call(d);
            match names.function_for(&d.step_type) {
                Some(function) => out.dispatch.push(Target { function, call }),
                // A step type this deployment has no function for fails at
                // once instead.
                None => {
                    let err = tick::no_executor(&d.step_type);
                    tick::record(
                        s,
                        &t.run.workspace_id,
                        &t.run.id,
                        &d.key,
                        d.attempt,
                        Err(err),
                    )
                    .await?;
                }
            }
        }
        out.next = match out.dispatch.len() {
            0 => Next::Plan,
            1 => {
                out.step = out.dispatch.first().cloned();
                Next::DispatchOne
            }
            _ => Next::Dispatch,
        };
        return Ok(out);
    }
    let until = |at: DateTime<Utc>| (at - now).num_seconds().clamp(1, MAX_WAIT_SECS);
    if t.awaits_event {
        out.next = Next::WaitEvent;
        out.wait_seconds = t.run.wake_at.map_or(MAX_WAIT_SECS, until);
    } else if let Some(at) = t.run.wake_at {
        if at <= now {
            out.next = Next::Plan;
        } else {
            out.next = Next::Sleep;
            out.wake_at = Some(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
    } else {
        // Nothing can move the run but an outside event.
        out.next = Next::WaitEvent;
        out.wait_seconds = MAX_WAIT_SECS;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
