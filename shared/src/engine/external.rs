//! Results of I/O steps, which finish outside `advance`: recording them, and
//! closing attempts that were in flight when a process died.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::dag::{self, Records};
use crate::domain::{LogEntry, LogLevel, StepError, StepStatus};
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
    let started = rec.attempts.last().map_or(now, |a| a.started_at);
    let ms = (now - started).num_milliseconds();
    let line = match &result {
        Ok(_) => LogEntry::new(
            LogLevel::Info,
            Some(key),
            format!("succeeded (attempt {attempt}, {ms} ms)"),
        ),
        Err(e) => LogEntry::new(
            LogLevel::Error,
            Some(key),
            format!("failed (attempt {attempt}, {ms} ms): {e}"),
        ),
    };
    dag::finish_attempt(rec, &step.retry, result, now, &format!("{run_id}/{key}"));
    Some(match rec.retry_at {
        Some(at) => LogEntry {
            message: format!("{}; retrying at {}", line.message, at.to_rfc3339()),
            ..line
        },
        None => line,
    })
}

/// Closes attempts of I/O steps that are recorded as running but that no
/// executor is working on (the process that started them died). Each counts
/// as a failed, retryable attempt, so the step's retry policy decides what
/// happens next. Returns the keys changed.
pub fn interrupt_orphans(
    wf: &Workflow,
    recs: &mut Records,
    run_id: &str,
    now: DateTime<Utc>,
    in_flight: impl Fn(&str, u32) -> bool,
    logs: &mut Vec<LogEntry>,
) -> Vec<String> {
    let orphans: Vec<(String, u32)> = recs
        .values()
        .filter(|r| r.status == StepStatus::Running)
        .filter(|r| wf.step_by_key(&r.key).is_some_and(|s| s.kind.is_external()))
        .map(|r| (r.key.clone(), r.attempts.len() as u32))
        .filter(|(k, a)| !in_flight(k, *a))
        .collect();
    let mut changed = Vec::new();
    for (key, attempt) in orphans {
        let err = StepError::transient(
            "interrupted",
            "the attempt was interrupted (the process running it stopped)",
        );
        if let Some(line) = record_external(wf, recs, run_id, &key, attempt, Err(err), now) {
            logs.push(line);
            changed.push(key);
        }
    }
    changed
}
