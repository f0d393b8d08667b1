//! What starting a step of each built-in type does. Every type here is pure
//! (a function of the step's context and the clock), so the planner runs them
//! inline; steps that do I/O run elsewhere and report back.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::domain::StepError;
use crate::dsl::{Delay, Step, StepKind, Transform, TransformAction};
use crate::ports::{HttpRequest, LlmRequest, ModelChoice, StepRequest};
use crate::template::{self, Context, TemplateError};

/// Most items a map step may iterate over.
pub const MAX_MAP_ITEMS: usize = 100_000;

/// What a step does when started.
#[derive(Debug)]
pub enum Started {
    /// It finished at once.
    Done(Result<Value, StepError>),
    /// It waits until a time (a delay's end, an approval's timeout) or, with
    /// `None`, for an outside event only.
    Waiting { wake_at: Option<DateTime<Utc>> },
    /// A map step: its items, each run through the sub-graph.
    Iterate(Vec<Value>),
    /// A step that does I/O: the fully rendered request for its executor.
    External(StepRequest),
}

fn template_error(e: TemplateError) -> StepError {
    StepError::permanent("template_error", e.message)
}

pub fn start(step: &Step, ctx: &Context, now: DateTime<Utc>) -> Started {
    match &step.kind {
        StepKind::Transform(t) => Started::Done(transform(t, ctx)),
        StepKind::Condition(c) => Started::Done(
            template::eval_condition(&c.expression, ctx)
                .map(|result| json!({ "result": result }))
                .map_err(template_error),
        ),
        StepKind::Delay(Delay::For(d)) => Started::Waiting {
            wake_at: Some(now + chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX)),
        },
        StepKind::Delay(Delay::Until(src)) => match until(src, ctx, now) {
            Ok(at) => Started::Waiting { wake_at: Some(at) },
            Err(e) => Started::Done(Err(e)),
        },
        StepKind::Approval(_) | StepKind::WaitForEvent(_) => Started::Waiting {
            wake_at: step
                .timeout
                .map(|t| now + chrono::Duration::from_std(t).unwrap_or(chrono::Duration::MAX)),
        },
        StepKind::Http(h) => external(http_request(h, ctx).map(StepRequest::Http)),
        StepKind::Llm(l) => external(llm_request(l, ctx).map(StepRequest::Llm)),
        StepKind::Map(m) => match template::render_value(&m.items, ctx).map_err(template_error) {
            Ok(Value::Array(items)) if items.len() <= MAX_MAP_ITEMS => Started::Iterate(items),
            Ok(Value::Array(items)) => Started::Done(Err(StepError::permanent(
                "too_many_items",
                format!(
                    "the map has {} items; the limit is {MAX_MAP_ITEMS}",
                    items.len()
                ),
            ))),
            Ok(other) => Started::Done(Err(StepError::permanent(
                "items_not_a_list",
                format!(
                    "`items` must produce a list, but produced {}",
                    short_json(&other)
                ),
            ))),
            Err(e) => Started::Done(Err(e)),
        },
    }
}

fn external(request: Result<StepRequest, StepError>) -> Started {
    match request {
        Ok(req) => Started::External(req),
        Err(e) => Started::Done(Err(e)),
    }
}

/// The rendered request of an I/O step (None for other steps).
pub fn io_request(step: &Step, ctx: &Context) -> Option<Result<StepRequest, StepError>> {
    match &step.kind {
        StepKind::Http(h) => Some(http_request(h, ctx).map(StepRequest::Http)),
        StepKind::Llm(l) => Some(llm_request(l, ctx).map(StepRequest::Llm)),
        _ => None,
    }
}

fn http_request(h: &crate::dsl::Http, ctx: &Context) -> Result<HttpRequest, StepError> {
    let mut fields = json!({
        "url": h.url,
        "query": h.query,
        "headers": h.headers,
        "body": h.body,
    });
    // The strings that insert secrets are left blank here; the executor
    // builds them from their slots (see `step_secrets`).
    for slot in &h.secrets {
        if let Some(v) = at_path(&mut fields, &slot.path) {
            *v = Value::Null;
        }
    }
    let render = |v: &Value| template::render_value(v, ctx).map_err(template_error);
    Ok(HttpRequest {
        method: h.method.clone(),
        url: render(&fields["url"])?,
        query: render(&fields["query"])?,
        headers: render(&fields["headers"])?,
        body: if h.body.is_some() {
            render(&fields["body"])?
        } else {
            Value::Null
        },
        secrets: crate::step_secrets::render_slots(&h.secrets, ctx)?,
    })
}

fn at_path<'v>(v: &'v mut Value, path: &[crate::dsl::PathSeg]) -> Option<&'v mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            crate::dsl::PathSeg::Key(k) => cur.get_mut(k.as_str())?,
            crate::dsl::PathSeg::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

fn llm_request(l: &crate::dsl::Llm, ctx: &Context) -> Result<LlmRequest, StepError> {
    let render = |v: &Value| template::render_value(v, ctx).map_err(template_error);
    let messages = match render(&l.messages)? {
        Value::Array(m)
            if !m.is_empty()
                && m.iter().all(|x| {
                    x.get("role").is_some_and(Value::is_string) && x.get("content").is_some()
                }) =>
        {
            m
        }
        _ => {
            return Err(StepError::permanent(
                "invalid_messages",
                "`messages` must be a non-empty list of {\"role\", \"content\"} objects",
            ));
        }
    };
    let system = match &l.system {
        None => None,
        Some(s) => Some(as_text(render(&Value::String(s.clone()))?)),
    };
    Ok(LlmRequest {
        provider: l.provider.clone(),
        model: l.model.clone(),
        messages,
        system,
        temperature: l.temperature,
        max_tokens: l.max_tokens,
        json: l.json,
        fallback: l
            .fallback
            .iter()
            .map(|f| ModelChoice {
                provider: f.provider.clone(),
                model: f.model.clone(),
            })
            .collect(),
        retry_model: l.retry_model.clone(),
        inputs: render(&l.inputs)?,
        cache_ttl_secs: l.cache_ttl.map(|d| d.as_secs()),
    })
}

/// A rendered template as the text a model is sent (a template that is
/// one expression may produce a number or an object).
fn as_text(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn until(src: &str, ctx: &Context, now: DateTime<Utc>) -> Result<DateTime<Utc>, StepError> {
    let v = template::render_string(src, ctx).map_err(template_error)?;
    let s = v.as_str().ok_or_else(|| {
        StepError::permanent(
            "invalid_timestamp",
            format!("`until` produced {}, not a timestamp", short_json(&v)),
        )
    })?;
    let at = DateTime::parse_from_rfc3339(s)
        .map_err(|e| {
            StepError::permanent(
                "invalid_timestamp",
                format!("`{s}` is not an RFC 3339 timestamp: {e}"),
            )
        })?
        .with_timezone(&Utc);
    let limit =
        now + chrono::Duration::from_std(crate::dsl::MAX_DURATION).unwrap_or(chrono::Duration::MAX);
    if at > limit {
        return Err(StepError::permanent(
            "delay_too_long",
            format!("`{s}` is more than a year away"),
        ));
    }
    Ok(at)
}

fn transform(t: &Transform, ctx: &Context) -> Result<Value, StepError> {
    match &t.action {
        TransformAction::Template => template::render_value(&t.inputs, ctx).map_err(template_error),
        TransformAction::Expression(e) => template::eval_expression(e, ctx).map_err(template_error),
        TransformAction::ExtractJson | TransformAction::ParseJson => {
            let inputs = template::render_value(&t.inputs, ctx).map_err(template_error)?;
            let text = match inputs.get("text") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => return Ok(other.clone()),
                None => {
                    return Err(StepError::permanent(
                        "missing_input",
                        "`inputs.text` is missing",
                    ));
                }
            };
            if t.action == TransformAction::ParseJson {
                serde_json::from_str(&text).map_err(|e| {
                    StepError::permanent("invalid_json", format!("`inputs.text` is not JSON: {e}"))
                })
            } else {
                extract_json(&text).ok_or_else(|| {
                    StepError::permanent(
                        "extract_json_failed",
                        format!("no JSON object or array found in: {}", short(&text)),
                    )
                })
            }
        }
    }
}

/// The first JSON object or array inside free text, such as an LLM reply
/// that wraps JSON in prose or a ```json fence.
pub fn extract_json(text: &str) -> Option<Value> {
    if let Ok(v @ (Value::Object(_) | Value::Array(_))) = serde_json::from_str::<Value>(text.trim())
    {
        return Some(v);
    }
    for (i, c) in text.char_indices() {
        if c != '{' && c != '[' {
            continue;
        }
        let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        if let Some(Ok(v)) = stream.next() {
            return Some(v);
        }
    }
    None
}

fn short(s: &str) -> String {
    if s.chars().count() <= 200 {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(197).collect::<String>())
    }
}

pub fn short_json(v: &Value) -> String {
    short(&v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_json_from_prose_and_fences() {
        assert_eq!(extract_json(r#"{"a": 1}"#), Some(json!({"a": 1})));
        assert_eq!(
            extract_json(
                "Sure! Here it is:\n```json\n{\"draft\": \"Hi {there}\"}\n```\nAnything else?"
            ),
            Some(json!({"draft": "Hi {there}"}))
        );
        assert_eq!(extract_json("list: [1, 2] done"), Some(json!([1, 2])));
        assert_eq!(
            extract_json("a {broken and then {\"ok\": true}"),
            Some(json!({"ok": true}))
        );
        assert_eq!(extract_json("no json here"), None);
    }
}
