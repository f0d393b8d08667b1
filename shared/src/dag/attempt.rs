use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::plan::Records;
use crate::domain::{Attempt, LogEntry, LogLevel, StepError, StepRecord, StepStatus};
use crate::dsl::{RetryPolicy, Workflow};

/// Marks the start of a new attempt.
pub fn begin_attempt(rec: &mut StepRecord, now: DateTime<Utc>) {
    let number = rec.attempts.len() as u32 + 1;
    rec.attempts.push(Attempt {
        number,
        started_at: now,
        finished_at: None,
        error: None,
    });
    rec.status = StepStatus::Running;
    rec.started_at.get_or_insert(now);
    rec.retry_at = None;
}

/// An attempt's result as it may be recorded: an output that would not
/// read back (too deep, too big) or would take too much memory becomes the
/// attempt's error. With the output's size in memory (0 for an error).
pub fn checked_result(result: Result<Value, StepError>) -> (Result<Value, StepError>, u64) {
    use crate::domain::limits::{
        MAX_STEP_OUTPUT_BYTES, MAX_STEP_OUTPUT_MEMORY, MAX_VALUE_DEPTH, json_size,
    };
    let mut size = 0;
    let result = result.and_then(|output| {
        if let Err(why) = json_size(&output, MAX_STEP_OUTPUT_BYTES, MAX_VALUE_DEPTH) {
            return Err(StepError::permanent(
                "output_too_large",
                format!("the step's output {why}"),
            ));
        }
        size = crate::memory::mem_size(&output);
        if size > MAX_STEP_OUTPUT_MEMORY {
            return Err(StepError::permanent(
                "output_too_large",
                format!(
                    "the step's output would take {} MiB in memory; an output may take {} MiB",
                    size / (1024 * 1024),
                    MAX_STEP_OUTPUT_MEMORY / (1024 * 1024)
                ),
            ));
        }
        Ok(output)
    });
    if result.is_err() {
        size = 0;
    }
    (result, size)
}

/// Records how the current attempt ended. A retryable error with attempts
/// left puts the step back to pending with `retry_at` set by the policy;
/// otherwise the step ends succeeded or failed. `seed` makes the jitter
/// repeatable (the run id and step key), so both orchestrators agree.
pub fn finish_attempt(
    rec: &mut StepRecord,
    policy: &RetryPolicy,
    result: Result<Value, StepError>,
    now: DateTime<Utc>,
    seed: &str,
) {
    let (result, size) = checked_result(result);
    // A map's items count too (they are recorded when it starts).
    let items: u64 = rec
        .items
        .iter()
        .flatten()
        .map(crate::memory::mem_size)
        .fold(0, u64::saturating_add);
    rec.size = size.saturating_add(items);
    if let Some(a) = rec.attempts.last_mut() {
        a.finished_at = Some(now);
        a.error = result.as_ref().err().cloned();
    }
    match result {
        Ok(output) => {
            rec.status = StepStatus::Succeeded;
            rec.output = Some(output);
            rec.error = None;
            rec.finished_at = Some(now);
        }
        Err(error) => {
            let tried = rec.attempts.len() as u32;
            if error.retryable && tried < policy.max_attempts {
                let mut wait = backoff(policy, tried, seed);
                if let Some(after) = error.retry_after_secs.filter(|s| s.is_finite() && *s > 0.0) {
                    wait = wait.max(Duration::from_secs_f64(
                        after.min(crate::dsl::MAX_DURATION.as_secs_f64()),
                    ));
                }
                rec.status = StepStatus::Pending;
                rec.retry_at =
                    Some(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX));
            } else {
                rec.status = StepStatus::Failed;
                rec.finished_at = Some(now);
            }
            rec.error = Some(error);
        }
    }
}

/// The wait before retry number `failed_attempts` (1 after the first failure).
pub fn backoff(policy: &RetryPolicy, failed_attempts: u32, seed: &str) -> Duration {
    let exp = policy
        .multiplier
        .powi(failed_attempts.saturating_sub(1).min(64) as i32);
    let base = (policy.initial_interval.as_secs_f64() * exp).min(policy.max_interval.as_secs_f64());
    // A repeatable fraction in [-1, 1) from the seed: FNV-1a, because the
    // standard library's hasher is not promised to be stable across releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes().chain(failed_attempts.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    let secs = (base * (1.0 + policy.jitter * unit)).clamp(0.0, policy.max_interval.as_secs_f64());
    Duration::from_secs_f64(secs)
}

/// Ends every step that has not finished: those recorded become cancelled,
/// and top-level steps never reached get a cancelled record, so a finished
/// run shows what became of each step.
pub fn close_open_steps(
    wf: &Workflow,
    recs: &mut Records,
    now: DateTime<Utc>,
    reason: &str,
) -> Vec<String> {
    let mut changed = Vec::new();
    for step in &wf.steps {
        if !recs.contains_key(&step.id) {
            recs.insert(
                step.id.clone(),
                StepRecord::new(&step.id, step.kind.type_name()),
            );
        }
    }
    for (key, rec) in recs.iter_mut() {
        if cancel_step(rec, reason, now) {
            changed.push(key.clone());
        }
    }
    changed
}

/// Ends an open step as cancelled (a failed map's iterations, a cancelled
/// or failed run's steps): no retry or wake-up left, its attempt closed.
/// False if it had already ended.
pub fn cancel_step(rec: &mut StepRecord, reason: &str, now: DateTime<Utc>) -> bool {
    if rec.status.is_terminal() {
        return false;
    }
    rec.status = StepStatus::Cancelled;
    rec.reason = Some(reason.to_owned());
    rec.finished_at = Some(now);
    rec.retry_at = None;
    rec.wake_at = None;
    if let Some(a) = rec.attempts.last_mut().filter(|a| a.finished_at.is_none()) {
        a.finished_at = Some(now);
    }
    true
}

/// Ends a step as skipped, with why; its log line.
pub fn skip_step(rec: &mut StepRecord, reason: String, now: DateTime<Utc>) -> LogEntry {
    rec.status = StepStatus::Skipped;
    rec.finished_at = Some(now);
    let line = LogEntry::new(LogLevel::Info, Some(&rec.key), format!("skipped: {reason}"));
    rec.reason = Some(reason);
    line
}

/// Records how the current attempt ended (`finish_attempt`) and returns its
/// log line: how long it took, and when it is retried if it is.
pub fn record_attempt(
    rec: &mut StepRecord,
    policy: &RetryPolicy,
    result: Result<Value, StepError>,
    now: DateTime<Utc>,
    seed: &str,
) -> LogEntry {
    let attempt = rec.attempts.len();
    let started = rec.attempts.last().map_or(now, |a| a.started_at);
    let ms = (now - started).num_milliseconds();
    let (level, mut message) = match &result {
        Ok(_) => (
            LogLevel::Info,
            format!("succeeded (attempt {attempt}, {ms} ms)"),
        ),
        Err(e) => (
            LogLevel::Error,
            format!("failed (attempt {attempt}, {ms} ms): {e}"),
        ),
    };
    finish_attempt(rec, policy, result, now, seed);
    if let Some(at) = rec.retry_at {
        message.push_str(&format!("; retrying at {}", at.to_rfc3339()));
    }
    LogEntry::new(level, Some(&rec.key), message)
}
