//! Steps that begin waiting for an event look at the events already
//! received: those since the step began waiting (one may have arrived
//! while the pass that puts it in wait was being written) or, with
//! `lookback`, since that long before. The oldest whose `match` holds
//! completes the step in the same write.
//!
//! Why no event is lost: a pass indexes its waiting steps first, then
//! reads the kept events, then writes. An event kept before the read is
//! found by it; one kept after is kept after the waiter was indexed, so
//! its sender finds the waiter (and waits for the pass's write when the
//! step is not waiting yet: `App::send_event`).

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::tick::Stores;
use crate::dag::Records;
use crate::domain::{LogEntry, LogLevel, RunRecord, StepRecord, StepStatus};
use crate::dsl::{Step, StepKind, WaitForEvent, Workflow};

/// Most kept events one waiting step looks at.
const MOST_LOOKED_AT: usize = 100;
/// An event this much before the step began waiting still counts: the
/// clocks of the process that kept it and of the one that runs the pass
/// differ a little.
const SLACK: chrono::Duration = chrono::Duration::milliseconds(250);

/// Whether an event completes a step waiting for it (its `match` over the
/// event and the run; no `match`: any event of the name).
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
    super::tick::cpu(|| crate::template::eval_condition(src, &ctx)).map_err(|e| e.to_string())
}

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
/// a log line). Returns whether it completed any (the run then has more to
/// do at once).
pub(super) async fn look_back(
    s: Stores<'_>,
    wf: &Workflow,
    run: &RunRecord,
    recs: &mut Records,
    changed: &mut [StepRecord],
    logs: &mut Vec<LogEntry>,
    now: DateTime<Utc>,
) -> anyhow::Result<bool> {
    let mut completed = false;
    for (key, step, w) in waiting(wf, changed) {
        let Some(rec) = recs.get_mut(&key) else {
            continue;
        };
        let began = rec.started_at.unwrap_or(now);
        let back = w
            .lookback
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .unwrap_or_default();
        let kept = s
            .events
            .events_since(
                &run.workspace_id,
                &w.event,
                began - back - SLACK,
                MOST_LOOKED_AT,
            )
            .await
            .context("reading the events a waiting step looks back at")?;
        for e in kept {
            let event = json!({"name": e.name, "id": e.id, "data": e.data});
            match event_matches(w, &event, run) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(why) => {
                    tracing::warn!(step_id = %key, error = %why, "a waiting step's match could not be evaluated");
                    continue;
                }
            }
            crate::dag::finish_attempt(
                rec,
                &step.retry,
                Ok(event),
                now,
                &format!("{}/{key}", run.id),
            );
            logs.push(LogEntry::new(
                LogLevel::Info,
                Some(&key),
                format!("event `{}` ({}) had arrived", e.name, e.id),
            ));
            if let Some(c) = changed.iter_mut().find(|c| c.key == key) {
                *c = rec.clone();
            }
            completed = true;
            break;
        }
    }
    Ok(completed)
}
