//! How secrets reach I/O steps without ever entering run state.
//!
//! Templates of an I/O step see `secrets.NAME` as a placeholder, not the
//! value: the DAG core and `advance` stay free of secrets, and nothing they
//! record can hold one. The step's executor swaps each placeholder for the
//! value just before the call and redacts those values from whatever it
//! returns. Placeholders carry a random token, so text from a run's input
//! that merely looks like a placeholder is never swapped for a secret.

use std::sync::{Arc, OnceLock};

use serde_json::Value;

const OPEN: &str = "\u{27EA}secret:";
const CLOSE: char = '\u{27EB}';
/// What a secret's value is replaced with wherever it would be recorded.
pub const REDACTED: &str = "[redacted]";

/// The token placeholders carry: `WEFT_SECRET_TOKEN` when set (every process
/// of one deployment must agree on it), otherwise random per process.
fn token() -> &'static str {
    static TOKEN: OnceLock<String> = OnceLock::new();
    TOKEN.get_or_init(|| {
        std::env::var("WEFT_SECRET_TOKEN")
            .ok()
            .filter(|t| t.len() >= 16)
            .unwrap_or_else(|| ulid::Ulid::new().to_string())
    })
}

pub fn placeholder(name: &str) -> String {
    format!("{OPEN}{}:{name}{CLOSE}", token())
}

/// The `secrets` object templates of I/O steps see.
#[derive(Debug)]
struct SecretRefs;

impl minijinja::value::Object for SecretRefs {
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        key.as_str()
            .map(|name| minijinja::Value::from(placeholder(name)))
    }
}

pub fn template_object() -> minijinja::Value {
    minijinja::Value::from_object(SecretRefs)
}

/// Names of the secrets a value's placeholders ask for.
pub fn referenced(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let prefix = format!("{OPEN}{}:", token());
            let mut rest = s.as_str();
            while let Some(i) = rest.find(&prefix) {
                rest = &rest[i + prefix.len()..];
                let Some(end) = rest.find(CLOSE) else { break };
                let name = rest[..end].to_owned();
                if !out.contains(&name) {
                    out.push(name);
                }
                rest = &rest[end + CLOSE.len_utf8()..];
            }
        }
        Value::Array(items) => items.iter().for_each(|i| referenced(i, out)),
        Value::Object(m) => m.values().for_each(|i| referenced(i, out)),
        _ => {}
    }
}

/// Replaces the placeholder of each `(name, value)` pair.
pub fn substitute(v: &mut Value, values: &[(String, String)]) {
    map_strings(v, &|s| {
        let mut out = s.to_owned();
        for (name, value) in values {
            out = out.replace(&placeholder(name), value);
        }
        out
    });
}

/// Replaces every occurrence of the given secret values with `[redacted]`.
pub fn redact(v: &mut Value, values: &[String]) {
    map_strings(v, &|s| redact_str(s, values));
}

pub fn redact_str(s: &str, values: &[String]) -> String {
    let mut out = s.to_owned();
    // Longest first, so a secret containing another is hidden whole.
    let mut sorted: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
    sorted.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in sorted {
        out = out.replace(v.as_str(), REDACTED);
    }
    out
}

/// Resolves the placeholders in an executor's request from the workspace's
/// secrets. Returns the values used, to redact from whatever is returned.
pub async fn resolve(
    secrets: &dyn crate::ports::SecretStore,
    ws: &crate::domain::WorkspaceId,
    request: &mut Value,
) -> Result<Vec<String>, crate::domain::StepError> {
    use crate::domain::StepError;
    let mut names = Vec::new();
    referenced(request, &mut names);
    let mut pairs = Vec::with_capacity(names.len());
    for name in names {
        match secrets.get_secret(ws, &name).await {
            Ok(Some(v)) => pairs.push((name, v)),
            Ok(None) => {
                return Err(StepError::permanent(
                    "secret_not_found",
                    format!(
                        "secret `{name}` is not set in this workspace (PUT /v1/secrets/{name} sets it)"
                    ),
                ));
            }
            Err(e) => {
                return Err(StepError::transient(
                    "secrets_unavailable",
                    format!("secrets could not be read: {e}"),
                ));
            }
        }
    }
    substitute(request, &pairs);
    Ok(pairs.into_iter().map(|(_, v)| v).collect())
}

fn map_strings(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| map_strings(i, f)),
        Value::Object(m) => {
            let entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            for (k, mut val) in entries {
                map_strings(&mut val, f);
                m.insert(f(&k), val);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_round_trip_and_forgeries_do_not() {
        let forged = format!("{OPEN}not-the-token:API{CLOSE}");
        let mut req = json!({"headers": {"x-key": placeholder("API")}, "url": format!("https://x/?a={}&b={forged}", placeholder("OTHER"))});
        let mut names = Vec::new();
        referenced(&req, &mut names);
        assert_eq!(names, vec!["API", "OTHER"]);
        substitute(
            &mut req,
            &[
                ("API".into(), "s3cret".into()),
                ("OTHER".into(), "o".into()),
            ],
        );
        assert_eq!(req["headers"]["x-key"], "s3cret");
        assert_eq!(req["url"], format!("https://x/?a=o&b={forged}"));
    }

    #[test]
    fn redaction_hides_values_anywhere() {
        let mut out = json!({"echo": "key=s3cret", "list": ["s3cret"], "s3cret": 1});
        redact(&mut out, &["s3cret".into()]);
        assert_eq!(
            out,
            json!({"echo": "key=[redacted]", "list": ["[redacted]"], "[redacted]": 1})
        );
    }
}
