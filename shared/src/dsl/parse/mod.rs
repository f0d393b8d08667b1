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

mod approval;
mod condition;
mod delay;
mod http;
mod llm;
mod map;
mod retry;
mod transform;
mod triggers;
mod wait_for_event;

use approval::parse_approval;
use condition::parse_condition;
use delay::parse_delay;
pub use http::is_secret_name;
use http::parse_http;
use llm::parse_llm;
pub use llm::{LLM_PROVIDERS, MAX_BUDGET_USD, budget_usd, is_provider_name};
use map::parse_map;
use retry::parse_retry;
use transform::parse_transform;
use triggers::parse_triggers;
pub use triggers::{MAX_TRIGGERS, is_event_name};
use wait_for_event::parse_wait_for_event;

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
    "triggers",
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

    let triggers = parse_triggers(&mut p, obj.get("triggers"), &root.key("triggers"));

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
        triggers,
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
        "wait_for_event" => parse_wait_for_event(p, obj, path).map(StepKind::WaitForEvent),
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
            p.err(&path.key("type"), format!("unknown step type `{other}`; expected one of transform, condition, map, delay, approval, wait_for_event, http, llm"));
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
        StepKind::Transform(_) => transform::FIELDS,
        StepKind::Condition(_) => condition::FIELDS,
        StepKind::Map(_) => map::FIELDS,
        StepKind::Delay(_) => delay::FIELDS,
        StepKind::Approval(_) => approval::FIELDS,
        StepKind::WaitForEvent(_) => wait_for_event::FIELDS,
        StepKind::Http(_) => http::FIELDS,
        StepKind::Llm(_) => llm::FIELDS,
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
