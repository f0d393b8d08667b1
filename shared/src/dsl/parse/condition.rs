//! `condition` steps: an expression choosing the `then` or `else` branch.

use super::*;

/// The fields a `condition` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &["expression", "then", "else"];

pub(super) fn parse_condition(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    refs: &mut Vec<Ref>,
) -> Option<Condition> {
    let expression = match obj.get("expression") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            p.err(
                &path.key("expression"),
                format!("expected an expression (string), found {}", kind(other)),
            );
            return None;
        }
        None => {
            p.err(path, "a condition step needs an `expression`");
            return None;
        }
    };
    expr_refs(p, &expression, &path.key("expression"), refs);
    let then_steps = id_list(p, obj, path, "then");
    let else_steps = id_list(p, obj, path, "else");
    if then_steps.is_empty() && else_steps.is_empty() {
        p.err(
            path,
            "a condition step needs `then` and/or `else`: the ids of the steps each branch runs",
        );
    }
    Some(Condition {
        expression,
        then_steps,
        else_steps,
    })
}
