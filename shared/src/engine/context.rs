//! What a step's templates can see: `trigger` (the run input), `run`, the
//! outputs of steps already finished, and inside a map iteration `item`,
//! `index` and the iteration's own steps.

use std::collections::BTreeSet;

use serde_json::{Map as JsonMap, Value, json};

use crate::dag::Records;
use crate::domain::{StepRecord, StepStatus};
use crate::dsl::{Step, StepKind, Workflow};
use crate::template::{Context, context_from_json};

/// The run facts every step can read.
#[derive(Clone, Copy, Debug)]
pub struct RunInfo<'a> {
    pub run_id: &'a str,
    pub workflow_id: &'a str,
    pub version: u32,
    pub input: &'a Value,
}

/// The value a finished step contributes to templates: its output, `null`
/// when skipped, `{"error": …}` when it failed (with `continue_on_error`).
pub fn value_of(rec: &StepRecord) -> Option<Value> {
    match rec.status {
        StepStatus::Succeeded => Some(rec.output.clone().unwrap_or(Value::Null)),
        StepStatus::Skipped => Some(Value::Null),
        StepStatus::Failed => Some(json!({ "error": rec.error })),
        _ => None,
    }
}

/// Which names a context holds: all, or only those a template reads (so
/// starting a step costs what it reads, not what the whole run holds).
#[derive(Clone, Copy)]
pub enum Names<'a> {
    All,
    Read(&'a BTreeSet<String>),
}

impl Names<'_> {
    fn wants(self, name: &str) -> bool {
        match self {
            Self::All => true,
            Self::Read(names) => names.contains(name),
        }
    }
}

fn add_scope(
    steps: &[Step],
    prefix: &str,
    recs: &Records,
    names: Names<'_>,
    out: &mut JsonMap<String, Value>,
) {
    for s in steps.iter().filter(|s| names.wants(&s.id)) {
        if let Some(v) = recs.get(&format!("{prefix}{}", s.id)).and_then(value_of) {
            out.insert(s.id.clone(), v);
        }
    }
}

/// The names visible inside `scope`: "" for the top level, `m.3.` inside
/// iteration 3 of map `m` (nesting repeats the pattern).
pub fn scope_values(
    wf: &Workflow,
    info: RunInfo<'_>,
    recs: &Records,
    scope: &str,
    names: Names<'_>,
) -> JsonMap<String, Value> {
    let mut out = JsonMap::new();
    if names.wants("trigger") {
        out.insert("trigger".into(), info.input.clone());
    }
    if names.wants("run") {
        out.insert(
            "run".into(),
            json!({"id": info.run_id, "workflow_id": info.workflow_id, "workflow_version": info.version}),
        );
    }
    add_scope(&wf.steps, "", recs, names, &mut out);
    for level in enclosing_maps(wf, scope) {
        if names.wants("item") {
            let item = recs
                .get(&level.map_key)
                .and_then(|r| r.items.as_ref())
                .and_then(|items| items.get(level.index))
                .cloned()
                .unwrap_or(Value::Null);
            out.insert("item".into(), item);
        }
        if names.wants("index") {
            out.insert("index".into(), json!(level.index));
        }
        add_scope(level.steps, &level.prefix, recs, names, &mut out);
    }
    out
}

/// One map iteration enclosing a scope, outermost first.
struct MapLevel<'w> {
    /// The map step's record key.
    map_key: String,
    index: usize,
    /// The iteration's steps' keys begin with this (`m.3.`).
    prefix: String,
    steps: &'w [Step],
}

/// The map iterations enclosing `scope` (`m.3.n.0.` → `m` at 3, `n` at 0).
fn enclosing_maps<'w>(wf: &'w Workflow, scope: &str) -> Vec<MapLevel<'w>> {
    let segs: Vec<&str> = scope.split('.').filter(|s| !s.is_empty()).collect();
    let mut levels = Vec::new();
    let mut steps = &wf.steps[..];
    let mut prefix = String::new();
    for pair in segs.chunks(2) {
        let [map_id, index] = pair else { break };
        let Some(Step {
            kind: StepKind::Map(map),
            ..
        }) = steps.iter().find(|s| s.id == *map_id)
        else {
            break;
        };
        let map_key = format!("{prefix}{map_id}");
        prefix = format!("{map_key}.{index}.");
        steps = &map.steps;
        levels.push(MapLevel {
            map_key,
            index: index.parse().unwrap_or(usize::MAX),
            prefix: prefix.clone(),
            steps,
        });
    }
    levels
}

/// The scope a step key lives in: `m.3.sub` → `m.3.`, `a` → ``.
pub fn scope_of(key: &str) -> &str {
    key.rfind('.').map_or("", |i| &key[..=i])
}

/// The keys of the step records the context of the step at `key` reads
/// (`context_for`): the steps its templates name, in its scope and the
/// enclosing ones, and each enclosing map's own record (for `item`). None
/// for a key the workflow does not have (its context would hold all).
pub fn records_read(wf: &Workflow, key: &str) -> Option<Vec<String>> {
    let names = &wf.step_by_key(key)?.reads;
    let named = |steps: &[Step], prefix: &str| -> Vec<String> {
        steps
            .iter()
            .filter(|s| names.contains(&s.id))
            .map(|s| format!("{prefix}{}", s.id))
            .collect()
    };
    let mut keys = named(&wf.steps, "");
    for level in enclosing_maps(wf, scope_of(key)) {
        if names.contains("item") {
            keys.push(level.map_key);
        }
        keys.extend(named(level.steps, &level.prefix));
    }
    Some(keys)
}

/// The template context for the step with this key.
/// (Only the names the step's templates read are put in.)
pub fn context_for(wf: &Workflow, info: RunInfo<'_>, recs: &Records, key: &str) -> Context {
    let names = match wf.step_by_key(key) {
        Some(step) => Names::Read(&step.reads),
        None => Names::All,
    };
    context_from_json(&Value::Object(scope_values(
        wf,
        info,
        recs,
        scope_of(key),
        names,
    )))
}

/// The default result of a scope: the output of its one final step, or an
/// object of its final steps' outputs by id (skipped ones left out).
pub fn sink_output(steps: &[Step], prefix: &str, recs: &Records) -> Value {
    let sinks: Vec<&Step> = steps
        .iter()
        .filter(|s| !steps.iter().any(|o| o.depends_on.contains(&s.id)))
        .collect();
    let value = |s: &Step| recs.get(&format!("{prefix}{}", s.id)).and_then(value_of);
    if let [only] = sinks[..] {
        return value(only).unwrap_or(Value::Null);
    }
    let mut out = JsonMap::new();
    for s in sinks {
        let rec = recs.get(&format!("{prefix}{}", s.id));
        if rec.is_some_and(|r| r.status != StepStatus::Skipped)
            && let Some(v) = value(s)
        {
            out.insert(s.id.clone(), v);
        }
    }
    Value::Object(out)
}
