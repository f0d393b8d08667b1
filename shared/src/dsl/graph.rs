//! Resolves template references into dependencies, scope by scope, and checks
//! the resulting graph has no cycle.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::definition::Branch;
use super::definition::StepKind;
use super::parse::{Parsed, is_builtin_name};
use super::path::{Path, ValidationError};

/// Where a definition may insert secrets.
pub(super) const SECRETS_ONLY_IN_HTTP: &str = "secrets can only be inserted into an http step's url, query, headers or body, as {{ secrets.NAME }} (secret values never enter run state)";

/// A name a step uses: from a template, an expression or `depends_on`.
#[derive(Clone, Debug)]
pub(super) struct Ref {
    pub name: String,
    pub path: Path,
    /// Written in `depends_on` rather than found in a template.
    pub explicit: bool,
}

/// Resolves the references of one scope (the top level, or a map's
/// sub-graph). `ids` maps every step id to the map ids enclosing it. Returns
/// the references that point out of this scope: the enclosing map step
/// depends on those.
pub(super) fn resolve_scope(
    steps: &mut [Parsed],
    scope: &[String],
    ids: &HashMap<String, Vec<String>>,
    errors: &mut Vec<ValidationError>,
) -> Vec<Ref> {
    let in_map = !scope.is_empty();
    let local: HashSet<String> = steps.iter().map(|s| s.step.id.clone()).collect();
    let mut escaped = Vec::new();

    let mut branch_of: HashMap<String, Branch> = HashMap::new();
    for s in steps.iter() {
        let StepKind::Condition(c) = &s.step.kind else {
            continue;
        };
        for (list, when, field) in [
            (&c.then_steps, true, "then"),
            (&c.else_steps, false, "else"),
        ] {
            for (i, id) in list.iter().enumerate() {
                let at = s.path.key(field).index(i);
                if id == &s.step.id {
                    errors.push(ValidationError::new(
                        &at,
                        "a condition cannot branch to itself",
                    ));
                } else if !local.contains(id) {
                    errors.push(ValidationError::new(&at, match ids.get(id) {
                        Some(_) => format!("`{id}` is not at the same level as this condition; a branch can only list steps beside it"),
                        None => format!("branch lists unknown step `{id}`"),
                    }));
                } else if let Some(b) = branch_of.get(id) {
                    errors.push(ValidationError::new(
                        &at,
                        format!(
                            "`{id}` is already on a branch of condition `{}`",
                            b.condition
                        ),
                    ));
                } else {
                    branch_of.insert(
                        id.clone(),
                        Branch {
                            condition: s.step.id.clone(),
                            when,
                        },
                    );
                }
            }
        }
    }

    for s in steps.iter_mut() {
        let mut refs = std::mem::take(&mut s.refs);
        if matches!(s.step.kind, StepKind::Map(_)) {
            let mut inner_scope = scope.to_vec();
            inner_scope.push(s.step.id.clone());
            let mut out = resolve_scope(&mut s.subs, &inner_scope, ids, errors);
            let sub_ids: HashSet<&str> = s.subs.iter().map(|x| x.step.id.as_str()).collect();
            for r in std::mem::take(&mut s.inner_refs) {
                if is_builtin_name(&r.name, true) || sub_ids.contains(r.name.as_str()) {
                    continue;
                }
                out.push(r);
            }
            refs.extend(out);
        }
        let mut deps = BTreeSet::new();
        for r in refs {
            if r.name == "secrets" {
                if !matches!(s.step.kind, StepKind::Http(_)) {
                    errors.push(ValidationError::new(&r.path, SECRETS_ONLY_IN_HTTP));
                }
                continue;
            }
            if is_builtin_name(&r.name, in_map) {
                continue;
            }
            match ids.get(&r.name) {
                None if matches!(r.name.as_str(), "item" | "index") => errors.push(ValidationError::new(
                    &r.path,
                    format!("`{}` is only defined inside a map step", r.name),
                )),
                None => errors.push(ValidationError::new(
                    &r.path,
                    if r.explicit {
                        format!("depends on unknown step `{}`", r.name)
                    } else {
                        format!("references unknown step `{}`", r.name)
                    },
                )),
                Some(sc) if sc.as_slice() == scope => {
                    if r.name == s.step.id {
                        errors.push(ValidationError::new(&r.path, format!("step `{}` depends on itself", r.name)));
                    } else {
                        deps.insert(r.name);
                    }
                }
                Some(sc) if sc.len() < scope.len() && scope.starts_with(sc) => escaped.push(r),
                Some(sc) => errors.push(ValidationError::new(
                    &r.path,
                    format!(
                        "`{}` runs inside map `{}` and cannot be referenced from here; use the map's output",
                        r.name,
                        sc.last().map(String::as_str).unwrap_or("?")
                    ),
                )),
            }
        }
        if let Some(b) = branch_of.remove(&s.step.id) {
            deps.insert(b.condition.clone());
            s.step.branch = Some(b);
        }
        s.step.depends_on = deps.into_iter().collect();
    }

    check_cycles(steps, errors);
    escaped
}

fn check_cycles(steps: &[Parsed], errors: &mut Vec<ValidationError>) {
    // A duplicated id (reported elsewhere) means its first occurrence.
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in steps.iter().enumerate() {
        index.entry(s.step.id.as_str()).or_insert(i);
    }
    let mut indegree: Vec<usize> = steps
        .iter()
        .map(|s| {
            s.step
                .depends_on
                .iter()
                .filter(|d| index.contains_key(d.as_str()))
                .count()
        })
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for d in &s.step.depends_on {
            if let Some(&j) = index.get(d.as_str()) {
                dependents[j].push(i);
            }
        }
    }
    let mut ready: Vec<usize> = (0..steps.len()).filter(|&i| indegree[i] == 0).collect();
    let mut done = vec![false; steps.len()];
    while let Some(i) = ready.pop() {
        done[i] = true;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(j);
            }
        }
    }
    // Each leftover step is on or behind a cycle: walk dependencies among the
    // leftovers until a step repeats, and report each cycle once.
    let mut reported: HashSet<usize> = HashSet::new();
    for start in 0..steps.len() {
        if done[start] || reported.contains(&start) {
            continue;
        }
        let mut trail = vec![start];
        let mut cur = start;
        while let Some(next) = steps[cur]
            .step
            .depends_on
            .iter()
            .filter_map(|d| index.get(d.as_str()).copied())
            .find(|&j| !done[j])
        {
            if let Some(pos) = trail.iter().position(|&t| t == next) {
                let cycle = &trail[pos..];
                if cycle.iter().all(|c| !reported.contains(c)) {
                    let names: Vec<&str> = cycle
                        .iter()
                        .chain(std::iter::once(&next))
                        .map(|&c| steps[c].step.id.as_str())
                        .collect();
                    errors.push(ValidationError::new(
                        &steps[next].path,
                        format!(
                            "dependency cycle: {} (each step waits for the next)",
                            names.join(" → ")
                        ),
                    ));
                }
                reported.extend(cycle.iter().copied());
                break;
            }
            trail.push(next);
            cur = next;
        }
        reported.insert(start);
    }
}
