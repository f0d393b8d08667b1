//! Results of I/O steps, which finish outside `advance`: recording them, and
//! closing attempts that were in flight when a process died.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::dag::{self, Records};
use crate::domain::{LogEntry, StepError, StepStatus};
use crate::dsl::Workflow;

/// Records the result of attempt `attempt` of step `key`. Returns the log
/// line, or None if the result is stale (the run moved on: cancelled, or the
/// attempt was already closed) and was dropped.
pub fn record_external(
    wf: &Workflow,
    recs: &mut Records,
    run_id: &str,
    key: &str,
    attempt: u32,
    result: Result<Value, StepError>,
    now: DateTime<Utc>,
) -> Option<LogEntry> {
    let step = wf.step_by_key(key)?;
    let rec = recs.get_mut(key)?;
    if rec.status != StepStatus::Running || rec.attempts.len() != attempt as usize {
        return None;
    }
    Some(dag::record_attempt(
        rec,
        &step.retry,
        result,
        now,
        &format!("{run_id}/{key}"),
    ))
}

/// How a driver tells whether an attempt of an I/O step is still being
/// worked on.
pub enum InFlight<'a> {
    /// The driver knows (the embedded orchestrator tracks its attempts):
    /// any other running attempt was cut off with the process running it.
    Known(&'a (dyn Fn(&str, u32) -> bool + Sync)),
    /// Until the attempt's deadline (its start plus the step's timeout) and
    /// `ORPHAN_GRACE` have passed: for drivers that cannot know (on AWS a
    /// step function may still be running when another execution looks).
    UntilDeadline,
}

/// How long after its deadline an attempt may still report its result.
pub const ORPHAN_GRACE: std::time::Duration = std::time::Duration::from_secs(120);

/// When a running attempt counts as cut off, under `UntilDeadline`.
pub fn attempt_deadline(
    rec: &crate::domain::StepRecord,
    step: &crate::dsl::Step,
) -> Option<DateTime<Utc>> {
    let started = rec.attempts.last()?.started_at;
    let limit = step.timeout.unwrap_or(super::DEFAULT_STEP_TIMEOUT) + ORPHAN_GRACE;
    Some(started + chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX))
}

/// What `interrupt_orphans` did.
#[derive(Debug, Default)]
pub struct Orphans {
    /// Steps whose attempt was closed as interrupted.
    pub changed: Vec<String>,
    /// The earliest deadline of an attempt still counted as in flight: the
    /// driver must look again then.
    pub next_deadline: Option<DateTime<Utc>>,
}

/// Closes attempts of I/O steps that are recorded as running but that no
/// executor is working on (the process that started them died). Each counts
/// as a failed, retryable attempt, so the step's retry policy decides what
/// happens next.
pub fn interrupt_orphans(
    wf: &Workflow,
    recs: &mut Records,
    run_id: &str,
    now: DateTime<Utc>,
    in_flight: &InFlight<'_>,
    logs: &mut Vec<LogEntry>,
) -> Orphans {
    let mut out = Orphans::default();
    let mut orphans: Vec<(String, u32)> = Vec::new();
    for r in recs.values().filter(|r| r.status == StepStatus::Running) {
        let Some(step) = wf.step_by_key(&r.key).filter(|s| s.kind.is_external()) else {
            continue;
        };
        let attempt = r.attempts.len() as u32;
        let alive = match in_flight {
            InFlight::Known(f) => f(&r.key, attempt),
            InFlight::UntilDeadline => match attempt_deadline(r, step) {
                Some(at) if at > now => {
                    out.next_deadline = Some(out.next_deadline.map_or(at, |d| d.min(at)));
                    true
                }
                _ => false,
            },
        };
        if !alive {
            orphans.push((r.key.clone(), attempt));
        }
    }
    for (key, attempt) in orphans {
        let err = StepError::transient(
            "interrupted",
            "the attempt was interrupted (the process running it stopped)",
        );
        if let Some(line) = record_external(wf, recs, run_id, &key, attempt, Err(err), now) {
            logs.push(line);
            out.changed.push(key);
        }
    }
    out
}
