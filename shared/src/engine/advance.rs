//! Moves a run as far as it can go now: asks the DAG core what to do, does
//! the pure parts inline (transforms, conditions, skips, starting timers and
//! maps) and repeats until only waiting is left. Both orchestrators call
//! this; they differ only in how they store the result and wait.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::context::{Names, RunInfo, context_for, scope_values, sink_output};
use super::steps::{self, Started};
use crate::dag::{self, Decision, Outcome, Records};
use crate::domain::limits::{
    MAX_RUN_STATE_BYTES, MAX_STEP_OUTPUT_BYTES, MAX_STEP_RECORDS, MAX_VALUE_DEPTH, check_json,
};
use crate::domain::{LogEntry, LogLevel, RunStatus, StepError, StepRecord, StepStatus};
use crate::dsl::{StepKind, Workflow};
use crate::template::{self, context_from_json};

/// Decisions applied in one call before yielding; a run with more work left
/// reports `wake_at = now` and continues on the next call.
const MAX_DECISIONS_PER_CALL: usize = 100_000;

/// What one call of `advance` did and where the run now stands.
#[derive(Debug)]
pub struct Advanced {
    pub status: RunStatus,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    /// When to call `advance` again without an outside event.
    pub wake_at: Option<DateTime<Utc>>,
    /// Keys of the step records this call changed (to be persisted).
    pub changed: BTreeSet<String>,
    pub logs: Vec<LogEntry>,
    /// Attempts of I/O steps to hand to their executors once the changes
    /// are stored.
    pub dispatch: Vec<Dispatch>,
    /// The run waits for an outside event (an approval), not only timers.
    pub awaits_event: bool,
    /// What the run's outputs take in memory now (the sum of the records'
    /// `size`): `RunRecord::state_bytes`.
    pub state_bytes: u64,
}

/// Most I/O attempts one run has in flight at once, whatever its maps'
/// `concurrency` says.
pub const MAX_IN_FLIGHT_PER_RUN: usize = 200;

/// Default limit for one attempt of an I/O step without a `timeout`.
pub const DEFAULT_STEP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// An attempt of an I/O step, ready for its executor.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    pub key: String,
    pub attempt: u32,
    pub request: crate::ports::StepRequest,
    pub timeout: std::time::Duration,
}

/// What applying decisions produced: changed records, log lines, dispatches.
#[derive(Default)]
struct Effects {
    changed: BTreeSet<String>,
    logs: Vec<LogEntry>,
    dispatch: Vec<Dispatch>,
    /// How many step records the run will have once every started map has
    /// run all its iterations (worked out when a map first starts).
    projected: Option<usize>,
}

/// Step records the run will have: its top-level steps, and for every map
/// that has its items, one record per item and sub-step.
fn projected_records(wf: &Workflow, recs: &Records) -> usize {
    let mut n = wf.steps.len();
    for r in recs.values() {
        if let (Some(items), Some(StepKind::Map(m))) =
            (&r.items, wf.step_by_key(&r.key).map(|s| &s.kind))
        {
            n = n.saturating_add(items.len().saturating_mul(m.steps.len()));
        }
    }
    n
}

/// How much one call of `advance` may do, for drivers and stores that
/// bound it (a state machine's Map, a database's transaction). What is left
/// is reported as more work (`wake_at` = now) for the next call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Most decisions applied (each changes at most one step's record,
    /// besides steps it cancels).
    pub max_changes: Option<usize>,
    /// Most I/O attempts handed out.
    pub max_dispatch: Option<usize>,
}

/// True if the decision starts an I/O step (a dispatch).
fn starts_io(wf: &Workflow, d: &Decision) -> bool {
    matches!(d, Decision::Start { key } if wf.step_by_key(key).is_some_and(|s| s.kind.is_external()))
}

pub fn advance(
    wf: &Workflow,
    info: RunInfo<'_>,
    recs: &mut Records,
    now: DateTime<Utc>,
    limits: Limits,
) -> Advanced {
    advance_from(wf, info, recs, now, limits, &mut dag::Cursors::default())
}

/// `advance`, planning maps from `cursors` (kept by a driver that holds
/// the run's records between calls; see `dag::Cursors`).
pub fn advance_from(
    wf: &Workflow,
    info: RunInfo<'_>,
    recs: &mut Records,
    now: DateTime<Utc>,
    limits: Limits,
    cursors: &mut dag::Cursors,
) -> Advanced {
    let mut fx = Effects::default();
    let mut applied = 0;
    let max_changes = limits
        .max_changes
        .unwrap_or(usize::MAX)
        .min(MAX_DECISIONS_PER_CALL);
    let max_dispatch = limits.max_dispatch.unwrap_or(usize::MAX);
    // What the run holds in all is bounded like what one step records:
    // checked here and after every decision (steps run inline add outputs
    // within one call).
    let mut state: u64 = state_of(recs);
    if state > MAX_RUN_STATE_BYTES {
        return finish(wf, info, recs, now, state_too_large(state), fx);
    }
    // I/O attempts in flight: nested maps multiply their concurrency, and
    // one run must not hold thousands of connections open.
    let in_flight = recs
        .values()
        .filter(|r| r.status == StepStatus::Running)
        .filter(|r| wf.step_by_key(&r.key).is_some_and(|s| s.kind.is_external()))
        .count();
    loop {
        let plan = dag::plan_from(wf, recs, now, cursors);
        if let Some(outcome) = plan.outcome {
            return finish(wf, info, recs, now, outcome, fx);
        }
        let mut deferred = false;
        let mut applied_now = 0;
        for d in plan.decisions {
            if applied >= max_changes {
                deferred = true;
                break;
            }
            if starts_io(wf, &d) {
                if fx.dispatch.len() >= max_dispatch {
                    deferred = true;
                    continue;
                }
                // Past the run's cap, a start waits for an attempt in
                // flight to end (which wakes the run): no retry now.
                if in_flight + fx.dispatch.len() >= MAX_IN_FLIGHT_PER_RUN {
                    continue;
                }
            }
            applied += 1;
            applied_now += 1;
            let key = d.key().to_owned();
            if matches!(
                d,
                Decision::Start { .. } | Decision::CompleteMap { .. } | Decision::FailMap { .. }
            ) && wf
                .step_by_key(&key)
                .is_some_and(|s| matches!(s.kind, StepKind::Map(_)))
            {
                cursors.forget(&key);
            }
            let before = recs.get(&key).map_or(0, |r| r.size);
            apply(wf, info, recs, now, d, &mut fx);
            let after = recs.get(&key).map_or(0, |r| r.size);
            state = state.saturating_sub(before).saturating_add(after);
            if state > MAX_RUN_STATE_BYTES {
                return finish(wf, info, recs, now, state_too_large(state), fx);
            }
        }
        if applied_now > 0 {
            continue;
        }
        // Nothing more can be done in this call.
        if !deferred && !plan.running && !plan.waiting && plan.next_wake.is_none() {
            // Nothing runs, waits or is due: no rule should leave a run
            // here, but if one did the run must not hang silently.
            let error = StepError::permanent("stuck", "the run cannot make progress");
            return finish(
                wf,
                info,
                recs,
                now,
                Outcome::Failed {
                    key: String::new(),
                    error,
                },
                fx,
            );
        }
        let status = if plan.running || deferred || !plan.waiting {
            RunStatus::Running
        } else {
            RunStatus::Waiting
        };
        return Advanced {
            status,
            output: None,
            error: None,
            wake_at: if deferred { Some(now) } else { plan.next_wake },
            changed: fx.changed,
            logs: fx.logs,
            dispatch: fx.dispatch,
            awaits_event: plan.awaits_event,
            state_bytes: state,
        };
    }
}

fn state_of(recs: &Records) -> u64 {
    recs.values().map(|r| r.size).fold(0, u64::saturating_add)
}

fn state_too_large(state: u64) -> Outcome {
    let error = StepError::permanent(
        "state_too_large",
        format!(
            "the run's steps hold {} MiB of outputs; a run may hold {} MiB",
            state / (1024 * 1024),
            MAX_RUN_STATE_BYTES / (1024 * 1024)
        ),
    );
    Outcome::Failed {
        key: String::new(),
        error,
    }
}

fn finish(
    wf: &Workflow,
    info: RunInfo<'_>,
    recs: &mut Records,
    now: DateTime<Utc>,
    outcome: Outcome,
    fx: Effects,
) -> Advanced {
    let Effects {
        mut changed,
        mut logs,
        ..
    } = fx;
    let failure = match outcome {
        Outcome::Completed => match run_output(wf, info, recs).and_then(|o| {
            check_json(&o, MAX_STEP_OUTPUT_BYTES, MAX_VALUE_DEPTH)
                .map(|()| o)
                .map_err(|why| template::TemplateError {
                    message: format!("it {why}"),
                })
        }) {
            Ok(output) => {
                logs.push(LogEntry::new(LogLevel::Info, None, "run completed"));
                return Advanced {
                    status: RunStatus::Completed,
                    output: Some(output),
                    error: None,
                    wake_at: None,
                    changed,
                    logs,
                    dispatch: Vec::new(),
                    awaits_event: false,
                    state_bytes: state_of(recs),
                };
            }
            Err(e) => StepError::permanent(
                "output_error",
                format!("the workflow's output could not be built: {}", e.message),
            ),
        },
        Outcome::Failed { key, error } if key.is_empty() => error,
        Outcome::Failed { key, error } => StepError {
            code: error.code.clone(),
            message: format!("step `{key}` failed: {}", error.message),
            retryable: false,
            retry_after_secs: None,
        },
    };
    // Dispatches made in this call are dropped with the run: their steps
    // are cancelled here and never handed to an executor.
    changed.extend(dag::close_open_steps(wf, recs, now, "the run failed"));
    logs.push(LogEntry::new(
        LogLevel::Error,
        None,
        format!("run failed: {}", failure.message),
    ));
    Advanced {
        status: RunStatus::Failed,
        output: None,
        error: Some(failure),
        wake_at: None,
        changed,
        logs,
        dispatch: Vec::new(),
        awaits_event: false,
        state_bytes: state_of(recs),
    }
}

fn run_output(
    wf: &Workflow,
    info: RunInfo<'_>,
    recs: &Records,
) -> Result<Value, template::TemplateError> {
    match &wf.output {
        Some(t) => template::render_value(
            t,
            &context_from_json(&Value::Object(scope_values(wf, info, recs, "", Names::All))),
        ),
        None => Ok(sink_output(&wf.steps, "", recs)),
    }
}

fn apply(
    wf: &Workflow,
    info: RunInfo<'_>,
    recs: &mut Records,
    now: DateTime<Utc>,
    decision: Decision,
    fx: &mut Effects,
) {
    let Effects {
        changed,
        logs,
        dispatch,
        projected,
    } = fx;
    let key = match &decision {
        Decision::Start { key } | Decision::Skip { key, .. } | Decision::Wake { key } => {
            key.clone()
        }
        Decision::CompleteMap { key } | Decision::FailMap { key, .. } => key.clone(),
    };
    let Some(step) = wf.step_by_key(&key) else {
        // The planner only names steps of this workflow.
        return;
    };
    let seed = format!("{}/{key}", info.run_id);
    changed.insert(key.clone());
    match decision {
        Decision::Skip { reason, .. } => {
            let rec = recs
                .entry(key.clone())
                .or_insert_with(|| StepRecord::new(&key, step.kind.type_name()));
            logs.push(dag::skip_step(rec, reason, now));
        }
        Decision::Start { .. } => {
            // One budget for everything this step's templates do.
            let _budget = template::scope();
            let ctx = context_for(wf, info, recs, &key);
            if matches!(step.kind, StepKind::Map(_)) && projected.is_none() {
                *projected = Some(projected_records(wf, recs));
            }
            let rec = recs
                .entry(key.clone())
                .or_insert_with(|| StepRecord::new(&key, step.kind.type_name()));
            if let Some(cond) = &step.when {
                match template::eval_condition(cond, &ctx) {
                    Ok(true) => {}
                    Ok(false) => {
                        let reason = format!("`if` was false: {cond}");
                        logs.push(dag::skip_step(rec, reason, now));
                        return;
                    }
                    Err(e) => {
                        dag::begin_attempt(rec, now);
                        let err =
                            StepError::permanent("template_error", format!("`if`: {}", e.message));
                        logs.push(LogEntry::new(
                            LogLevel::Error,
                            Some(&key),
                            format!("failed: {}", err.message),
                        ));
                        dag::finish_attempt(rec, &step.retry, Err(err), now, &seed);
                        return;
                    }
                }
            }
            dag::begin_attempt(rec, now);
            let attempt = rec.attempts.len();
            match steps::start(step, &ctx, now) {
                Started::Done(result) => record_result(rec, step, result, now, &seed, logs),
                Started::External(request) => {
                    logs.push(LogEntry::new(
                        LogLevel::Info,
                        Some(&key),
                        format!("started (attempt {attempt})"),
                    ));
                    dispatch.push(Dispatch {
                        key: key.clone(),
                        attempt: attempt as u32,
                        request,
                        timeout: step.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                    });
                }
                Started::Waiting { wake_at } => {
                    rec.status = StepStatus::Waiting;
                    rec.wake_at = wake_at;
                    let msg = match (&step.kind, wake_at) {
                        (StepKind::Approval(_), Some(t)) => {
                            format!("waiting for approval (times out at {})", t.to_rfc3339())
                        }
                        (StepKind::Approval(_), None) => "waiting for approval".to_owned(),
                        (StepKind::WaitForEvent(w), Some(t)) => format!(
                            "waiting for event `{}` (times out at {})",
                            w.event,
                            t.to_rfc3339()
                        ),
                        (StepKind::WaitForEvent(w), None) => {
                            format!("waiting for event `{}`", w.event)
                        }
                        (_, Some(t)) => format!("waiting until {}", t.to_rfc3339()),
                        (_, None) => "waiting".to_owned(),
                    };
                    logs.push(LogEntry::new(LogLevel::Info, Some(&key), msg));
                }
                Started::Iterate(items) => {
                    let StepKind::Map(map) = &step.kind else {
                        return;
                    };
                    let adds = items.len().saturating_mul(map.steps.len());
                    let total = projected.unwrap_or(0).saturating_add(adds);
                    if total > MAX_STEP_RECORDS {
                        let err = StepError::permanent(
                            "too_many_steps",
                            format!(
                                "the map would take the run to {total} step records; a run may have at most {MAX_STEP_RECORDS}"
                            ),
                        );
                        record_result(rec, step, Err(err), now, &seed, logs);
                        return;
                    }
                    *projected = Some(total);
                    logs.push(LogEntry::new(
                        LogLevel::Info,
                        Some(&key),
                        format!("started (attempt {attempt}) over {} items", items.len()),
                    ));
                    // The items count toward the run's state from now.
                    rec.size = items
                        .iter()
                        .map(crate::memory::mem_size)
                        .fold(0, u64::saturating_add);
                    if items.is_empty() {
                        rec.items = Some(items);
                        record_result(rec, step, Ok(json!([])), now, &seed, logs);
                    } else {
                        rec.items = Some(items);
                    }
                }
            }
        }
        Decision::Wake { .. } => {
            let Some(rec) = recs.get_mut(&key) else {
                return;
            };
            let result = match &step.kind {
                StepKind::Approval(_) => Err(StepError::permanent(
                    "approval_timeout",
                    "no one completed the approval before its timeout",
                )),
                // No event came in time: the step's output is null.
                StepKind::WaitForEvent(_) => Ok(Value::Null),
                _ => Ok(json!({ "waited_until": rec.wake_at })),
            };
            record_result(rec, step, result, now, &seed, logs);
        }
        Decision::CompleteMap { .. } => {
            let StepKind::Map(map) = &step.kind else {
                return;
            };
            let n = recs
                .get(&key)
                .and_then(|r| r.items.as_ref())
                .map_or(0, Vec::len);
            let outputs: Result<Vec<Value>, StepError> = (0..n)
                .map(|i| {
                    let _budget = template::scope();
                    let prefix = format!("{key}.{i}.");
                    match &map.output {
                        Some(t) => template::render_value(
                            t,
                            &context_from_json(&Value::Object(scope_values(
                                wf,
                                info,
                                recs,
                                &prefix,
                                Names::Read(&map.output_reads),
                            ))),
                        )
                        .map_err(|e| {
                            StepError::permanent(
                                "template_error",
                                format!("map output: {}", e.message),
                            )
                        }),
                        None => Ok(sink_output(&map.steps, &prefix, recs)),
                    }
                })
                .collect();
            if let Some(rec) = recs.get_mut(&key) {
                record_result(rec, step, outputs.map(Value::Array), now, &seed, logs);
            }
        }
        Decision::FailMap { error, .. } => {
            let prefix = format!("{key}.");
            for (k, r) in recs.range_mut(prefix.clone()..) {
                if !k.starts_with(&prefix) {
                    break;
                }
                if dag::cancel_step(r, &format!("map `{key}` failed"), now) {
                    changed.insert(k.clone());
                }
            }
            if let Some(rec) = recs.get_mut(&key) {
                record_result(rec, step, Err(error), now, &seed, logs);
            }
        }
    }
}

fn record_result(
    rec: &mut StepRecord,
    step: &crate::dsl::Step,
    result: Result<Value, StepError>,
    now: DateTime<Utc>,
    seed: &str,
    logs: &mut Vec<LogEntry>,
) {
    logs.push(dag::record_attempt(rec, &step.retry, result, now, seed));
}
