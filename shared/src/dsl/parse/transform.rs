//! `transform` steps: values built from templates, or an action over them.

use super::*;

/// The fields a `transform` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &["action", "inputs", "value", "expression"];

pub(super) fn parse_transform(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    refs: &mut Vec<Ref>,
) -> Option<Transform> {
    let inputs = obj
        .get("inputs")
        .or_else(|| obj.get("value"))
        .cloned()
        .unwrap_or(Value::Null);
    let inputs_path = if obj.contains_key("inputs") {
        path.key("inputs")
    } else {
        path.key("value")
    };
    collect_refs(p, &inputs, &inputs_path, refs);
    let expression = opt_string(p, obj, path, "expression");
    if let Some(e) = &expression {
        expr_refs(p, e, &path.key("expression"), refs);
    }
    let action = match (obj.get("action").and_then(Value::as_str), expression) {
        (None | Some("expression"), Some(e)) => TransformAction::Expression(e),
        (Some("expression"), None) => {
            p.err(path, "action `expression` needs an `expression` field");
            return None;
        }
        (None | Some("template"), None) => TransformAction::Template,
        (Some("extract_json"), None) => TransformAction::ExtractJson,
        (Some("parse_json"), None) => TransformAction::ParseJson,
        (Some(a @ ("template" | "extract_json" | "parse_json")), Some(_)) => {
            p.err(
                &path.key("expression"),
                format!("`expression` cannot be combined with action `{a}`"),
            );
            return None;
        }
        (Some(other), _) => {
            p.err(&path.key("action"), format!("unknown transform action `{other}`; expected one of template, extract_json, parse_json, expression"));
            return None;
        }
    };
    if matches!(
        action,
        TransformAction::ExtractJson | TransformAction::ParseJson
    ) && inputs.get("text").is_none()
    {
        p.err(
            &inputs_path,
            "this action reads `inputs.text`; add a `text` input",
        );
    }
    if obj.get("action").is_some_and(|a| !a.is_string()) {
        p.err(&path.key("action"), "expected a string");
    }
    Some(Transform { action, inputs })
}
