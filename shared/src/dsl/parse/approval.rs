//! `approval` steps: wait for a person to complete them through the API.

use super::*;

/// The fields a `approval` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &["message"];

pub(super) fn parse_approval(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
) -> Option<Approval> {
    Some(Approval {
        message: opt_string(p, obj, path, "message"),
    })
}
