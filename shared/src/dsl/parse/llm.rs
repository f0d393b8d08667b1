//! `llm` steps: a model call with fallbacks, caching and a spending cap.

use super::*;
pub use crate::domain::models::{
    LLM_PROVIDERS, MAX_BUDGET_USD, budget_usd, is_model_name, is_provider_name,
};

/// The fields a `llm` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &[
    "provider",
    "model",
    "prompt",
    "messages",
    "system",
    "temperature",
    "max_tokens",
    "json",
    "fallback",
    "retry_model",
    "inputs",
    "cache",
];

/// Longest an LLM result may be cached.
pub const MAX_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

pub(super) const MODEL_NAME_RULE: &str = "expected a model name such as \"gpt-4o-mini\": 1-128 letters, digits and `.` `_` `-` `:` `/` `@`, with no `..`";

/// Output tokens a model call may use when the step does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

pub(super) fn provider_field(p: &mut Parser, v: Option<&Value>, path: &Path) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_provider_name(s) => Some(s.clone()),
        Some(other) => {
            p.err(
                path,
                format!(
                    "{other} is not a provider name; expected {} or the name of a provider the server adds (lowercase letters, digits, `_`, `-`)",
                    LLM_PROVIDERS.join(", ")
                ),
            );
            None
        }
    }
}

pub(super) fn parse_llm(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    refs: &mut Vec<Ref>,
) -> Option<Llm> {
    let provider = provider_field(p, obj.get("provider"), &path.key("provider"));
    let model = match obj.get("model") {
        Some(Value::String(m)) if is_model_name(m) => m.clone(),
        Some(_) => {
            p.err(&path.key("model"), MODEL_NAME_RULE);
            return None;
        }
        None => {
            p.err(path, "an llm step needs a `model`");
            return None;
        }
    };
    let messages = match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(prompt)), None) => {
            serde_json::json!([{"role": "user", "content": prompt}])
        }
        (None, Some(m @ Value::Array(_))) => m.clone(),
        (None, Some(Value::String(t))) if template::is_template(t) => Value::String(t.clone()),
        (Some(_), Some(_)) => {
            p.err(path, "give either `prompt` or `messages`, not both");
            return None;
        }
        (None, None) => {
            p.err(path, "an llm step needs a `prompt` (or `messages`)");
            return None;
        }
        (Some(_), None) => {
            p.err(&path.key("prompt"), "expected a string");
            return None;
        }
        (None, Some(_)) => {
            p.err(
                &path.key("messages"),
                "expected a list of {\"role\", \"content\"} objects",
            );
            return None;
        }
    };
    let messages_path = if obj.contains_key("prompt") {
        path.key("prompt")
    } else {
        path.key("messages")
    };
    collect_refs(p, &messages, &messages_path, refs);
    let system = opt_string(p, obj, path, "system");
    if let Some(sys) = &system {
        collect_refs(p, &Value::String(sys.clone()), &path.key("system"), refs);
    }
    let temperature = match obj.get("temperature") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Some(t),
            _ => {
                p.err(&path.key("temperature"), "expected a number from 0 to 2");
                None
            }
        },
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=200_000).contains(&n) => n as u32,
            _ => {
                p.err(
                    &path.key("max_tokens"),
                    "expected a whole number from 1 to 200000",
                );
                DEFAULT_MAX_TOKENS
            }
        },
    };
    let json = match obj.get("json") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            p.err(&path.key("json"), "expected true or false");
            false
        }
    };
    let mut fallback = Vec::new();
    match obj.get("fallback") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = path.key("fallback").index(i);
                match item {
                    Value::Object(m) => match m.get("model").and_then(Value::as_str) {
                        Some(model) if !is_model_name(model) => {
                            p.err(&at.key("model"), MODEL_NAME_RULE);
                        }
                        Some(model) => fallback.push(ModelRef {
                            provider: provider_field(p, m.get("provider"), &at.key("provider")),
                            model: model.to_owned(),
                        }),
                        None => p.err(
                            &at,
                            "a fallback needs a `model` (and optionally a `provider`)",
                        ),
                    },
                    Value::String(model) if !is_model_name(model) => {
                        p.err(&at, MODEL_NAME_RULE);
                    }
                    Value::String(model) => fallback.push(ModelRef {
                        provider: None,
                        model: model.clone(),
                    }),
                    _ => p.err(&at, "expected {\"provider\": ..., \"model\": ...}"),
                }
            }
        }
        Some(_) => p.err(
            &path.key("fallback"),
            "expected a list of {\"provider\", \"model\"}",
        ),
    }
    let retry_model = opt_string(p, obj, path, "retry_model");
    if retry_model.as_deref().is_some_and(|m| !is_model_name(m)) {
        p.err(&path.key("retry_model"), MODEL_NAME_RULE);
    }
    let cache_ttl = match obj.get("cache") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => {
            unknown_fields(p, c, &path.key("cache"), &["ttl"], "cache");
            match c.get("ttl").map(parse_duration) {
                Some(Ok(d)) if !d.is_zero() && d <= MAX_CACHE_TTL => Some(d),
                Some(Ok(_)) => {
                    p.err(
                        &path.key("cache").key("ttl"),
                        "expected a duration above 0 and at most 30 days",
                    );
                    None
                }
                Some(Err(e)) => {
                    p.err(&path.key("cache").key("ttl"), e);
                    None
                }
                None => {
                    p.err(&path.key("cache"), "a cache needs a `ttl` such as \"1h\"");
                    None
                }
            }
        }
        Some(_) => {
            p.err(&path.key("cache"), "expected {\"ttl\": \"1h\"}");
            None
        }
    };
    let inputs = obj.get("inputs").cloned().unwrap_or(Value::Null);
    collect_refs(p, &inputs, &path.key("inputs"), refs);
    Some(Llm {
        provider,
        model,
        messages,
        system,
        temperature,
        max_tokens,
        json,
        fallback,
        retry_model,
        inputs,
        cache_ttl,
    })
}
