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
    let event = match obj.get("event") {
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
                "a trigger needs an `event`: the name of the events that start a run",
            );
            None
        }
    };
    let condition = match obj.get("if") {
        None | Some(Value::Null) => None,
        Some(Value::String(src)) => {
            let at = path.key("if");
            match template::expression_references(src) {
                Ok(names) => {
                    for n in names.iter().filter(|n| *n != "event") {
                        p.err(
                            &at,
                            format!("a trigger's condition can read only `event` (its `name`, `id` and `data`), not `{n}`"),
                        );
                    }
                }
                Err(e) => p.err(&at, format!("invalid expression: {e}")),
            }
            Some(src.clone())
        }
        Some(other) => {
            p.err(
                &path.key("if"),
                format!("expected an expression (string), found {}", kind(other)),
            );
            None
        }
    };
    Some(Trigger {
        event: event?,
        condition,
    })
}
