use chrono::{Duration, TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::domain::{StepError, StepRecord, StepStatus};
use crate::dsl::{RetryPolicy, Workflow, parse_workflow};

fn wf(v: serde_json::Value) -> Workflow {
    parse_workflow(&v).unwrap()
}

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn rec(key: &str, status: StepStatus, output: serde_json::Value) -> StepRecord {
    let mut r = StepRecord::new(key, "transform");
    r.status = status;
    r.output = Some(output);
    r
}

fn starts(p: &Plan) -> Vec<&str> {
    p.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Start { key } => Some(key.as_str()),
            _ => None,
        })
        .collect()
}

fn skips(p: &Plan) -> Vec<&str> {
    p.decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Skip { key, .. } => Some(key.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn roots_start_first_then_dependents() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "a", "type": "transform"},
        {"id": "b", "type": "transform"},
        {"id": "c", "type": "transform", "depends_on": ["a", "b"]}
    ]}));
    let mut recs = Records::new();
    assert_eq!(starts(&plan(&w, &recs, t0())), vec!["a", "b"]);
    recs.insert("a".into(), rec("a", StepStatus::Succeeded, json!(1)));
    assert_eq!(starts(&plan(&w, &recs, t0())), vec!["b"]);
    recs.insert("b".into(), rec("b", StepStatus::Succeeded, json!(2)));
    assert_eq!(starts(&plan(&w, &recs, t0())), vec!["c"]);
    recs.insert("c".into(), rec("c", StepStatus::Succeeded, json!(3)));
    assert_eq!(plan(&w, &recs, t0()).outcome, Some(Outcome::Completed));
}

#[test]
fn branch_not_taken_is_skipped_and_skipping_propagates() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "check", "type": "condition", "expression": "trigger.x > 1", "then": ["yes"], "else": ["no"]},
        {"id": "yes", "type": "transform"},
        {"id": "no", "type": "transform"},
        {"id": "after_no", "type": "transform", "depends_on": ["no"]},
        {"id": "join", "type": "transform", "depends_on": ["yes", "no"]}
    ]}));
    let mut recs = Records::new();
    recs.insert(
        "check".into(),
        rec("check", StepStatus::Succeeded, json!({"result": true})),
    );
    let p = plan(&w, &recs, t0());
    assert_eq!(starts(&p), vec!["yes"]);
    assert_eq!(skips(&p), vec!["no"]);
    recs.insert("no".into(), rec("no", StepStatus::Skipped, json!(null)));
    recs.insert("yes".into(), rec("yes", StepStatus::Succeeded, json!(1)));
    let p = plan(&w, &recs, t0());
    // `after_no` depends only on a skipped step; `join` also on one that ran.
    assert_eq!(skips(&p), vec!["after_no"]);
    assert_eq!(starts(&p), vec!["join"]);
}

#[test]
fn a_failure_ends_the_run_unless_continue_on_error() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "a", "type": "transform", "continue_on_error": true},
        {"id": "b", "type": "transform", "depends_on": ["a"]},
        {"id": "c", "type": "transform"}
    ]}));
    let mut recs = Records::new();
    recs.insert("a".into(), rec("a", StepStatus::Failed, json!(null)));
    assert_eq!(starts(&plan(&w, &recs, t0())), vec!["b", "c"]);
    let mut c = rec("c", StepStatus::Failed, json!(null));
    c.error = Some(StepError::permanent("boom", "it broke"));
    recs.insert("c".into(), c);
    let p = plan(&w, &recs, t0());
    assert!(p.decisions.is_empty());
    assert!(
        matches!(p.outcome, Some(Outcome::Failed { ref key, ref error }) if key == "c" && error.code == "boom")
    );
}

#[test]
fn retries_follow_the_policy_and_are_due_later() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "a", "type": "transform", "retry": {"max_attempts": 3, "initial_interval": "10s", "multiplier": 2, "jitter": 0}}
    ]}));
    let policy = &w.steps[0].retry;
    let mut r = StepRecord::new("a", "transform");
    begin_attempt(&mut r, t0());
    finish_attempt(
        &mut r,
        policy,
        Err(StepError::transient("flaky", "try again")),
        t0(),
        "run.a",
    );
    assert_eq!(r.status, StepStatus::Pending);
    assert_eq!(r.retry_at, Some(t0() + Duration::seconds(10)));
    let mut recs = Records::new();
    recs.insert("a".into(), r.clone());
    let p = plan(&w, &recs, t0() + Duration::seconds(5));
    assert!(p.decisions.is_empty());
    assert_eq!(p.next_wake, Some(t0() + Duration::seconds(10)));
    assert_eq!(
        starts(&plan(&w, &recs, t0() + Duration::seconds(10))),
        vec!["a"]
    );

    begin_attempt(&mut r, t0() + Duration::seconds(10));
    finish_attempt(
        &mut r,
        policy,
        Err(StepError::transient("flaky", "again")),
        t0() + Duration::seconds(10),
        "run.a",
    );
    assert_eq!(r.retry_at, Some(t0() + Duration::seconds(30)));
    begin_attempt(&mut r, t0() + Duration::seconds(30));
    finish_attempt(
        &mut r,
        policy,
        Err(StepError::transient("flaky", "third")),
        t0() + Duration::seconds(30),
        "run.a",
    );
    assert_eq!(r.status, StepStatus::Failed);
    assert_eq!(r.attempts.len(), 3);

    // A permanent error is not retried at all.
    let mut r = StepRecord::new("a", "transform");
    begin_attempt(&mut r, t0());
    finish_attempt(
        &mut r,
        policy,
        Err(StepError::permanent("bad", "no")),
        t0(),
        "run.a",
    );
    assert_eq!(r.status, StepStatus::Failed);
}

#[test]
fn backoff_is_capped_and_jitter_is_bounded_and_repeatable() {
    let p = RetryPolicy {
        max_attempts: 10,
        initial_interval: std::time::Duration::from_secs(1),
        multiplier: 2.0,
        max_interval: std::time::Duration::from_secs(60),
        jitter: 0.2,
    };
    for n in 1..10 {
        let d = backoff(&p, n, "seed").as_secs_f64();
        let base = (2f64.powi(n as i32 - 1)).min(60.0);
        assert!(
            d >= base * 0.8 - 1e-9 && d <= (base * 1.2).min(60.0) + 1e-9,
            "attempt {n}: {d}"
        );
        assert_eq!(backoff(&p, n, "seed"), backoff(&p, n, "seed"));
    }
}

#[test]
fn waiting_steps_wake_at_their_time() {
    let w = wf(json!({"name": "t", "steps": [{"id": "d", "type": "delay", "duration": "1h"}]}));
    let mut r = StepRecord::new("d", "delay");
    r.status = StepStatus::Waiting;
    r.wake_at = Some(t0() + Duration::hours(1));
    let mut recs = Records::new();
    recs.insert("d".into(), r);
    let p = plan(&w, &recs, t0());
    assert!(p.waiting && p.decisions.is_empty());
    assert!(!p.awaits_event, "a delay waits only for its timer");
    assert_eq!(p.next_wake, Some(t0() + Duration::hours(1)));
    let p = plan(&w, &recs, t0() + Duration::hours(1));
    assert_eq!(p.decisions, vec![Decision::Wake { key: "d".into() }]);
}

#[test]
fn map_iterations_respect_concurrency_and_finish_in_order() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "m", "type": "map", "items": [1, 2, 3], "concurrency": 2, "step": {"id": "wait", "type": "approval"}}
    ]}));
    let mut m = StepRecord::new("m", "map");
    m.status = StepStatus::Running;
    m.items = Some(vec![json!(1), json!(2), json!(3)]);
    let mut recs = Records::new();
    recs.insert("m".into(), m);
    assert_eq!(starts(&plan(&w, &recs, t0())), vec!["m.0.wait", "m.1.wait"]);
    for k in ["m.0.wait", "m.1.wait"] {
        let mut r = StepRecord::new(k, "approval");
        r.status = StepStatus::Waiting;
        recs.insert(k.into(), r);
    }
    assert!(starts(&plan(&w, &recs, t0())).is_empty());
    assert!(
        plan(&w, &recs, t0()).awaits_event,
        "approvals inside a map await an outside event"
    );
    recs.insert(
        "m.1.wait".into(),
        rec("m.1.wait", StepStatus::Succeeded, json!(2)),
    );
    assert_eq!(starts(&plan(&w, &recs, t0())), vec!["m.2.wait"]);
    recs.insert(
        "m.0.wait".into(),
        rec("m.0.wait", StepStatus::Succeeded, json!(1)),
    );
    recs.insert(
        "m.2.wait".into(),
        rec("m.2.wait", StepStatus::Succeeded, json!(3)),
    );
    assert_eq!(
        plan(&w, &recs, t0()).decisions,
        vec![Decision::CompleteMap { key: "m".into() }]
    );

    let mut failed = rec("m.2.wait", StepStatus::Failed, json!(null));
    failed.error = Some(StepError::permanent("approval_timeout", "nobody answered"));
    recs.insert("m.2.wait".into(), failed);
    let p = plan(&w, &recs, t0());
    assert!(
        matches!(&p.decisions[..], [Decision::FailMap { key, error }] if key == "m" && error.message.contains("iteration 2"))
    );
}

#[test]
fn closing_a_run_cancels_what_is_open() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "a", "type": "transform"},
        {"id": "b", "type": "approval"},
        {"id": "c", "type": "transform", "depends_on": ["b"]}
    ]}));
    let mut recs = Records::new();
    recs.insert("a".into(), rec("a", StepStatus::Succeeded, json!(1)));
    let mut b = StepRecord::new("b", "approval");
    b.status = StepStatus::Waiting;
    recs.insert("b".into(), b);
    let changed = close_open_steps(&w, &mut recs, t0(), "run cancelled");
    assert_eq!(changed, vec!["b", "c"]);
    assert_eq!(recs["a"].status, StepStatus::Succeeded);
    assert_eq!(recs["b"].status, StepStatus::Cancelled);
    assert_eq!(recs["c"].status, StepStatus::Cancelled);
}

#[test]
fn a_maps_cursor_skips_finished_iterations_and_plans_the_same() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "m", "type": "map", "items": "{{ trigger }}", "concurrency": 2, "step": {"id": "s", "type": "approval"}}
    ]}));
    let mut m = StepRecord::new("m", "map");
    m.status = StepStatus::Running;
    m.items = Some((0..6).map(|i| json!(i)).collect());
    let mut recs = Records::new();
    recs.insert("m".into(), m);
    let mut cursors = Cursors::default();
    let waiting = |k: &str| {
        let mut r = StepRecord::new(k, "approval");
        r.status = StepStatus::Waiting;
        r
    };
    // Iterations finish out of order: the cursor stops at the first open
    // one, and every plan from it equals a plan from the start.
    for (finish, expect_cursor) in [(None, 0), (Some(1), 0), (Some(0), 2), (Some(2), 3)] {
        if let Some(i) = finish {
            let k = format!("m.{i}.s");
            recs.insert(k.clone(), rec(&k, StepStatus::Succeeded, json!(i)));
        }
        let with = plan_from(&w, &recs, t0(), &mut cursors);
        assert_eq!(with, plan(&w, &recs, t0()));
        assert_eq!(cursors.at("m"), Some(expect_cursor));
        for k in starts(&with)
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
        {
            recs.insert(k.clone(), waiting(&k));
        }
    }
    cursors.forget("m");
    assert_eq!(cursors.at("m"), None);
}
