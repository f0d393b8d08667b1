//! Steps that begin waiting for an event look at the events already
//! received: those since the step began waiting (one may have arrived
//! while the pass that puts it in wait was being written) or, with
//! `lookback`, since that long before. The oldest whose `match` holds
//! completes the step in the same write. Events from before the run was
//! made never count without `lookback` (a run an event started does not
//! take that event).
//!
//! Why no event is lost: a pass indexes its waiting steps first, then
//! reads the kept events, then writes. An event kept before the read is
//! found by it; one kept after is kept after the waiter was indexed, so
//! its sender finds the waiter (and waits for the pass's write when the
//! step is not waiting yet: `App::send_event`).

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::tick::Stores;
use crate::dag::Records;
use crate::domain::{LogEntry, LogLevel, RunRecord, StepRecord, StepStatus};
use crate::dsl::{Step, StepKind, WaitForEvent, Workflow};
use crate::ports::KeptEvent;

/// Most kept events read for one event name and window (the oldest).
const MOST_LOOKED_AT: usize = 100;
/// An event this much before the step began waiting still counts: the
/// clocks of the process that kept it and of the one that runs the pass
/// differ a little.
const SLACK: chrono::Duration = chrono::Duration::milliseconds(250);

/// Where a waiting step's window of events begins.
fn window_start(w: &WaitForEvent, began: DateTime<Utc>, run: &RunRecord) -> DateTime<Utc> {
    match w.lookback.and_then(|d| chrono::Duration::from_std(d).ok()) {
        Some(back) => began - back - SLACK,
        None => (began - SLACK).max(run.created_at),
    }
}

/// Whether an event received at `at` is in the window of a step waiting
/// as `rec` says.
pub(crate) fn counts(
    w: &WaitForEvent,
    rec: &StepRecord,
    run: &RunRecord,
    at: DateTime<Utc>,
) -> bool {
    at >= window_start(w, rec.started_at.unwrap_or(run.created_at), run)
}

/// Whether an event completes a step waiting for it (its `match` over the
/// event and the run; no `match`: any event of the name). Evaluated in the
/// caller's template budget.
pub(crate) fn event_matches(
    w: &WaitForEvent,
    event: &Value,
    run: &RunRecord,
) -> Result<bool, String> {
    let Some(src) = &w.matches else {
        return Ok(true);
    };
    let ctx = crate::template::context_from_json(&json!({
        "event": event,
        "trigger": run.input,
        "run": {"id": run.id, "workflow_id": run.workflow_id},
    }));
    crate::template::eval_condition(src, &ctx).map_err(|e| e.to_string())
}

/// A waiting step's pick among the events read (the event as its output,
/// and its id), and why matches could not be evaluated.
type Pick = (Option<(Value, String)>, Vec<String>);

/// The `wait_for_event` steps among `steps` that wait.
fn waiting<'w>(
    wf: &'w Workflow,
    steps: &[StepRecord],
) -> Vec<(String, &'w Step, &'w WaitForEvent)> {
    steps
        .iter()
        .filter(|st| st.status == StepStatus::Waiting)
        .filter_map(|st| match wf.step_by_key(&st.key) {
            Some(
                step @ Step {
                    kind: StepKind::WaitForEvent(w),
                    ..
                },
            ) => Some((st.key.clone(), step, w)),
            _ => None,
        })
        .collect()
}

/// Completes each step of `changed` that began waiting for an event with
/// the oldest kept event that matches, in `recs` and `changed` alike (with
/// a log line). Events are read once per name and window, and every
/// `match` of the pass shares one template budget. Returns whether it
/// completed any (the run then has more to do at once).
pub(super) async fn look_back(
    s: Stores<'_>,
    wf: &Workflow,
    run: &RunRecord,
    recs: &mut Records,
    changed: &mut [StepRecord],
    logs: &mut Vec<LogEntry>,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let steps = waiting(wf, changed);
    if steps.is_empty() {
        return Ok(false);
    }
    let mut read: HashMap<(String, DateTime<Utc>), Vec<KeptEvent>> = HashMap::new();
    let mut windows = Vec::with_capacity(steps.len());
    for (key, _, w) in &steps {
        let began = recs.get(key).and_then(|r| r.started_at).unwrap_or(now);
        let since = window_start(w, began, run);
        let k = (w.event.clone(), since);
        if !read.contains_key(&k) {
            let kept = s
                .events
                .events_since(&run.workspace_id, &w.event, since, MOST_LOOKED_AT)
                .await
                .context("reading the events a waiting step looks back at")?;
            read.insert(k.clone(), kept);
        }
        windows.push(k);
    }
    // Each step's pick (the event, as its output), and the matches that
    // could not be evaluated.
    let picks: Vec<Pick> = super::tick::cpu(|| {
        let _budget = crate::template::scope();
        steps
            .iter()
            .zip(&windows)
            .map(|((_, _, w), k)| {
                let mut failed = Vec::new();
                for e in read.get(k).into_iter().flatten() {
                    if e.data_omitted {
                        continue;
                    }
                    let event = json!({"name": e.name, "id": e.id, "data": e.data});
                    match event_matches(w, &event, run) {
                        Ok(true) => return (Some((event, e.id.clone())), failed),
                        Ok(false) => {}
                        Err(why) => failed.push(crate::app::cut(format!(
                            "the match could not be evaluated for event {}: {why}",
                            e.id
                        ))),
                    }
                }
                (None, failed)
            })
            .collect()
    });
    let mut completed = false;
    for ((key, step, w), (pick, failed)) in steps.iter().zip(picks) {
        for why in failed {
            logs.push(LogEntry::new(LogLevel::Warn, Some(key), why));
        }
        let (Some((event, id)), Some(rec)) = (pick, recs.get_mut(key)) else {
            continue;
        };
        crate::dag::finish_attempt(
            rec,
            &step.retry,
            Ok(event),
            now,
            &format!("{}/{key}", run.id),
        );
        logs.push(LogEntry::new(
            LogLevel::Info,
            Some(key),
            format!("event `{}` ({id}) had arrived", w.event),
        ));
        if let Some(c) = changed.iter_mut().find(|c| c.key == *key) {
            *c = rec.clone();
        }
        completed = true;
    }
    Ok(completed)
}
