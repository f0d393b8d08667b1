//! The sample events in events/ are what the functions take: each parses
//! as its function's event type (the API's are checked in functions/api).

use std::path::Path;

use super::{AdminRequest, StepPayload, TickEvent};
use crate::orchestrator::stepfunctions::PlanRequest;

#[test]
fn sample_events_parse_as_their_functions_take_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../events");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let parsed = if name.starts_with("plan-") {
            serde_json::from_str::<PlanRequest>(&text).map(drop)
        } else if name.starts_with("step-") {
            serde_json::from_str::<StepPayload>(&text).map(drop)
        } else if name.starts_with("tick-") {
            serde_json::from_str::<TickEvent>(&text).map(|ev| assert!(ev.time.is_some()))
        } else if name.starts_with("admin-") {
            serde_json::from_str::<AdminRequest>(&text).map(drop)
        } else if name.starts_with("trigger-") {
            serde_json::from_str::<aws_lambda_events::event::sqs::SqsEvent>(&text).map(|ev| {
                for m in ev.records {
                    let body = m.body.unwrap_or_default();
                    serde_json::from_str::<crate::domain::Receipt>(&body).unwrap();
                }
            })
        } else if name.starts_with("deliver-") {
            serde_json::from_str::<aws_lambda_events::event::sqs::SqsEvent>(&text).map(|ev| {
                for m in ev.records {
                    let body = m.body.unwrap_or_default();
                    serde_json::from_str::<crate::domain::DeliveryRef>(&body).unwrap();
                }
            })
        } else if name.starts_with("api-") {
            continue;
        } else {
            panic!("events/{name}: name it after the function that takes it");
        };
        parsed.unwrap_or_else(|e| panic!("events/{name}: {e}"));
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} sample events");
}
