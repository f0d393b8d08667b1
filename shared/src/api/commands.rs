//! Requests turned into the application's commands (`app::commands`): each
//! parser reads the wire shape, collects every error with its path, and
//! returns domain values.

use axum::http::HeaderMap;
use chrono::{Datelike, NaiveDate, Utc};
use serde_json::{Map as JsonMap, Value, json};

use super::extract::Params;
use super::problem::Problem;
use crate::app::{AppError, IdempotencyKey, ScheduleFields, SendEvent, StartRun, UsageRange};
use crate::domain::limits::{MAX_VALUE_DEPTH, check_json};
use crate::domain::{ModelPrice, Usd, WorkspaceSettings};
use crate::dsl::{Path, ValidationError};

/// Largest run input accepted (the request body limit bounds it too).
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Most memory a run input may take once parsed (`memory::mem_size`).
pub const MAX_INPUT_MEMORY: u64 = 32 * 1024 * 1024;
/// Most price entries a workspace may set.
const MAX_PRICES: usize = 200;
/// Most memory a schedule's input may take once parsed (a tick holds a
/// batch of schedules at once).
const MAX_SCHEDULE_INPUT_MEMORY: u64 = 1024 * 1024;
/// Largest secret value accepted.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;

pub(super) fn invalid(errors: Vec<ValidationError>) -> AppError {
    AppError::InvalidRequest(errors)
}

/// The unknown fields of an object, each an error at its path.
pub(super) fn unknown_fields(
    m: &JsonMap<String, Value>,
    known: &[&str],
    hint: &str,
) -> Vec<ValidationError> {
    m.keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| ValidationError::new(&Path::root().key(k), format!("unknown field `{k}`; {hint}")))
        .collect()
}

/// `POST /v1/workflows/{id}/runs`: `{"input", "version", "budget_usd"}` and
/// the Idempotency-Key header.
pub fn start_run(body: &Value, headers: &HeaderMap) -> Result<StartRun, AppError> {
    let idempotency = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "Idempotency-Key must be visible ASCII".to_owned())
                .and_then(IdempotencyKey::parse)
                .map_err(AppError::BadRequest)?,
        ),
    };
    let Value::Object(fields) = body else {
        return Err(invalid(vec![ValidationError::new(
            &Path::root(),
            "the body must be a JSON object such as {\"input\": {...}}",
        )]));
    };
    let mut errors = unknown_fields(
        fields,
        &["input", "version", "budget_usd"],
        "expected `input` and optionally `version` and `budget_usd`",
    );
    let input = fields
        .get("input")
        .cloned()
        .unwrap_or_else(|| Value::Object(JsonMap::new()));
    let version = match fields.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
        {
            Some(n) => Some(n),
            None => {
                errors.push(ValidationError::new(
                    &Path::root().key("version"),
                    "expected a version number (1, 2, ...)",
                ));
                None
            }
        },
    };
    let mut input_memory = 0;
    if let Err(why) = check_json(&input, MAX_INPUT_BYTES, MAX_VALUE_DEPTH) {
        errors.push(ValidationError::new(
            &Path::root().key("input"),
            format!("the input {why}"),
        ));
    } else {
        input_memory = crate::memory::mem_size(&input);
        if input_memory > MAX_INPUT_MEMORY {
            errors.push(ValidationError::new(
                &Path::root().key("input"),
                format!(
                    "the input would take {} MiB in memory; an input may take {} MiB (many tiny values take many times their text)",
                    input_memory / (1024 * 1024),
                    MAX_INPUT_MEMORY / (1024 * 1024)
                ),
            ));
        }
    }
    let budget_usd = crate::dsl::budget_usd(fields.get("budget_usd")).unwrap_or_else(|e| {
        errors.push(ValidationError::new(&Path::root().key("budget_usd"), e));
        None
    });
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    Ok(StartRun {
        input,
        version,
        budget_usd,
        input_memory,
        idempotency,
    })
}

/// `POST /v1/workflows/{id}/schedules` (`create`: `spec` required) and
/// `PATCH …/schedules/{sid}`: `{"spec", "timezone", "input", "paused",
/// "catch_up", "overlap"}`.
pub fn schedule_fields(body: &Value, create: bool) -> Result<ScheduleFields, AppError> {
    let Value::Object(fields) = body else {
        return Err(invalid(vec![ValidationError::new(
            &Path::root(),
            "the body must be a JSON object such as {\"spec\": \"0 9 * * MON-FRI\", \"timezone\": \"Europe/Berlin\"}",
        )]));
    };
    let mut errors = unknown_fields(
        fields,
        &["spec", "timezone", "input", "paused", "catch_up", "overlap"],
        "expected `spec`, `timezone`, `input`, `paused`, `catch_up` or `overlap`",
    );
    let at = |k: &str| Path::root().key(k);
    let string = |k: &str, errors: &mut Vec<ValidationError>| match fields.get(k) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(ValidationError::new(
                &at(k),
                format!("expected `{k}` as a string"),
            ));
            None
        }
    };
    let spec = string("spec", &mut errors);
    let timezone = string("timezone", &mut errors);
    if create && spec.is_none() && !fields.contains_key("spec") {
        errors.push(ValidationError::new(
            &at("spec"),
            "missing required field `spec`: a cron pattern such as \"0 9 * * MON-FRI\" or a rate such as \"rate(15 minutes)\"",
        ));
    }
    let paused = match fields.get("paused") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            errors.push(ValidationError::new(
                &at("paused"),
                "expected true or false",
            ));
            None
        }
    };
    let choice = |k: &str, errors: &mut Vec<ValidationError>, options: &str| -> Option<Value> {
        match fields.get(k) {
            None => None,
            Some(v @ Value::String(_)) => Some(v.clone()),
            Some(_) => {
                errors.push(ValidationError::new(
                    &at(k),
                    format!("expected one of {options}"),
                ));
                None
            }
        }
    };
    const CATCH_UP: &str = "\"latest\", \"all\" or \"none\"";
    const OVERLAP: &str = "\"allow\", \"skip\", \"buffer_one\" or \"cancel_other\"";
    let catch_up = choice("catch_up", &mut errors, CATCH_UP).and_then(|v| {
        serde_json::from_value(v)
            .map_err(|_| {
                errors.push(ValidationError::new(
                    &at("catch_up"),
                    format!("expected one of {CATCH_UP}"),
                ))
            })
            .ok()
    });
    let overlap = choice("overlap", &mut errors, OVERLAP).and_then(|v| {
        serde_json::from_value(v)
            .map_err(|_| {
                errors.push(ValidationError::new(
                    &at("overlap"),
                    format!("expected one of {OVERLAP}"),
                ))
            })
            .ok()
    });
    let input = fields.get("input").cloned();
    if let Some(i) = &input {
        if let Err(why) = check_json(i, crate::app::MAX_SCHEDULE_INPUT_BYTES, MAX_VALUE_DEPTH) {
            errors.push(ValidationError::new(
                &at("input"),
                format!("the input {why}"),
            ));
        } else if crate::memory::mem_size(i) > MAX_SCHEDULE_INPUT_MEMORY {
            errors.push(ValidationError::new(
                &at("input"),
                format!(
                    "the input would take more than {} KiB in memory",
                    MAX_SCHEDULE_INPUT_MEMORY / 1024
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    Ok(ScheduleFields {
        spec,
        timezone,
        input,
        paused,
        catch_up,
        overlap,
    })
}

/// `POST /v1/events`: `{"name", "data", "id"}` (`data` and `id` optional).
pub fn send_event(body: &Value) -> Result<SendEvent, AppError> {
    let Value::Object(fields) = body else {
        return Err(invalid(vec![ValidationError::new(
            &Path::root(),
            "the body must be a JSON object such as {\"name\": \"order.created\", \"data\": {...}}",
        )]));
    };
    let mut errors = unknown_fields(
        fields,
        &["name", "data", "id"],
        "expected `name` and optionally `data` and `id`",
    );
    let at = |k: &str| Path::root().key(k);
    let name = match fields.get("name") {
        Some(Value::String(s)) if crate::dsl::is_event_name(s) => s.clone(),
        Some(Value::String(s)) => {
            errors.push(ValidationError::new(
                &at("name"),
                format!("`{s}` is not an event name: use 1-128 letters, digits, `.`, `_`, `-`, `:` or `/`"),
            ));
            String::new()
        }
        Some(_) => {
            errors.push(ValidationError::new(
                &at("name"),
                "expected the event's name (a string)",
            ));
            String::new()
        }
        None => {
            errors.push(ValidationError::new(
                &at("name"),
                "missing required field `name`",
            ));
            String::new()
        }
    };
    let id = match fields.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match IdempotencyKey::parse(s) {
            // Weft's own ids have no claim behind them: a sender may not
            // reuse one (it would be kept as the event of that id).
            Ok(_) if s.starts_with("evt_") => {
                errors.push(ValidationError::new(
                    &at("id"),
                    "ids starting `evt_` are the ones Weft gives events sent without an id; choose another",
                ));
                None
            }
            Ok(_) => Some(s.clone()),
            Err(_) => {
                errors.push(ValidationError::new(
                    &at("id"),
                    format!(
                        "an event id must be 1-{} visible ASCII characters",
                        IdempotencyKey::MAX_LEN
                    ),
                ));
                None
            }
        },
        Some(_) => {
            errors.push(ValidationError::new(
                &at("id"),
                "expected the event's id (a string)",
            ));
            None
        }
    };
    let data = fields
        .get("data")
        .cloned()
        .unwrap_or_else(|| Value::Object(JsonMap::new()));
    let mut data_memory = 0;
    if let Err(why) = check_json(&data, MAX_INPUT_BYTES, MAX_VALUE_DEPTH) {
        errors.push(ValidationError::new(&at("data"), format!("the data {why}")));
    } else {
        data_memory = crate::memory::mem_size(&data);
        if data_memory > MAX_INPUT_MEMORY {
            errors.push(ValidationError::new(
                &at("data"),
                format!(
                    "the data would take {} MiB in memory; it may take {} MiB",
                    data_memory / (1024 * 1024),
                    MAX_INPUT_MEMORY / (1024 * 1024)
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    Ok(SendEvent {
        name,
        data,
        id,
        data_memory,
    })
}

/// `POST /v1/runs/{id}/steps/{step}/complete`: `{"output": ...}`, or no
/// body for an empty output.
pub fn complete_step(body: Option<Value>) -> Result<Value, Problem> {
    match body {
        None => Ok(json!({})),
        Some(Value::Object(mut m)) => {
            if let Some(k) = m.keys().find(|k| *k != "output") {
                return Err(Problem::bad_request(format!(
                    "unknown field `{k}`; send {{\"output\": {{...}}}}"
                )));
            }
            Ok(m.remove("output").unwrap_or_else(|| json!({})))
        }
        Some(_) => Err(Problem::bad_request(
            "the body must be a JSON object such as {\"output\": {\"approved\": true}}",
        )),
    }
}

/// `PUT /v1/secrets/{name}`: `{"value": "..."}`.
pub fn secret_value(body: &Value) -> Result<String, AppError> {
    let Value::Object(m) = body else {
        return Err(AppError::BadRequest(
            "the body must be a JSON object such as {\"value\": \"...\"}".into(),
        ));
    };
    let mut errors = unknown_fields(m, &["value"], "send {\"value\": \"...\"}");
    match m.get("value") {
        Some(Value::String(v)) if !v.is_empty() && v.len() <= MAX_SECRET_BYTES => {
            if errors.is_empty() {
                return Ok(v.clone());
            }
        }
        _ => errors.push(ValidationError::new(
            &Path::root().key("value"),
            format!("`value` must be a non-empty string of at most {MAX_SECRET_BYTES} bytes"),
        )),
    }
    Err(invalid(errors))
}

fn amount(v: &Value, path: &Path, max: f64, errors: &mut Vec<ValidationError>) -> Option<f64> {
    match v.as_f64() {
        Some(x) if (0.0..=max).contains(&x) => Some(x),
        _ => {
            errors.push(ValidationError::new(
                path,
                format!("expected a number from 0 to {max}"),
            ));
            None
        }
    }
}

/// `PUT /v1/settings`: a full settings document.
pub fn settings(body: &Value) -> Result<WorkspaceSettings, AppError> {
    let root = Path::root();
    let Value::Object(m) = body else {
        return Err(AppError::BadRequest(
            "the body must be a JSON object such as {\"monthly_budget_usd\": 50, \"prices\": {}}"
                .into(),
        ));
    };
    let mut errors = unknown_fields(
        m,
        &["monthly_budget_usd", "prices"],
        "expected `monthly_budget_usd` and `prices`",
    );
    let mut s = WorkspaceSettings::default();
    match m.get("monthly_budget_usd") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let at = root.key("monthly_budget_usd");
            s.monthly_budget_usd =
                amount(v, &at, crate::dsl::MAX_BUDGET_USD.dollars(), &mut errors)
                    .and_then(Usd::from_dollars);
        }
    }
    match m.get("prices") {
        None | Some(Value::Null) => {}
        Some(Value::Object(prices)) if prices.len() <= MAX_PRICES => {
            for (model, p) in prices {
                let at = root.key("prices").key(model);
                if model.is_empty() || model.len() > 128 {
                    errors.push(ValidationError::new(
                        &at,
                        "a model name (prefix) of 1-128 characters",
                    ));
                    continue;
                }
                let Value::Object(f) = p else {
                    errors.push(ValidationError::new(
                        &at,
                        "expected {\"input_per_mtok\": ..., \"output_per_mtok\": ...} (USD per million tokens)",
                    ));
                    continue;
                };
                if let Some(k) = f
                    .keys()
                    .find(|k| *k != "input_per_mtok" && *k != "output_per_mtok")
                {
                    errors.push(ValidationError::new(
                        &at.key(k),
                        format!(
                            "unknown field `{k}`; expected `input_per_mtok` and `output_per_mtok`"
                        ),
                    ));
                }
                let mut get = |k: &str| match f.get(k) {
                    Some(v) => amount(v, &at.key(k), 100_000.0, &mut errors),
                    None => {
                        errors.push(ValidationError::new(&at.key(k), format!("missing `{k}`")));
                        None
                    }
                };
                let (i, o) = (get("input_per_mtok"), get("output_per_mtok"));
                if let (Some(input_per_mtok), Some(output_per_mtok)) = (i, o) {
                    s.prices.insert(
                        model.clone(),
                        ModelPrice {
                            input_per_mtok,
                            output_per_mtok,
                        },
                    );
                }
            }
        }
        Some(Value::Object(_)) => errors.push(ValidationError::new(
            &root.key("prices"),
            format!("at most {MAX_PRICES} prices"),
        )),
        Some(_) => errors.push(ValidationError::new(
            &root.key("prices"),
            "expected an object of model-name prefix -> {\"input_per_mtok\", \"output_per_mtok\"}",
        )),
    }
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(invalid(errors))
    }
}

fn day(s: &str, name: &str) -> Result<NaiveDate, Problem> {
    let day: NaiveDate = s.parse().map_err(|_| {
        Problem::bad_request(format!(
            "`{name}` must be a date such as 2026-01-31, not `{s}`"
        ))
    })?;
    if !(2000..=2999).contains(&day.year()) {
        return Err(Problem::bad_request(format!(
            "`{name}` must be a date from the years 2000 to 2999, not `{s}`"
        )));
    }
    Ok(day)
}

/// `GET /v1/usage?from=&to=`: by default this calendar month (UTC) so far.
pub fn usage_range(params: &Params) -> Result<UsageRange, Problem> {
    params.only(&["from", "to"])?;
    let today = Utc::now().date_naive();
    let from = match params.get("from") {
        Some(f) => day(f, "from")?,
        None => today.with_day(1).unwrap_or(today),
    };
    let to = match params.get("to") {
        Some(t) => day(t, "to")?,
        None => today,
    };
    UsageRange::new(from, to).map_err(Problem::bad_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_field_by_field() {
        let ok = settings(&json!({
            "monthly_budget_usd": 20,
            "prices": {"llama3": {"input_per_mtok": 0.05, "output_per_mtok": 0.1}}
        }))
        .unwrap();
        assert_eq!(ok.monthly_budget_usd, Usd::from_dollars(20.0));
        assert_eq!(ok.prices["llama3"].output_per_mtok, 0.1);
        let Err(AppError::InvalidRequest(errs)) = settings(&json!({
            "monthly_budget_usd": -1,
            "prices": {"m": {"input_per_mtok": "1"}},
            "extra": 1
        })) else {
            panic!("expected errors");
        };
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"$.monthly_budget_usd"), "{paths:?}");
        assert!(paths.contains(&"$.prices.m.input_per_mtok"), "{paths:?}");
        assert!(paths.contains(&"$.prices.m.output_per_mtok"), "{paths:?}");
        assert!(paths.contains(&"$.extra"), "{paths:?}");
    }

    #[test]
    fn a_start_collects_every_error_with_its_path() {
        let Err(AppError::InvalidRequest(errs)) = start_run(
            &json!({"input": {}, "version": 0, "budget_usd": -1, "extra": true}),
            &HeaderMap::new(),
        ) else {
            panic!("expected errors");
        };
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["$.extra", "$.version", "$.budget_usd"]);
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", "k-1".parse().unwrap());
        let ok = start_run(&json!({"input": {"a": 1}, "budget_usd": 0.5}), &h).unwrap();
        assert_eq!(ok.budget_usd, Usd::from_dollars(0.5));
        assert_eq!(ok.idempotency.unwrap().as_str(), "k-1");
    }
}
