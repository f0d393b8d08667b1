//! The body of a run event: `{"type", "timestamp", "data"}` as Standard
//! Webhooks suggests, `data` the run's summary and (up to
//! `MAX_OUTPUT_BYTES`) its output; or the endpoint Weft disabled.

use serde_json::{Value, json};

use chrono::{DateTime, Utc};

use crate::domain::{Endpoint, EventType, RunRecord, StepSummary};

/// Largest output put in a delivery; a larger one is left out
/// (`output_omitted`: read the run).
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The body of an event of `run` (and of one of its steps, for the events
/// of a step: `run.waiting`, `step.failed`, `budget.exceeded`).
pub fn run_event(ty: EventType, run: &RunRecord, step: Option<&StepSummary>) -> String {
    let output = run.output.as_ref().map(|o| (o, o.to_string().len()));
    let (output, omitted) = match output {
        Some((o, len)) if len <= MAX_OUTPUT_BYTES => (o.clone(), false),
        Some(_) => (Value::Null, true),
        None => (Value::Null, false),
    };
    let mut data = json!({
        "run_id": run.id,
        "workflow_id": run.workflow_id,
        "workflow_version": run.workflow_version,
        "status": run.status.as_str(),
        "output": output,
        "error": run.error,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "links": {"run": format!("/v1/runs/{}", run.id)},
    });
    if let Some(m) = data.as_object_mut() {
        if omitted {
            m.insert("output_omitted".into(), Value::Bool(true));
        }
        if let Some(s) = step {
            m.insert(
                "step".into(),
                json!({
                    "id": s.key,
                    "type": s.step_type,
                    "error": s.error.as_ref().map(|e| json!({"code": e.code, "message": crate::app::cut(e.message.clone())})),
                    "times_out_at": s.wake_at,
                    "links": {"step": format!("/v1/runs/{}/steps/{}", run.id, s.key)},
                }),
            );
        }
    }
    let at = step.map_or(run.finished_at.unwrap_or(run.created_at), |s| s.at);
    json!({
        "type": ty.as_str(),
        "timestamp": at,
        "data": data,
    })
    .to_string()
}

/// `endpoint.disabled`: which endpoint, and why.
pub fn endpoint_disabled(e: &Endpoint, at: DateTime<Utc>) -> String {
    json!({
        "type": EventType::EndpointDisabled.as_str(),
        "timestamp": at,
        "data": {
            "endpoint_id": e.id,
            "url": e.url,
            "reason": e.disabled_reason,
            "disabled_at": at,
            "links": {"endpoint": format!("/v1/endpoints/{}", e.id)},
        },
    })
    .to_string()
}
