//! `map` steps: the same step(s) over each item of a list.

use super::*;

/// The fields a `map` step may have besides the common ones.
pub(super) const FIELDS: &[&str] = &["items", "concurrency", "step", "steps", "output"];

pub(super) fn parse_map(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    refs: &mut Vec<Ref>,
    subs: &mut Vec<Parsed>,
    inner_refs: &mut Vec<Ref>,
) -> Option<Map> {
    let Some(items) = obj.get("items").cloned() else {
        p.err(
            path,
            "a map step needs `items`: a template producing a list, e.g. \"{{ trigger.rows }}\"",
        );
        return None;
    };
    match &items {
        Value::Array(_) => {}
        Value::String(s) if template::is_template(s) => {}
        other => {
            p.err(
                &path.key("items"),
                format!(
                    "expected a list or a template producing one, found {}",
                    kind(other)
                ),
            );
        }
    }
    collect_refs(p, &items, &path.key("items"), refs);
    let concurrency = match obj.get("concurrency") {
        None | Some(Value::Null) => 10,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_MAP_CONCURRENCY as u64).contains(&n) => n as usize,
            _ => {
                p.err(
                    &path.key("concurrency"),
                    format!("expected a whole number from 1 to {MAX_MAP_CONCURRENCY}"),
                );
                1
            }
        },
    };
    match (obj.get("step"), obj.get("steps")) {
        (Some(one), None) => {
            if let Some(s) = parse_step(p, one, &path.key("step")) {
                subs.push(s);
            }
        }
        (None, Some(Value::Array(items))) if !items.is_empty() => {
            subs.extend(parse_steps(p, items, &path.key("steps")));
        }
        (None, Some(_)) => p.err(&path.key("steps"), "expected a non-empty array of steps"),
        (Some(_), Some(_)) => p.err(path, "give either `step` or `steps`, not both"),
        (None, None) => p.err(
            path,
            "a map step needs `step` (one step) or `steps` (a sub-graph) to run for each item",
        ),
    }
    let output = obj.get("output").cloned();
    if let Some(o) = &output {
        collect_refs(p, o, &path.key("output"), inner_refs);
    }
    Some(Map {
        items,
        concurrency,
        steps: Vec::new(),
        output,
        output_reads: inner_refs.iter().map(|r| r.name.clone()).collect(),
    })
}
