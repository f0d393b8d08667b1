//! `wait_for_event` steps: wait until an event of a name arrives whose
//! `match` holds (an expression over `event` and the run's `trigger` and
//! `run`), or until `timeout`.

use super::triggers::{event_name, expression_of};
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
    let event = event_name(p, obj, path, "a wait_for_event step", "it waits for");
    let matches = expression_of(
        p,
        obj,
        path,
        "match",
        MATCH_NAMES,
        "a `match` can read only `event`, `trigger` and `run`",
    );
    Some(WaitForEvent {
        event: event?,
        matches,
    })
}
