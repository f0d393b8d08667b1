use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::{StepError, StepRecord, StepStatus};
use crate::dsl::{Map, Step, StepKind, Workflow};

/// A run's step records by key (`id`, or `map.index.id` inside a map).
pub type Records = BTreeMap<String, StepRecord>;

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The step's dependencies are done (or its retry is due): try it now.
    Start { key: String },
    /// The step will not run.
    Skip { key: String, reason: String },
    /// A waiting step's time has come: a delay ended or an approval timed out.
    Wake { key: String },
    /// Every iteration of a running map step has finished.
    CompleteMap { key: String },
    /// An iteration of a running map step failed.
    FailMap { key: String, error: StepError },
}

impl Decision {
    /// The step it is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Start { key }
            | Self::Skip { key, .. }
            | Self::Wake { key }
            | Self::CompleteMap { key }
            | Self::FailMap { key, .. } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Completed,
    /// `key` is the step whose failure ended the run.
    Failed {
        key: String,
        error: StepError,
    },
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub decisions: Vec<Decision>,
    /// The earliest time a timer (delay end, approval timeout, retry) is due.
    pub next_wake: Option<DateTime<Utc>>,
    pub outcome: Option<Outcome>,
    /// A step is executing outside the planner (an I/O step in flight).
    pub running: bool,
    /// A step waits for a timer or an outside event.
    pub waiting: bool,
    /// A step waits for an outside event (an approval completed through the
    /// API), not only for its timer.
    pub awaits_event: bool,
}

impl Plan {
    fn wake_at(&mut self, at: DateTime<Utc>) {
        self.next_wake = Some(self.next_wake.map_or(at, |w| w.min(at)));
    }

    fn absorb(&mut self, other: Plan) {
        self.decisions.extend(other.decisions);
        if let Some(w) = other.next_wake {
            self.wake_at(w);
        }
        self.running |= other.running;
        self.waiting |= other.waiting;
        self.awaits_event |= other.awaits_event;
    }
}

enum Scope {
    Done,
    Failed { key: String, error: StepError },
    Active,
}

/// Where each running map's unfinished iterations begin: every iteration
/// before the cursor has finished. A step that finished stays finished, so
/// a driver that plans the same run again and again (as `advance` does
/// while steps run inline) keeps these between calls, and each plan looks
/// at a map's open window, not at every iteration it ever ran.
#[derive(Clone, Debug, Default)]
pub struct Cursors(std::collections::HashMap<String, usize>);

impl Cursors {
    /// Where map `key`'s open iterations begin, if known.
    pub fn at(&self, key: &str) -> Option<usize> {
        self.0.get(key).copied()
    }

    /// Drops what is known of map `key` and the maps inside it (it starts
    /// again, or ended).
    pub fn forget(&mut self, key: &str) {
        let inner = format!("{key}.");
        self.0.retain(|k, _| k != key && !k.starts_with(&inner));
    }
}

/// Decides what happens next in a run.
pub fn plan(wf: &Workflow, recs: &Records, now: DateTime<Utc>) -> Plan {
    plan_from(wf, recs, now, &mut Cursors::default())
}

/// `plan`, starting each map at its cursor (and moving the cursors on).
pub fn plan_from(wf: &Workflow, recs: &Records, now: DateTime<Utc>, cursors: &mut Cursors) -> Plan {
    let mut p = Plan::default();
    match plan_scope(&wf.steps, "", recs, now, &mut p, cursors) {
        Scope::Done => {
            p = Plan {
                outcome: Some(Outcome::Completed),
                ..Plan::default()
            };
        }
        Scope::Failed { key, error } => {
            p = Plan {
                outcome: Some(Outcome::Failed { key, error }),
                ..Plan::default()
            };
        }
        Scope::Active => {}
    }
    p
}

fn status_of(recs: &Records, key: &str) -> StepStatus {
    recs.get(key).map_or(StepStatus::Pending, |r| r.status)
}

fn plan_scope(
    steps: &[Step],
    prefix: &str,
    recs: &Records,
    now: DateTime<Utc>,
    p: &mut Plan,
    cursors: &mut Cursors,
) -> Scope {
    let mut done = true;
    for step in steps {
        let key = format!("{prefix}{}", step.id);
        let rec = recs.get(&key);
        match rec.map_or(StepStatus::Pending, |r| r.status) {
            StepStatus::Succeeded | StepStatus::Skipped | StepStatus::Cancelled => {}
            StepStatus::Failed if step.continue_on_error => {}
            StepStatus::Failed => {
                let error = rec
                    .and_then(|r| r.error.clone())
                    .unwrap_or_else(|| StepError::permanent("failed", "the step failed"));
                return Scope::Failed { key, error };
            }
            StepStatus::Pending => {
                done = false;
                if let Some(at) = rec.and_then(|r| r.retry_at) {
                    if at <= now {
                        p.decisions.push(Decision::Start { key });
                    } else {
                        p.wake_at(at);
                    }
                    continue;
                }
                if let Some(d) = ready(step, prefix, recs, key) {
                    p.decisions.push(d);
                }
            }
            StepStatus::Running => {
                done = false;
                match (&step.kind, rec) {
                    (StepKind::Map(map), Some(r)) => plan_map(map, &key, r, recs, now, p, cursors),
                    _ => p.running = true,
                }
            }
            StepStatus::Waiting => {
                done = false;
                p.waiting = true;
                p.awaits_event |=
                    matches!(step.kind, StepKind::Approval(_) | StepKind::WaitForEvent(_));
                match rec.and_then(|r| r.wake_at) {
                    Some(at) if at <= now => p.decisions.push(Decision::Wake { key }),
                    Some(at) => p.wake_at(at),
                    None => {}
                }
            }
        }
    }
    if done { Scope::Done } else { Scope::Active }
}

/// For a step not yet tried: start it, skip it, or (None) keep waiting for
/// its dependencies.
fn ready(step: &Step, prefix: &str, recs: &Records, key: String) -> Option<Decision> {
    let mut all_skipped = !step.depends_on.is_empty();
    for d in &step.depends_on {
        let s = status_of(recs, &format!("{prefix}{d}"));
        if !s.is_terminal() {
            return None;
        }
        all_skipped &= s == StepStatus::Skipped;
    }
    if let Some(b) = &step.branch {
        let cond = recs.get(&format!("{prefix}{}", b.condition));
        let result = cond
            .filter(|c| c.status == StepStatus::Succeeded)
            .and_then(|c| c.output.as_ref())
            .and_then(|o| o.get("result"))
            .and_then(Value::as_bool);
        match result {
            Some(r) if r == b.when => {}
            Some(r) => {
                return Some(Decision::Skip {
                    key,
                    reason: format!("branch not taken: condition `{}` was {r}", b.condition),
                });
            }
            None => {
                return Some(Decision::Skip {
                    key,
                    reason: format!("condition `{}` did not run", b.condition),
                });
            }
        }
    }
    if all_skipped {
        return Some(Decision::Skip {
            key,
            reason: "all of its dependencies were skipped".into(),
        });
    }
    Some(Decision::Start { key })
}

/// A running map: iterations start in order, at most `concurrency` unfinished
/// at once; the map ends when all have finished or one has failed.
fn plan_map(
    map: &Map,
    key: &str,
    rec: &StepRecord,
    recs: &Records,
    now: DateTime<Utc>,
    p: &mut Plan,
    cursors: &mut Cursors,
) {
    let n = rec.items.as_ref().map_or(0, Vec::len);
    let from = cursors.0.get(key).copied().unwrap_or(0).min(n);
    let mut finished_before = from;
    let mut inner = Plan::default();
    let mut open = 0;
    let mut all_done = true;
    for i in from..n {
        let prefix = format!("{key}.{i}.");
        let started = map
            .steps
            .iter()
            .any(|s| recs.contains_key(&format!("{prefix}{}", s.id)));
        if !started && open >= map.concurrency {
            // Iterations start in order, so none after this one has started.
            all_done = false;
            break;
        }
        match plan_scope(&map.steps, &prefix, recs, now, &mut inner, cursors) {
            Scope::Done => {
                if finished_before == i {
                    finished_before = i + 1;
                }
            }
            Scope::Active => {
                all_done = false;
                open += 1;
            }
            Scope::Failed { key: failed, error } => {
                p.decisions.push(Decision::FailMap {
                    key: key.to_owned(),
                    error: StepError::permanent(
                        "iteration_failed",
                        format!("iteration {i} failed at step `{failed}`: {}", error.message),
                    ),
                });
                return;
            }
        }
    }
    cursors.0.insert(key.to_owned(), finished_before);
    if all_done {
        p.decisions.push(Decision::CompleteMap {
            key: key.to_owned(),
        });
    } else {
        p.absorb(inner);
    }
}
