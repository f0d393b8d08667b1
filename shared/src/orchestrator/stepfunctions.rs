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

use anyhow::Context as _;

use super::lease;
use super::tick::{self, Stores};

mod kept_records;
use crate::domain::{RunId, StepError, WorkspaceId};
use crate::engine::InFlight;
use crate::ports::StepExecutor;
pub use kept_records::KeptRecords;

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

/// Most I/O attempts one Plan hands out (the machines' Map runs 40 at a
/// time; more wait for the next pass).
pub const MAX_DISPATCH: usize = 40;

/// What the state machine sends the plan function.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum PlanRequest {
    Plan {
        workspace_id: WorkspaceId,
        run_id: RunId,
        /// The execution asking (`$$.Execution.Id`): the run's lease
        /// holder, or a driver that must stop.
        execution: String,
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

/// One dispatched attempt, by reference: a step function reads the rest
/// (the request, rendered again from the run's recorded state) from the
/// store, so execution state never carries a payload of any size.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct StepRef {
    pub workspace_id: WorkspaceId,
    pub run_id: RunId,
    pub step_key: String,
    pub attempt: u32,
}

/// A step to run: the function to invoke and what to invoke it with.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Target {
    pub function: String,
    pub call: StepRef,
    /// The attempt's timeout, in seconds (for the hand-off decision).
    #[serde(default)]
    pub timeout_secs: u64,
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
    /// Start the Standard machine's next execution for the run
    /// (`execution_name`) and end this one: its history is nearly full.
    Continue,
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
    /// For a hand-off and `continue`: the Standard machine and the name of
    /// the execution to start there (the run's lease is already its).
    #[serde(default)]
    pub machine: Option<String>,
    #[serde(default)]
    pub execution_name: Option<String>,
}

impl PlanResponse {
    /// An answer that hands nothing out.
    fn new(workspace_id: WorkspaceId, run_id: RunId, next: Next) -> Self {
        Self {
            workspace_id,
            run_id,
            next,
            revision: 0,
            dispatch: Vec::new(),
            step: None,
            wake_at: None,
            wait_seconds: 0,
            hand_off: false,
            machine: None,
            execution_name: None,
        }
    }
}

/// What the plan function needs of the deployment: the function that runs
/// each step type, and the Standard machine runs are handed to.
pub trait FunctionNames {
    fn function_for(&self, step_type: &str) -> Option<String>;
    /// The Standard DAG driver's ARN.
    fn standard_machine(&self) -> Option<&str>;
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

/// What a step function does with its reference: rebuilds the call from
/// the store, runs the attempt and records the result (a failed attempt is
/// a result too). Only a failure to record is an error; an attempt that is
/// no longer running (the run moved on) is left alone.
pub async fn run_step(
    s: Stores<'_>,
    executor: Option<&dyn StepExecutor>,
    r: &StepRef,
) -> anyhow::Result<()> {
    let Some(call) =
        tick::prepare_call(s, &r.workspace_id, &r.run_id, &r.step_key, r.attempt).await?
    else {
        return Ok(());
    };
    let result = tick::attempt(executor, &call).await;
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
    kept: Option<&KeptRecords>,
    req: PlanRequest,
    now: DateTime<Utc>,
) -> anyhow::Result<PlanResponse> {
    let (ws, run_id, execution, express_started_at) = match req {
        PlanRequest::Plan {
            workspace_id,
            run_id,
            execution,
            results,
            express_started_at,
        } => {
            for r in results.iter().filter(|r| r["ok"] == false) {
                if let Ok(call) = serde_json::from_value::<StepRef>(r["call"].clone()) {
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
            (workspace_id, run_id, execution, express_started_at)
        }
        // Only records: the machine plans next (this answer is discarded),
        // and a pass here would hand out attempts no one runs.
        PlanRequest::RecordFailure {
            workspace_id,
            run_id,
            dispatch,
            failure,
            ..
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
            return Ok(PlanResponse::new(workspace_id, run_id, Next::Plan));
        }
        PlanRequest::Park { .. } => {
            anyhow::bail!("`park` needs the AWS task-token store; the plan function handles it")
        }
    };
    let holder = tick::Holder {
        owner: &execution,
        counts_events: express_started_at.is_none(),
    };
    let (mut out, events) = answer(s, names, kept, ws, run_id, holder, now).await?;
    let move_on = match express_started_at {
        Some(started) => leaves_express(&out, started, now),
        // A Standard execution whose history is nearly full goes on in a
        // fresh one, at an answer that hands nothing out.
        None => {
            events > lease::MAX_EVENTS
                && matches!(out.next, Next::Plan | Next::Sleep | Next::WaitEvent)
        }
    };
    if move_on {
        hand_over(s, names, &mut out, &execution, now).await?;
        if out.next != Next::Finished && express_started_at.is_none() {
            out.next = Next::Continue;
        }
    }
    Ok(out)
}

/// Gives the run's lease to the next Standard execution and names it in
/// the answer (which the machine then starts). If this execution no longer
/// holds the run, it stops instead.
async fn hand_over(
    s: Stores<'_>,
    names: &dyn FunctionNames,
    out: &mut PlanResponse,
    me: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let machine = names
        .standard_machine()
        .context("WEFT_DRIVER_ARN (the Standard DAG driver) is not set")?;
    // The next execution carries this answer out before it plans: it holds
    // the run until the answer's wait or attempts are over.
    let due = match out.next {
        Next::WaitEvent => now + chrono::Duration::seconds(out.wait_seconds),
        Next::Sleep => out
            .wake_at
            .as_deref()
            .and_then(|w| DateTime::parse_from_rfc3339(w).ok())
            .map_or(now, |at| at.with_timezone(&Utc)),
        Next::Dispatch | Next::DispatchOne => {
            let longest = out
                .dispatch
                .iter()
                .map(|t| t.timeout_secs)
                .max()
                .unwrap_or(0);
            now + chrono::Duration::seconds(i64::try_from(longest).unwrap_or(0).min(MAX_WAIT_SECS))
        }
        _ => now,
    };
    let name = std::sync::Mutex::new(None);
    let written = tick::update_lease(s.runs, &out.workspace_id, &out.run_id.clone(), |run| {
        let run_id = run.id.to_string();
        let Some(l) = run.lease.as_mut().filter(|l| lease::holds(l, me)) else {
            return false;
        };
        let n = lease::hand_over(l, machine, &run_id, now, due);
        if let Ok(mut slot) = name.lock() {
            *slot = Some(n);
        }
        true
    })
    .await?;
    match (written, name.into_inner().ok().flatten()) {
        (Some(run), Some(n)) => {
            out.revision = run.revision;
            out.hand_off = true;
            out.machine = Some(machine.to_owned());
            out.execution_name = Some(n);
        }
        _ => {
            out.next = Next::Finished;
            out.hand_off = false;
        }
    }
    Ok(())
}

/// Whether an answer made on the Express machine must be carried out on
/// the Standard one: waits on events always, sleeps past
/// `EXPRESS_SLEEP_SECS`, and anything that could outlast the budget.
fn leaves_express(out: &PlanResponse, started: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    let left = (started + chrono::Duration::seconds(EXPRESS_BUDGET_SECS) - now).num_seconds();
    match out.next {
        Next::Finished | Next::Continue => false,
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
                .map(|t| t.timeout_secs)
                .max()
                .unwrap_or(0);
            i64::try_from(longest).unwrap_or(i64::MAX) >= left
        }
    }
}

/// The DAG core's next decision for the run, as the machine's next state,
/// with the history events the holder has used.
async fn answer(
    s: Stores<'_>,
    names: &dyn FunctionNames,
    kept: Option<&KeptRecords>,
    ws: WorkspaceId,
    run_id: RunId,
    holder: tick::Holder<'_>,
    now: DateTime<Utc>,
) -> anyhow::Result<(PlanResponse, u32)> {
    // Between Plan calls no step function of this execution is running; an
    // attempt another execution handed out counts as running until its
    // deadline has passed.
    let cache = kept.map(|k| k.of((ws.clone(), run_id.clone())));
    let driving = tick::Driving {
        in_flight: InFlight::UntilDeadline,
        max_dispatch: Some(MAX_DISPATCH),
        holder: Some(holder),
        claim: &|_, _| {},
        results: &[],
        inbox: true,
        cache: cache.as_ref().map(|c| c as &dyn tick::RecordCache),
        memory: None,
    };
    let ticked = tick::tick(s, &ws, &run_id, &driving).await?;
    let mut out = PlanResponse::new(ws, run_id, Next::Finished);
    let Some(t) = ticked else {
        return Ok((out, 0));
    };
    out.revision = t.run.revision;
    if t.superseded {
        tracing::info!("another execution holds the run; this one stops");
        return Ok((out, 0));
    }
    let events = t.run.lease.as_ref().map_or(0, |l| l.events);
    if t.finished {
        return Ok((out, events));
    }
    if !t.dispatch.is_empty() {
        for d in &t.dispatch {
            let call = StepRef {
                workspace_id: t.run.workspace_id.clone(),
                run_id: t.run.id.clone(),
                step_key: d.key.clone(),
                attempt: d.attempt,
            };
            match names.function_for(d.request.step_type()) {
                Some(function) => out.dispatch.push(Target {
                    function,
                    call,
                    timeout_secs: d.timeout.as_secs(),
                }),
                // A step type this deployment has no function for fails at
                // once instead.
                None => {
                    let err = tick::no_executor(d.request.step_type());
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
        return Ok((out, events));
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
            // In milliseconds, rounded up: a Wait that ends before the
            // timer is due costs a loop for nothing.
            let up = at + chrono::Duration::microseconds(999);
            out.wake_at = Some(up.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
    } else {
        // Nothing can move the run but an outside event.
        out.next = Next::WaitEvent;
        out.wait_seconds = MAX_WAIT_SECS;
    }
    Ok((out, events))
}

#[cfg(test)]
mod tests;
