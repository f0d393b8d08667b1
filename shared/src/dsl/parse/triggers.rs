//! A workflow's `triggers`: the events that start a run of it, each with
//! an optional condition on the event (`{"event": "order.created", "if":
//! "event.data.total > 100"}`).

use super::*;

/// Most triggers a workflow may declare.
pub const MAX_TRIGGERS: usize = 20;
/// Longest event name.
pub const MAX_EVENT_NAME: usize = 128;

/// Whether `name` can name an event: 1-128 letters, digits and `.`, `_`,
/// `-`, `:` or `/`.
pub fn is_event_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_EVENT_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
}

pub(super) fn parse_triggers(p: &mut Parser, v: Option<&Value>, path: &Path) -> Vec<Trigger> {
    let items = match v {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(other) => {
            p.err(
                path,
                format!(
                    "expected an array of triggers such as [{{\"event\": \"order.created\"}}], found {}",
                    kind(other)
                ),
            );
            return Vec::new();
        }
    };
    if items.len() > MAX_TRIGGERS {
        p.err(
            path,
            format!(
                "the workflow has {} triggers; the limit is {MAX_TRIGGERS}",
                items.len()
            ),
        );
        return Vec::new();
    }
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| parse_trigger(p, v, &path.index(i)))
        .collect()
}

fn parse_trigger(p: &mut Parser, v: &Value, path: &Path) -> Option<Trigger> {
    let Some(obj) = v.as_object() else {
        p.err(
            path,
            format!(
                "expected a trigger such as {{\"event\": \"order.created\"}}, found {}",
                kind(v)
            ),
        );
        return None;
    };
    unknown_fields(p, obj, path, &["event", "if"], "trigger");
    let event = event_name(p, obj, path, "a trigger", "that start a run");
    let condition = expression_of(
        p,
        obj,
        path,
        "if",
        &["event"],
        "a trigger's condition can read only `event` (its `name`, `id` and `data`)",
    );
    Some(Trigger {
        event: event?,
        condition,
    })
}

/// The `event` field of `obj`: an event name (errors at its path; `who`
/// and `what` say what needs it, e.g. "a trigger", "that start a run").
pub(super) fn event_name(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    who: &str,
    what: &str,
) -> Option<String> {
    match obj.get("event") {
        Some(Value::String(s)) if is_event_name(s) => Some(s.clone()),
        Some(Value::String(s)) => {
            p.err(
                &path.key("event"),
                format!("`{s}` is not an event name: use 1-{MAX_EVENT_NAME} letters, digits, `.`, `_`, `-`, `:` or `/`"),
            );
            None
        }
        Some(other) => {
            p.err(
                &path.key("event"),
                format!("expected an event name (string), found {}", kind(other)),
            );
            None
        }
        None => {
            p.err(
                path,
                format!("{who} needs an `event`: the name of the events {what}"),
            );
            None
        }
    }
}

/// An optional expression in `field` of `obj` that may read only `names`
/// (`rule` says so when it reads another).
pub(super) fn expression_of(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    field: &str,
    names: &[&str],
    rule: &str,
) -> Option<String> {
    let at = path.key(field);
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(src)) => {
            match template::expression_references(src) {
                Ok(read) => {
                    for n in read.iter().filter(|n| !names.contains(&n.as_str())) {
                        p.err(&at, format!("{rule}, not `{n}`"));
                    }
                }
                Err(e) => p.err(&at, format!("invalid expression: {e}")),
            }
            Some(src.clone())
        }
        Some(other) => {
            p.err(
                &at,
                format!("expected an expression (string), found {}", kind(other)),
            );
            None
        }
    }
}
