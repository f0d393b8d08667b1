//! `delay` steps: wait for a duration or until a time.

use super::*;

/// The fields a `delay` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &["duration", "until"];

pub(super) fn parse_delay(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    refs: &mut Vec<Ref>,
) -> Option<Delay> {
    match (obj.get("duration"), obj.get("until")) {
        (Some(d), None) => match parse_duration(d) {
            Ok(d) => Some(Delay::For(d)),
            Err(e) => {
                p.err(&path.key("duration"), e);
                None
            }
        },
        (None, Some(Value::String(u))) => {
            if template::is_template(u) {
                collect_refs(p, &Value::String(u.clone()), &path.key("until"), refs);
            } else if chrono::DateTime::parse_from_rfc3339(u).is_err() {
                p.err(
                    &path.key("until"),
                    format!("`{u}` is not an RFC 3339 timestamp such as 2026-01-31T09:00:00Z"),
                );
            }
            Some(Delay::Until(u.clone()))
        }
        (None, Some(other)) => {
            p.err(
                &path.key("until"),
                format!(
                    "expected an RFC 3339 timestamp (string), found {}",
                    kind(other)
                ),
            );
            None
        }
        (Some(_), Some(_)) => {
            p.err(path, "give either `duration` or `until`, not both");
            None
        }
        (None, None) => {
            p.err(
                path,
                "a delay step needs `duration` (e.g. \"10m\") or `until` (a timestamp)",
            );
            None
        }
    }
}
