//! Inbound webhooks: what a request to a hook must be (`verify`), and how
//! its headers and body are read into what a run's input is made from.
//! The hooks themselves are kept by the `HookStore`; a verified request is
//! kept by the `HookInbox` until a run is started from it
//! (`App::process_receipt`).

pub mod verify;

use serde_json::{Map, Value};

pub use verify::{Headers, TOLERANCE_SECS, VerifyError};

use crate::domain::limits::{MAX_VALUE_DEPTH, check_json};

/// Largest body a hook accepts: a verified request travels whole through
/// the queue that starts its run (an SQS message holds 256 KiB), with its
/// headers.
pub const MAX_BODY_BYTES: usize = 200 * 1024;
/// Largest a kept request may be, as JSON (what an SQS message holds,
/// less room for its attributes). A body full of characters JSON escapes
/// can reach it below `MAX_BODY_BYTES`.
pub const MAX_RECEIPT_BYTES: usize = 250 * 1024;
/// Largest the kept headers may be, in all.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most headers kept.
pub const MAX_HEADERS: usize = 100;

/// Headers that carry a credential of the hop (a proxy's, a browser's),
/// not of the message: never kept, so no run can read them.
const DROPPED: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "x-amz-security-token",
];

/// Whether a header of a request to a hook is kept (and can be checked).
pub fn is_kept_header(lower_name: &str) -> bool {
    !DROPPED.contains(&lower_name)
}

/// The request's headers as a run sees them: names in lower case, values
/// that are text, repeated ones joined with `, `; credentials left out.
pub fn headers_of(map: &axum::http::HeaderMap) -> Result<Headers, String> {
    let mut out = Headers::new();
    let mut bytes = 0;
    for (name, value) in map {
        let name = name.as_str();
        if DROPPED.contains(&name) {
            continue;
        }
        let Ok(v) = value.to_str() else {
            continue;
        };
        bytes += name.len() + v.len();
        if bytes > MAX_HEADER_BYTES {
            return Err(format!(
                "the request's headers are larger than {MAX_HEADER_BYTES} bytes"
            ));
        }
        out.entry(name.to_owned())
            .and_modify(|e: &mut String| {
                e.push_str(", ");
                e.push_str(v);
            })
            .or_insert_with(|| v.to_owned());
        if out.len() > MAX_HEADERS {
            return Err(format!("the request has more than {MAX_HEADERS} headers"));
        }
    }
    Ok(out)
}

/// The body as a value: JSON (by its content type, or when it has none and
/// parses), a form as an object of its fields, other text as a string.
pub fn body_value(headers: &Headers, body: &str) -> Result<Value, String> {
    let ct = headers.get("content-type").map(|c| {
        c.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    let json = |text: &str| -> Result<Value, String> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("the body is not valid JSON: {e}"))?;
        check_json(&v, MAX_BODY_BYTES * 2, MAX_VALUE_DEPTH)
            .map_err(|why| format!("the body {why}"))?;
        Ok(v)
    };
    match ct.as_deref() {
        _ if body.trim().is_empty() => Ok(Value::Null),
        Some(c) if c == "application/json" || c.ends_with("+json") => json(body),
        Some("application/x-www-form-urlencoded") => {
            let mut fields = Map::new();
            for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
                fields.insert(k.into_owned(), Value::String(v.into_owned()));
            }
            Ok(Value::Object(fields))
        }
        None => Ok(json(body).unwrap_or_else(|_| Value::String(body.to_owned()))),
        Some(_) => Ok(Value::String(body.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ct(c: &str) -> Headers {
        [("content-type".to_owned(), c.to_owned())].into()
    }

    #[test]
    fn bodies_are_read_by_their_content_type() {
        assert_eq!(
            body_value(&ct("application/json; charset=utf-8"), r#"{"a":1}"#),
            Ok(json!({"a": 1}))
        );
        assert_eq!(
            body_value(&ct("application/vnd.github+json"), "[1]"),
            Ok(json!([1]))
        );
        assert!(body_value(&ct("application/json"), "{").is_err());
        assert_eq!(
            body_value(&ct("application/x-www-form-urlencoded"), "a=1&b=x+y%21"),
            Ok(json!({"a": "1", "b": "x y!"}))
        );
        assert_eq!(
            body_value(&ct("text/plain"), "{\"a\":1}"),
            Ok(json!("{\"a\":1}"))
        );
        assert_eq!(
            body_value(&Headers::new(), r#"{"a":1}"#),
            Ok(json!({"a": 1}))
        );
        assert_eq!(body_value(&Headers::new(), "hello"), Ok(json!("hello")));
        assert_eq!(body_value(&ct("application/json"), "  "), Ok(Value::Null));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(body_value(&ct("application/json"), &deep).is_err());
    }

    #[test]
    fn credentials_of_the_hop_are_not_kept() {
        let mut map = axum::http::HeaderMap::new();
        map.insert(
            "Authorization",
            "Bearer x".parse().unwrap_or_else(|_| unreachable!()),
        );
        map.insert("Cookie", "a=b".parse().unwrap_or_else(|_| unreachable!()));
        map.insert(
            "X-GitHub-Event",
            "push".parse().unwrap_or_else(|_| unreachable!()),
        );
        map.append("X-Many", "1".parse().unwrap_or_else(|_| unreachable!()));
        map.append("X-Many", "2".parse().unwrap_or_else(|_| unreachable!()));
        let h = headers_of(&map).unwrap_or_default();
        assert_eq!(h.get("x-github-event").map(String::as_str), Some("push"));
        assert_eq!(h.get("x-many").map(String::as_str), Some("1, 2"));
        assert!(!h.contains_key("authorization") && !h.contains_key("cookie"));
    }
}
