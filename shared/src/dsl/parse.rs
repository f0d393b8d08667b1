//! Turns a JSON definition into a `Workflow`, collecting every problem with its
//! path instead of stopping at the first.

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map as JsonMap, Value};

use super::definition::*;
use super::duration::{kind, parse_duration};
use super::graph::{Ref, resolve_scope};
use super::path::{Path, ValidationError};
use crate::domain::ids::is_valid_user_id;
use crate::template;

/// Largest definition accepted, in bytes of JSON.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
/// Most steps a definition may hold, counting steps inside maps.
pub const MAX_STEPS: usize = 1000;
/// Highest concurrency a map step may ask for.
pub const MAX_MAP_CONCURRENCY: usize = 1000;
/// Most attempts a retry policy may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

/// Names that templates use for things other than steps.
pub const RESERVED_NAMES: &[&str] = &[
    "trigger", "run", "item", "index", "secrets", "env", "workflow",
];

const TOP_FIELDS: &[&str] = &[
    "id",
    "name",
    "version",
    "description",
    "steps",
    "output",
    "input_schema",
    "metadata",
    "budget_usd",
];
const COMMON_FIELDS: &[&str] = &[
    "id",
    "type",
    "name",
    "description",
    "depends_on",
    "if",
    "retry",
    "timeout",
    "continue_on_error",
];

/// A step as parsed, before references are resolved into dependencies.
pub(super) struct Parsed {
    pub step: Step,
    pub path: Path,
    pub refs: Vec<Ref>,
    pub subs: Vec<Parsed>,
    /// References of a map's `output` template: resolved in the iteration's
    /// scope, but they order nothing.
    pub inner_refs: Vec<Ref>,
}

struct Parser {
    errors: Vec<ValidationError>,
    count: usize,
}

impl Parser {
    fn err(&mut self, path: &Path, msg: impl Into<String>) {
        self.errors.push(ValidationError::new(path, msg));
    }
}

/// Parses and validates a workflow definition.
pub fn parse_workflow(v: &Value) -> Result<Workflow, Vec<ValidationError>> {
    let root = Path::root();
    let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if size > MAX_DEFINITION_BYTES {
        return Err(vec![ValidationError::new(
            &root,
            format!("the definition is {size} bytes; the limit is {MAX_DEFINITION_BYTES}"),
        )]);
    }
    let Some(obj) = v.as_object() else {
        return Err(vec![ValidationError::new(
            &root,
            format!(
                "a workflow definition must be a JSON object, found {}",
                kind(v)
            ),
        )]);
    };
    let mut p = Parser {
        errors: Vec::new(),
        count: 0,
    };
    unknown_fields(&mut p, obj, &root, TOP_FIELDS, "workflow");

    let id = opt_string(&mut p, obj, &root, "id");
    if let Some(id) = &id
        && !is_valid_user_id(id)
    {
        p.err(&root.key("id"), format!("`{id}` is not a valid id: use 1-64 letters, digits, `_` or `-`, starting with a letter or `_`"));
    }
    let name = opt_string(&mut p, obj, &root, "name");
    if name.is_none() && id.is_none() {
        p.err(&root.key("name"), "a workflow needs a `name` (or an `id`)");
    }
    let label = match obj.get("version") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            p.err(
                &root.key("version"),
                format!("expected a version label (string), found {}", kind(other)),
            );
            None
        }
    };
    let description = opt_string(&mut p, obj, &root, "description");

    let input_schema = obj.get("input_schema").cloned();
    if let Some(schema) = &input_schema
        && let Err(e) = jsonschema::validator_for(schema)
    {
        p.err(
            &root.key("input_schema"),
            format!("not a valid JSON Schema: {e}"),
        );
    }

    let budget_usd = budget_usd(obj.get("budget_usd")).unwrap_or_else(|e| {
        p.err(&root.key("budget_usd"), e);
        None
    });

    let steps_path = root.key("steps");
    let mut parsed = match obj.get("steps") {
        Some(Value::Array(items)) if !items.is_empty() => parse_steps(&mut p, items, &steps_path),
        Some(Value::Array(_)) => {
            p.err(&steps_path, "a workflow needs at least one step");
            Vec::new()
        }
        Some(other) => {
            p.err(
                &steps_path,
                format!("expected an array of steps, found {}", kind(other)),
            );
            Vec::new()
        }
        None => {
            p.err(&steps_path, "missing required field `steps`");
            Vec::new()
        }
    };
    if p.count > MAX_STEPS {
        p.err(
            &steps_path,
            format!(
                "the workflow has {} steps; the limit is {MAX_STEPS}",
                p.count
            ),
        );
    }

    let output = obj.get("output").cloned();
    let mut output_refs = Vec::new();
    if let Some(out) = &output {
        collect_refs(&mut p, out, &root.key("output"), &mut output_refs);
    }

    // Ids are unique across the whole definition, so a template name always
    // means one step.
    let mut scopes: HashMap<String, Vec<String>> = HashMap::new();
    check_ids(&mut p, &parsed, &[], &mut scopes);

    let escaped = resolve_scope(&mut parsed, &[], &scopes, &mut p.errors);
    debug_assert!(escaped.is_empty());
    for r in &output_refs {
        match scopes.get(&r.name) {
            Some(scope) if scope.is_empty() => {}
            Some(scope) => p.err(
                &r.path,
                format!(
                    "`{}` runs inside map `{}`; use that map's output instead",
                    r.name, scope[0]
                ),
            ),
            None if r.name == "trigger" || r.name == "run" => {}
            None if r.name == "secrets" => p.err(&r.path, super::graph::SECRETS_ONLY_IN_HTTP),
            None => p.err(&r.path, format!("references unknown step `{}`", r.name)),
        }
    }

    if !p.errors.is_empty() {
        return Err(p.errors);
    }
    Ok(Workflow {
        name: name.or_else(|| id.clone()).unwrap_or_default(),
        id,
        description,
        label,
        steps: parsed.into_iter().map(Parsed::into_step).collect(),
        output,
        input_schema,
        budget_usd,
    })
}

impl Parsed {
    pub(super) fn into_step(self) -> Step {
        let mut step = self.step;
        if let StepKind::Map(map) = &mut step.kind {
            map.steps = self.subs.into_iter().map(Parsed::into_step).collect();
        }
        step
    }
}

fn check_ids(
    p: &mut Parser,
    steps: &[Parsed],
    scope: &[String],
    seen: &mut HashMap<String, Vec<String>>,
) {
    for s in steps {
        let id = &s.step.id;
        if id.is_empty() {
            continue;
        }
        if RESERVED_NAMES.contains(&id.as_str()) {
            p.err(
                &s.path.key("id"),
                format!("`{id}` is a reserved name; choose another step id"),
            );
        } else if seen.contains_key(id) {
            p.err(&s.path.key("id"), format!("duplicate step id `{id}`"));
        } else {
            seen.insert(id.clone(), scope.to_vec());
        }
        if !s.subs.is_empty() {
            let mut inner = scope.to_vec();
            inner.push(id.clone());
            check_ids(p, &s.subs, &inner, seen);
        }
    }
}

fn parse_steps(p: &mut Parser, items: &[Value], path: &Path) -> Vec<Parsed> {
    items
        .iter()
        .enumerate()
        .filter_map(|(i, v)| parse_step(p, v, &path.index(i)))
        .collect()
}

fn parse_step(p: &mut Parser, v: &Value, path: &Path) -> Option<Parsed> {
    p.count += 1;
    let Some(obj) = v.as_object() else {
        p.err(path, format!("a step must be an object, found {}", kind(v)));
        return None;
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if is_valid_user_id(s) => s.clone(),
        Some(Value::String(s)) => {
            p.err(&path.key("id"), format!("`{s}` is not a valid step id: use 1-64 letters, digits, `_` or `-`, starting with a letter or `_`"));
            String::new()
        }
        Some(other) => {
            p.err(
                &path.key("id"),
                format!("expected a string, found {}", kind(other)),
            );
            String::new()
        }
        None => {
            p.err(path, "missing required field `id`");
            String::new()
        }
    };
    let type_name = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            p.err(
                &path.key("type"),
                format!("expected a string, found {}", kind(other)),
            );
            return None;
        }
        None => {
            p.err(path, "missing required field `type`");
            return None;
        }
    };

    let mut refs = Vec::new();
    let mut subs = Vec::new();
    let mut inner_refs = Vec::new();
    let kind = match type_name {
        "transform" | "transformation" => {
            parse_transform(p, obj, path, &mut refs).map(StepKind::Transform)
        }
        "condition" => parse_condition(p, obj, path, &mut refs).map(StepKind::Condition),
        "map" | "loop" | "foreach" => {
            parse_map(p, obj, path, &mut refs, &mut subs, &mut inner_refs).map(StepKind::Map)
        }
        "delay" | "sleep" => parse_delay(p, obj, path, &mut refs).map(StepKind::Delay),
        "approval" => parse_approval(p, obj, path).map(StepKind::Approval),
        "http" => parse_http(p, obj, path, &mut refs).map(StepKind::Http),
        "llm" => parse_llm(p, obj, path, &mut refs).map(StepKind::Llm),
        "integration" => {
            let service = obj.get("service").and_then(Value::as_str).unwrap_or("");
            if service.is_empty() {
                p.err(
                    &path.key("service"),
                    "an integration step needs a `service` (the connector to use)",
                );
            } else {
                p.err(&path.key("service"), format!("unknown connector `{service}`: no integration connectors are installed on this server"));
            }
            None
        }
        other => {
            p.err(&path.key("type"), format!("unknown step type `{other}`; expected one of transform, condition, map, delay, approval, http, llm"));
            None
        }
    };

    let mut depends_on = Vec::new();
    match obj.get("depends_on") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, d) in items.iter().enumerate() {
                match d.as_str() {
                    Some(s) => {
                        refs.push(Ref {
                            name: s.to_owned(),
                            path: path.key("depends_on").index(i),
                            explicit: true,
                        });
                        depends_on.push(s.to_owned());
                    }
                    None => p.err(
                        &path.key("depends_on").index(i),
                        format!("expected a step id, found {}", super::duration::kind(d)),
                    ),
                }
            }
        }
        Some(Value::String(s)) => {
            refs.push(Ref {
                name: s.clone(),
                path: path.key("depends_on"),
                explicit: true,
            });
            depends_on.push(s.clone());
        }
        Some(other) => p.err(
            &path.key("depends_on"),
            format!(
                "expected an array of step ids, found {}",
                super::duration::kind(other)
            ),
        ),
    }

    let when = match obj.get("if") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            expr_refs(p, s, &path.key("if"), &mut refs);
            Some(s.clone())
        }
        Some(Value::Bool(b)) => Some(b.to_string()),
        Some(other) => {
            p.err(
                &path.key("if"),
                format!(
                    "expected an expression (string), found {}",
                    super::duration::kind(other)
                ),
            );
            None
        }
    };
    let retry = parse_retry(p, obj.get("retry"), &path.key("retry"));
    let timeout = obj.get("timeout").and_then(|t| match parse_duration(t) {
        Ok(d) => Some(d),
        Err(e) => {
            p.err(&path.key("timeout"), e);
            None
        }
    });
    let continue_on_error = match obj.get("continue_on_error") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            p.err(
                &path.key("continue_on_error"),
                format!(
                    "expected true or false, found {}",
                    super::duration::kind(other)
                ),
            );
            false
        }
    };

    // A step whose type-specific part failed (its problems are listed)
    // still takes part in the id and reference checks, so those problems
    // are listed too; the definition is refused either way.
    let kind = match kind {
        Some(kind) => {
            let allowed: Vec<&str> = COMMON_FIELDS
                .iter()
                .chain(type_fields(&kind))
                .copied()
                .collect();
            unknown_fields(
                p,
                obj,
                path,
                &allowed,
                &format!("{} step", kind.type_name()),
            );
            kind
        }
        None => StepKind::Transform(Transform {
            action: TransformAction::Template,
            inputs: Value::Null,
        }),
    };

    if let Some(t) = timeout
        && let Some(max) = max_timeout(&kind)
        && t > max
    {
        p.err(
            &path.key("timeout"),
            format!(
                "an attempt of a `{}` step may take at most {}s (it runs in one function call)",
                kind.type_name(),
                max.as_secs()
            ),
        );
    }

    Some(Parsed {
        step: Step {
            id,
            kind,
            depends_on,
            when,
            branch: None,
            retry,
            timeout,
            continue_on_error,
            reads: refs
                .iter()
                .filter(|r| !r.explicit)
                .map(|r| r.name.clone())
                .collect(),
        },
        path: path.clone(),
        refs,
        subs,
        inner_refs,
    })
}

/// Longest timeout of a step whose attempt is one call of a function (on
/// AWS, the step functions' own timeouts are a little longer); an I/O slot
/// is held no longer than this.
fn max_timeout(kind: &StepKind) -> Option<std::time::Duration> {
    match kind {
        StepKind::Http(_) => Some(std::time::Duration::from_secs(300)),
        StepKind::Llm(_) => Some(std::time::Duration::from_secs(840)),
        _ => None,
    }
}

fn type_fields(kind: &StepKind) -> &'static [&'static str] {
    match kind {
        StepKind::Transform(_) => &["action", "inputs", "value", "expression"],
        StepKind::Condition(_) => &["expression", "then", "else"],
        StepKind::Map(_) => &["items", "concurrency", "step", "steps", "output"],
        StepKind::Delay(_) => &["duration", "until"],
        StepKind::Approval(_) => &["message"],
        StepKind::Http(_) => &["method", "url", "query", "headers", "body"],
        StepKind::Llm(_) => &[
            "provider",
            "model",
            "prompt",
            "messages",
            "system",
            "temperature",
            "max_tokens",
            "json",
            "fallback",
            "retry_model",
            "inputs",
            "cache",
        ],
    }
}

fn unknown_fields(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    allowed: &[&str],
    what: &str,
) {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            p.err(
                &path.key(k),
                format!(
                    "unknown field `{k}` for a {what}; expected one of {}",
                    allowed.join(", ")
                ),
            );
        }
    }
}

fn opt_string(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    field: &str,
) -> Option<String> {
    match obj.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            p.err(
                &path.key(field),
                format!("expected a string, found {}", kind(other)),
            );
            None
        }
    }
}

fn collect_refs(p: &mut Parser, v: &Value, path: &Path, refs: &mut Vec<Ref>) {
    match v {
        Value::String(s) if template::is_template(s) => match template::template_references(s) {
            Ok(names) => refs.extend(names.into_iter().map(|name| Ref {
                name,
                path: path.clone(),
                explicit: false,
            })),
            Err(e) => p.err(path, format!("invalid template: {e}")),
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_refs(p, item, &path.index(i), refs);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                collect_refs(p, item, &path.key(k), refs);
            }
        }
        _ => {}
    }
}

fn expr_refs(p: &mut Parser, src: &str, path: &Path, refs: &mut Vec<Ref>) {
    match template::expression_references(src) {
        Ok(names) => refs.extend(names.into_iter().map(|name| Ref {
            name,
            path: path.clone(),
            explicit: false,
        })),
        Err(e) => p.err(path, format!("invalid expression: {e}")),
    }
}

fn parse_transform(
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

fn id_list(p: &mut Parser, obj: &JsonMap<String, Value>, path: &Path, field: &str) -> Vec<String> {
    match obj.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| match v.as_str() {
                Some(s) => Some(s.to_owned()),
                None => {
                    p.err(
                        &path.key(field).index(i),
                        format!("expected a step id, found {}", kind(v)),
                    );
                    None
                }
            })
            .collect(),
        Some(other) => {
            p.err(
                &path.key(field),
                format!("expected an array of step ids, found {}", kind(other)),
            );
            Vec::new()
        }
    }
}

fn parse_condition(
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

fn parse_map(
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

fn parse_delay(
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

const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

fn parse_http(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    refs: &mut Vec<Ref>,
) -> Option<Http> {
    let method = match obj.get("method") {
        None | Some(Value::Null) => "GET".to_owned(),
        Some(Value::String(m)) if HTTP_METHODS.contains(&m.to_ascii_uppercase().as_str()) => {
            m.to_ascii_uppercase()
        }
        Some(other) => {
            p.err(
                &path.key("method"),
                format!("expected one of {}, found {other}", HTTP_METHODS.join(", ")),
            );
            return None;
        }
    };
    let url = match obj.get("url") {
        Some(Value::String(u)) => u.clone(),
        Some(other) => {
            p.err(
                &path.key("url"),
                format!("expected a URL (string), found {}", kind(other)),
            );
            return None;
        }
        None => {
            p.err(path, "an http step needs a `url`");
            return None;
        }
    };
    if !(template::is_template(&url) || url.starts_with("http://") || url.starts_with("https://")) {
        p.err(
            &path.key("url"),
            format!("`{url}` is not an http:// or https:// URL"),
        );
    }
    collect_refs(p, &Value::String(url.clone()), &path.key("url"), refs);
    let mut object_field = |field: &str| -> Value {
        let v = obj.get(field).cloned().unwrap_or(Value::Null);
        match &v {
            Value::Null | Value::Object(_) => {}
            Value::String(s) if template::is_template(s) => {}
            other => p.err(
                &path.key(field),
                format!(
                    "expected an object of names to values, found {}",
                    kind(other)
                ),
            ),
        }
        collect_refs(p, &v, &path.key(field), refs);
        v
    };
    let query = object_field("query");
    let headers = object_field("headers");
    if let Value::Object(h) = &headers {
        for k in h.keys() {
            if crate::adapters::http::RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
                p.err(
                    &path.key("headers").key(k),
                    format!("the header `{k}` is set by Weft, not by a step"),
                );
            }
        }
    }
    let body = obj.get("body").cloned();
    if let Some(b) = &body {
        collect_refs(p, b, &path.key("body"), refs);
    }
    let mut secrets = Vec::new();
    let url_value = Value::String(url.clone());
    for (field, v) in [
        ("url", Some(&url_value)),
        ("query", Some(&query)),
        ("headers", Some(&headers)),
        ("body", body.as_ref()),
    ] {
        if let Some(v) = v {
            let at = vec![PathSeg::Key(field.to_owned())];
            secret_slots(p, v, &path.key(field), at, &mut secrets);
        }
    }
    if !secrets.is_empty() && !names_its_origin(&url) {
        p.err(
            &path.key("url"),
            "a step that sends secrets must name where they go: begin its url with the scheme and host, literally (https://api.example.com/...), so no run data can choose the destination",
        );
    }
    Some(Http {
        method,
        url,
        query,
        headers,
        body,
        secrets,
    })
}

/// True if a URL's scheme, host and port are written out, before any
/// template: what comes from run data can then only add to its path.
fn names_its_origin(url: &str) -> bool {
    let literal = url.find(['{', '%']).map_or(url, |i| &url[..i]);
    let Some(rest) = literal
        .strip_prefix("https://")
        .or_else(|| literal.strip_prefix("http://"))
    else {
        return false;
    };
    // The authority must end, within the literal part, at `/`, `?` or the
    // end of a URL with no template at all.
    let authority_end = rest.find(['/', '?', '#']);
    let authority = match authority_end {
        Some(i) => &rest[..i],
        None if literal.len() == url.len() => rest,
        None => return false,
    };
    !authority.is_empty() && !authority.contains('@')
}

/// The strings of an http request field that insert secrets. (Secrets used
/// any other way are reported where references are collected.)
fn secret_slots(
    p: &mut Parser,
    v: &Value,
    path: &Path,
    at: Vec<PathSeg>,
    out: &mut Vec<SecretSlot>,
) {
    match v {
        Value::String(s) => {
            let Ok(Some(parts)) = template::secret_parts(s) else {
                return;
            };
            if at.len() == 1 && matches!(&at[0], PathSeg::Key(k) if k == "query" || k == "headers")
            {
                p.err(
                    path,
                    "a secret can be the value of a query parameter or a header, not the whole field",
                );
                return;
            }
            for part in &parts {
                if let template::Part::Secret(name) = part
                    && !is_secret_name(name)
                {
                    p.err(path, format!("`{name}` is not a valid secret name: use 1-64 letters, digits or `_`, starting with a letter or `_`"));
                }
            }
            out.push(SecretSlot { path: at, parts });
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let mut next = at.clone();
                next.push(PathSeg::Index(i));
                secret_slots(p, item, &path.index(i), next, out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                let mut next = at.clone();
                next.push(PathSeg::Key(k.clone()));
                secret_slots(p, item, &path.key(k), next, out);
            }
        }
        _ => {}
    }
}

/// Names a secret may have (the API refuses others).
pub fn is_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
}

/// Providers an `llm` step can name.
pub const LLM_PROVIDERS: &[&str] = &["openai", "anthropic", "gemini"];
/// Largest per-run budget a workflow may set.
pub const MAX_BUDGET_USD: f64 = 1_000_000.0;
/// Longest an LLM result may be cached.
pub const MAX_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// A run's spending cap, as a workflow or a run start gives it.
pub fn budget_usd(v: Option<&Value>) -> Result<Option<f64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|b| *b > 0.0 && *b <= MAX_BUDGET_USD)
            .map(Some)
            .ok_or_else(|| {
                format!("expected an amount in USD above 0 and at most {MAX_BUDGET_USD}")
            }),
    }
}

const MODEL_NAME_RULE: &str = "expected a model name such as \"gpt-4o-mini\": 1-128 letters, digits and `.` `_` `-` `:` `/` `@`, with no `..`";

/// What a model name may look like: what providers use (`gpt-4o-mini`,
/// `llama3.1:8b`, `meta-llama/llama-4-scout`), and nothing that could
/// change a URL it is put in.
pub fn is_model_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.contains("..")
        && !s.starts_with('/')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '@'))
}

/// What a provider name may look like: built-in providers and those an
/// operator adds (OpenAI-compatible endpoints named in `WEFT_LLM_PROVIDERS`)
/// share one name space.
pub fn is_provider_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn provider_field(p: &mut Parser, v: Option<&Value>, path: &Path) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_provider_name(s) => Some(s.clone()),
        Some(other) => {
            p.err(
                path,
                format!(
                    "{other} is not a provider name; expected {} or the name of a provider the server adds (lowercase letters, digits, `_`, `-`)",
                    LLM_PROVIDERS.join(", ")
                ),
            );
            None
        }
    }
}

fn parse_llm(
    p: &mut Parser,
    obj: &JsonMap<String, Value>,
    path: &Path,
    refs: &mut Vec<Ref>,
) -> Option<Llm> {
    let provider = provider_field(p, obj.get("provider"), &path.key("provider"));
    let model = match obj.get("model") {
        Some(Value::String(m)) if is_model_name(m) => m.clone(),
        Some(_) => {
            p.err(&path.key("model"), MODEL_NAME_RULE);
            return None;
        }
        None => {
            p.err(path, "an llm step needs a `model`");
            return None;
        }
    };
    let messages = match (obj.get("prompt"), obj.get("messages")) {
        (Some(Value::String(prompt)), None) => {
            serde_json::json!([{"role": "user", "content": prompt}])
        }
        (None, Some(m @ Value::Array(_))) => m.clone(),
        (None, Some(Value::String(t))) if template::is_template(t) => Value::String(t.clone()),
        (Some(_), Some(_)) => {
            p.err(path, "give either `prompt` or `messages`, not both");
            return None;
        }
        (None, None) => {
            p.err(path, "an llm step needs a `prompt` (or `messages`)");
            return None;
        }
        (Some(_), None) => {
            p.err(&path.key("prompt"), "expected a string");
            return None;
        }
        (None, Some(_)) => {
            p.err(
                &path.key("messages"),
                "expected a list of {\"role\", \"content\"} objects",
            );
            return None;
        }
    };
    let messages_path = if obj.contains_key("prompt") {
        path.key("prompt")
    } else {
        path.key("messages")
    };
    collect_refs(p, &messages, &messages_path, refs);
    let system = opt_string(p, obj, path, "system");
    if let Some(sys) = &system {
        collect_refs(p, &Value::String(sys.clone()), &path.key("system"), refs);
    }
    let temperature = match obj.get("temperature") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_f64() {
            Some(t) if (0.0..=2.0).contains(&t) => Some(t),
            _ => {
                p.err(&path.key("temperature"), "expected a number from 0 to 2");
                None
            }
        },
    };
    let max_tokens = match obj.get("max_tokens") {
        None | Some(Value::Null) => 1024,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=200_000).contains(&n) => n as u32,
            _ => {
                p.err(
                    &path.key("max_tokens"),
                    "expected a whole number from 1 to 200000",
                );
                1024
            }
        },
    };
    let json = match obj.get("json") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            p.err(&path.key("json"), "expected true or false");
            false
        }
    };
    let mut fallback = Vec::new();
    match obj.get("fallback") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = path.key("fallback").index(i);
                match item {
                    Value::Object(m) => match m.get("model").and_then(Value::as_str) {
                        Some(model) if !is_model_name(model) => {
                            p.err(&at.key("model"), MODEL_NAME_RULE);
                        }
                        Some(model) => fallback.push(ModelRef {
                            provider: provider_field(p, m.get("provider"), &at.key("provider")),
                            model: model.to_owned(),
                        }),
                        None => p.err(
                            &at,
                            "a fallback needs a `model` (and optionally a `provider`)",
                        ),
                    },
                    Value::String(model) if !is_model_name(model) => {
                        p.err(&at, MODEL_NAME_RULE);
                    }
                    Value::String(model) => fallback.push(ModelRef {
                        provider: None,
                        model: model.clone(),
                    }),
                    _ => p.err(&at, "expected {\"provider\": ..., \"model\": ...}"),
                }
            }
        }
        Some(_) => p.err(
            &path.key("fallback"),
            "expected a list of {\"provider\", \"model\"}",
        ),
    }
    let retry_model = opt_string(p, obj, path, "retry_model");
    if retry_model.as_deref().is_some_and(|m| !is_model_name(m)) {
        p.err(&path.key("retry_model"), MODEL_NAME_RULE);
    }
    let cache_ttl = match obj.get("cache") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => {
            unknown_fields(p, c, &path.key("cache"), &["ttl"], "cache");
            match c.get("ttl").map(parse_duration) {
                Some(Ok(d)) if !d.is_zero() && d <= MAX_CACHE_TTL => Some(d),
                Some(Ok(_)) => {
                    p.err(
                        &path.key("cache").key("ttl"),
                        "expected a duration above 0 and at most 30 days",
                    );
                    None
                }
                Some(Err(e)) => {
                    p.err(&path.key("cache").key("ttl"), e);
                    None
                }
                None => {
                    p.err(&path.key("cache"), "a cache needs a `ttl` such as \"1h\"");
                    None
                }
            }
        }
        Some(_) => {
            p.err(&path.key("cache"), "expected {\"ttl\": \"1h\"}");
            None
        }
    };
    let inputs = obj.get("inputs").cloned().unwrap_or(Value::Null);
    collect_refs(p, &inputs, &path.key("inputs"), refs);
    Some(Llm {
        provider,
        model,
        messages,
        system,
        temperature,
        max_tokens,
        json,
        fallback,
        retry_model,
        inputs,
        cache_ttl,
    })
}

fn parse_approval(p: &mut Parser, obj: &JsonMap<String, Value>, path: &Path) -> Option<Approval> {
    Some(Approval {
        message: opt_string(p, obj, path, "message"),
    })
}

fn parse_retry(p: &mut Parser, v: Option<&Value>, path: &Path) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    let obj = match v {
        None | Some(Value::Null) => return policy,
        Some(Value::Object(o)) => o,
        Some(other) => {
            p.err(path, format!("expected an object such as {{\"max_attempts\": 3, \"initial_interval\": \"1s\"}}, found {}", kind(other)));
            return policy;
        }
    };
    unknown_fields(
        p,
        obj,
        path,
        &[
            "max_attempts",
            "initial_interval",
            "multiplier",
            "backoff_coefficient",
            "max_interval",
            "jitter",
        ],
        "retry policy",
    );
    if let Some(v) = obj.get("max_attempts") {
        match v.as_u64() {
            Some(n) if (1..=MAX_ATTEMPTS as u64).contains(&n) => policy.max_attempts = n as u32,
            _ => p.err(
                &path.key("max_attempts"),
                format!("expected a whole number from 1 to {MAX_ATTEMPTS}"),
            ),
        }
    }
    for (field, slot) in [
        ("initial_interval", &mut policy.initial_interval),
        ("max_interval", &mut policy.max_interval),
    ] {
        if let Some(v) = obj.get(field) {
            match parse_duration(v) {
                Ok(d) => *slot = d,
                Err(e) => p.err(&path.key(field), e),
            }
        }
    }
    let mult = obj
        .get("multiplier")
        .map(|v| ("multiplier", v))
        .or_else(|| {
            obj.get("backoff_coefficient")
                .map(|v| ("backoff_coefficient", v))
        });
    if let Some((field, v)) = mult {
        match v.as_f64() {
            Some(m) if (1.0..=10.0).contains(&m) => policy.multiplier = m,
            _ => p.err(&path.key(field), "expected a number from 1 to 10"),
        }
    }
    if let Some(v) = obj.get("jitter") {
        match v {
            Value::Bool(b) => policy.jitter = if *b { 0.2 } else { 0.0 },
            _ => match v.as_f64() {
                Some(j) if (0.0..=1.0).contains(&j) => policy.jitter = j,
                _ => p.err(
                    &path.key("jitter"),
                    "expected true/false or a fraction from 0 to 1",
                ),
            },
        }
    }
    if policy.max_interval < policy.initial_interval {
        p.err(
            &path.key("max_interval"),
            "max_interval is shorter than initial_interval",
        );
    }
    policy
}

/// Names that are not steps but may appear in templates at this depth.
pub(super) fn is_builtin_name(name: &str, in_map: bool) -> bool {
    matches!(name, "trigger" | "run") || (in_map && matches!(name, "item" | "index"))
}

/// All step ids of a workflow, for tools that list them.
pub fn step_ids(w: &Workflow) -> BTreeSet<String> {
    fn walk(steps: &[Step], out: &mut BTreeSet<String>) {
        for s in steps {
            out.insert(s.id.clone());
            if let StepKind::Map(m) = &s.kind {
                walk(&m.steps, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&w.steps, &mut out);
    out
}
