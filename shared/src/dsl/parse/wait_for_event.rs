//! `wait_for_event` steps: wait until an event of a name arrives whose
//! `match` holds (an expression over `event` and the run's `trigger` and
//! `run`), or until `timeout`.

use super::triggers::{MAX_EVENT_NAME, is_event_name};
use super::*;

/// The fields a `wait_for_event` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &["event", "match"];

/// What a `match` expression may read.
const MATCH_NAMES: &[&str] = &["event", "trigger", "run"];

pub(super) fn parse_wait_for_event(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
) -> Option<WaitForEvent> {
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
                "a wait_for_event step needs an `event`: the name of the event it waits for",
            );
            None
        }
    };
    let matches = match obj.get("match") {
        None | Some(Value::Null) => None,
        Some(Value::String(src)) => {
            let at = path.key("match");
            match template::expression_references(src) {
                Ok(names) => {
                    for n in names.iter().filter(|n| !MATCH_NAMES.contains(&n.as_str())) {
                        p.err(
                            &at,
                            format!(
                                "a `match` can read only `event`, `trigger` and `run`, not `{n}`"
                            ),
                        );
                    }
                }
                Err(e) => p.err(&at, format!("invalid expression: {e}")),
            }
            Some(src.clone())
        }
        Some(other) => {
            p.err(
                &path.key("match"),
                format!("expected an expression (string), found {}", kind(other)),
            );
            None
        }
    };
    Some(WaitForEvent {
        event: event?,
        matches,
    })
}
