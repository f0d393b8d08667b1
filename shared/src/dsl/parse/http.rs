//! `http` steps: one request per attempt, and where secrets may appear in it.

use super::*;

/// The fields a `http` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &["method", "url", "query", "headers", "body"];

pub(super) const HTTP_METHODS: &[&str] =
    &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

pub(super) fn parse_http(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    refs: &mut Vec<Ref>,
) -> Option<Http> {
    let method = match obj.get("method") {
        None | Some(Value::Null) => "GET".to_owned(),
        Some(Value::String(m)) if HTTP_METHODS.contains(&m.to_ascii_uppercase().as_str()) => {
            m.to_ascii_uppercase()
        }
        Some(other) => {
            p.err(
                &path.key("method"),
                format!("expected one of {}, found {other}", HTTP_METHODS.join(", ")),
            );
            return None;
        }
    };
    let url = match obj.get("url") {
        Some(Value::String(u)) => u.clone(),
        Some(other) => {
            p.err(
                &path.key("url"),
                format!("expected a URL (string), found {}", kind(other)),
            );
            return None;
        }
        None => {
            p.err(path, "an http step needs a `url`");
            return None;
        }
    };
    if !(template::is_template(&url) || url.starts_with("http://") || url.starts_with("https://")) {
        p.err(
            &path.key("url"),
            format!("`{url}` is not an http:// or https:// URL"),
        );
    }
    collect_refs(p, &Value::String(url.clone()), &path.key("url"), refs);
    let mut object_field = |field: &str| -> Value {
        let v = obj.get(field).cloned().unwrap_or(Value::Null);
        match &v {
            Value::Null | Value::Object(_) => {}
            Value::String(s) if template::is_template(s) => {}
            other => p.err(
                &path.key(field),
                format!(
                    "expected an object of names to values, found {}",
                    kind(other)
                ),
            ),
        }
        collect_refs(p, &v, &path.key(field), refs);
        v
    };
    let query = object_field("query");
    let headers = object_field("headers");
    if let Value::Object(h) = &headers {
        for k in h.keys() {
            if crate::adapters::http::RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                p.err(
                    &path.key("headers").key(k),
                    format!("the header `{k}` is set by Weft, not by a step"),
                );
            }
        }
    }
    let body = obj.get("body").cloned();
    if let Some(b) = &body {
        collect_refs(p, b, &path.key("body"), refs);
    }
    let mut secrets = Vec::new();
    let url_value = Value::String(url.clone());
    for (field, v) in [
        ("url", Some(&url_value)),
        ("query", Some(&query)),
        ("headers", Some(&headers)),
        ("body", body.as_ref()),
    ] {
        if let Some(v) = v {
            let at = vec![PathSeg::Key(field.to_owned())];
            secret_slots(p, v, &path.key(field), at, &mut secrets);
        }
    }
    if !secrets.is_empty() && !names_its_origin(&url) {
        p.err(
            &path.key("url"),
            "a step that sends secrets must name where they go: begin its url with the scheme and host, literally (https://api.example.com/...), so no run data can choose the destination",
        );
    }
    Some(Http {
        method,
        url,
        query,
        headers,
        body,
        secrets,
    })
}

/// True if a URL's scheme, host and port are written out, before any
/// template: what comes from run data can then only add to its path.
pub(super) fn names_its_origin(url: &str) -> bool {
    let literal = url.find(['{', '%']).map_or(url, |i| &url[..i]);
    let Some(rest) = literal
        .strip_prefix("https://")
        .or_else(|| literal.strip_prefix("http://"))
    else {
        return false;
    };
    // The authority must end, within the literal part, at `/`, `?` or the
    // end of a URL with no template at all.
    let authority_end = rest.find(['/', '?', '#']);
    let authority = match authority_end {
        Some(i) => &rest[..i],
        None if literal.len() == url.len() => rest,
        None => return false,
    };
    !authority.is_empty() && !authority.contains('@')
}

/// The strings of an http request field that insert secrets. (Secrets used
/// any other way are reported where references are collected.)
pub(super) fn secret_slots(
    p: &mut Parser,
    v: &Value,
    path: &Path,
    at: Vec<PathSeg>,
    out: &mut Vec<SecretSlot>,
) {
    match v {
        Value::String(s) => {
            let Ok(Some(parts)) = template::secret_parts(s) else {
                return;
            };
            if at.len() == 1 && matches!(&at[0], PathSeg::Key(k) if k == "query" || k == "headers")
            {
                p.err(
                    path,
                    "a secret can be the value of a query parameter or a header, not the whole field",
                );
                return;
            }
            for part in &parts {
                if let template::Part::Secret(name) = part
                    && !is_secret_name(name)
                {
                    p.err(path, format!("`{name}` is not a valid secret name: use 1-64 letters, digits or `_`, starting with a letter or `_`"));
                }
            }
            out.push(SecretSlot { path: at, parts });
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut next = at.clone();
                next.push(PathSeg::Index(i));
                secret_slots(p, item, &path.index(i), next, out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let mut next = at.clone();
                next.push(PathSeg::Key(k.clone()));
                secret_slots(p, item, &path.key(k), next, out);
            }
        }
        _ => {}
    }
}

/// Names a secret may have (the API refuses others).
pub fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}
