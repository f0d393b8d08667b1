//! The JSON the API returns for each resource.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::RunView;
use crate::domain::*;

fn ms_between(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<i64> {
    Some((b? - a?).num_milliseconds())
}

pub fn workflow(v: &WorkflowVersion) -> Value {
    json!({
        "id": v.id,
        "version": v.version,
        "name": v.name,
        "definition": v.definition,
        "created_at": v.created_at,
        "archived_at": v.archived_at,
    })
}

pub fn workflow_summary(s: &WorkflowSummary) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "version": s.latest_version,
        "created_at": s.created_at,
        "updated_at": s.updated_at,
    })
}

/// What `POST /v1/workflows/{id}/runs` answers: only facts fixed at creation,
/// so a replay with the same Idempotency-Key gets the same body.
pub fn run_accepted(r: &RunRecord) -> Value {
    json!({
        "run_id": r.id,
        "workflow_id": r.workflow_id,
        "workflow_version": r.workflow_version,
        "status": RunStatus::Pending,
        "created_at": r.created_at,
        "links": { "self": format!("/v1/runs/{}", r.id), "logs": format!("/v1/runs/{}/logs", r.id) },
    })
}

fn run_fields(r: &RunRecord) -> serde_json::Map<String, Value> {
    let end = r.finished_at.or_else(|| r.started_at.map(|_| Utc::now()));
    let v = json!({
        "run_id": r.id,
        "workflow_id": r.workflow_id,
        "workflow_version": r.workflow_version,
        "status": r.status,
        "input": r.input,
        "output": r.output,
        "error": r.error,
        "created_at": r.created_at,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "duration_ms": ms_between(r.started_at, end),
        "budget_usd": r.budget_usd,
    });
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// A run in listings: no steps, input or output (read the run for those).
pub fn run_summary(r: &RunRecord) -> Value {
    let mut m = run_fields(r);
    m.remove("input");
    m.remove("output");
    Value::Object(m)
}

pub fn step(s: &StepRecord) -> Value {
    json!({
        "id": s.key,
        "type": s.step_type,
        "status": s.status,
        "attempts": s.attempts.iter().map(|a| json!({
            "number": a.number,
            "started_at": a.started_at,
            "finished_at": a.finished_at,
            "duration_ms": ms_between(Some(a.started_at), a.finished_at),
            "error": a.error,
        })).collect::<Vec<_>>(),
        "output": s.output,
        "error": s.error,
        "reason": s.reason,
        "started_at": s.started_at,
        "finished_at": s.finished_at,
        "duration_ms": s.duration_ms(),
        "retry_at": s.retry_at,
        "wake_at": s.wake_at,
    })
}

/// Most steps a run's view lists; the rest are in `GET /v1/runs/{id}/steps`.
pub const VIEW_STEPS: usize = 1000;
/// Bytes one answer may spend on step outputs (on AWS an answer is at most
/// 6 MB); an output past it is left out (`output_omitted`) and read with
/// `GET /v1/runs/{id}/steps/{step_id}`.
pub const VIEW_BYTES: usize = 5 * 1024 * 1024;

fn size_of(v: &Value) -> usize {
    crate::domain::limits::json_size(v, usize::MAX, usize::MAX).unwrap_or(0)
}

/// A step whose output counts against `budget` (left out if past it, or if
/// it was not read: see `App::with_outputs`).
pub fn step_within(s: &StepRecord, budget: &mut usize) -> Value {
    let mut v = step(s);
    let size = s.output.as_ref().map_or(0, size_of);
    let unread = s.output.is_none() && s.status == StepStatus::Succeeded && s.size > 0;
    if size > *budget || unread {
        v["output"] = Value::Null;
        v["output_omitted"] = json!(true);
    } else {
        *budget -= size;
    }
    v
}

pub fn run(view: &RunView) -> Value {
    let mut m = run_fields(&view.run);
    let count = |st: StepStatus| view.steps.iter().filter(|s| s.status == st).count();
    m.insert(
        "counts".into(),
        json!({
            "total": view.steps.len(),
            "succeeded": count(StepStatus::Succeeded),
            "failed": count(StepStatus::Failed),
            "skipped": count(StepStatus::Skipped),
            "cancelled": count(StepStatus::Cancelled),
            "running": count(StepStatus::Running),
            "waiting": count(StepStatus::Waiting),
            "pending": count(StepStatus::Pending),
        }),
    );
    m.insert("usage".into(), json!(view.usage));
    let mut budget = VIEW_BYTES
        .saturating_sub(size_of(&view.run.input))
        .saturating_sub(view.run.output.as_ref().map_or(0, size_of));
    m.insert(
        "steps".into(),
        Value::Array(
            view.steps
                .iter()
                .take(VIEW_STEPS)
                .map(|s| step_within(s, &mut budget))
                .collect(),
        ),
    );
    if view.steps.len() > VIEW_STEPS {
        m.insert("steps_omitted".into(), json!(view.steps.len() - VIEW_STEPS));
    }
    m.insert(
        "links".into(),
        json!({"steps": format!("/v1/runs/{}/steps", view.run.id)}),
    );
    Value::Object(m)
}

pub fn log(l: &LogEntry) -> Value {
    json!({
        "timestamp": l.timestamp,
        "level": l.level,
        "step_id": l.step_id,
        "message": l.message,
    })
}

/// A secret: its name and times, never its value.
pub fn secret(m: &crate::ports::SecretMeta) -> Value {
    json!({"name": m.name, "created_at": m.created_at, "updated_at": m.updated_at})
}
