//! `wait_for_event` steps: wait until an event of a name arrives whose
//! `match` holds (an expression over `event` and the run's `trigger` and
//! `run`), or until `timeout`; with `lookback`, an event that arrived up to
//! that long before the step began waiting counts too.

use super::triggers::{event_name, expression_of};
use super::*;

/// The fields a `wait_for_event` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &["event", "match", "lookback"];

/// The longest `lookback`: how long events are kept.
pub const MAX_LOOKBACK: std::time::Duration =
    std::time::Duration::from_secs(crate::ports::EVENT_KEEP_HOURS as u64 * 3600);

/// What a `match` expression may read.
const MATCH_NAMES: &[&str] = &["event", "trigger", "run"];

pub(super) fn parse_wait_for_event(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
) -> Option<WaitForEvent> {
    let event = event_name(p, obj, path, "a wait_for_event step", "it waits for");
    let matches = expression_of(
        p,
        obj,
        path,
        "match",
        MATCH_NAMES,
        "a `match` can read only `event`, `trigger` and `run`",
    );
    let lookback = match obj.get("lookback") {
        None | Some(Value::Null) => None,
        Some(v) => match super::parse_duration(v) {
            Ok(d) if d <= MAX_LOOKBACK => Some(d),
            Ok(_) => {
                p.err(
                    &path.key("lookback"),
                    "at most 24 hours (events are kept a day)",
                );
                None
            }
            Err(e) => {
                p.err(&path.key("lookback"), e);
                None
            }
        },
    };
    Some(WaitForEvent {
        event: event?,
        matches,
        lookback,
    })
}
