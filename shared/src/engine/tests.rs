use chrono::{Duration, TimeZone, Utc};
use serde_json::{Value, json};

use super::*;
use crate::dag::Records;
use crate::domain::{RunStatus, StepStatus};
use crate::dsl::{Workflow, parse_workflow};

fn wf(v: Value) -> Workflow {
    parse_workflow(&v).unwrap()
}

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
}

fn info(input: &Value) -> RunInfo<'_> {
    RunInfo {
        run_id: "run_test",
        workflow_id: "wf_test",
        version: 1,
        input,
    }
}

#[test]
fn a_chain_of_pure_steps_completes_in_one_call() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "a", "type": "transform", "inputs": {"n": "{{ trigger.n }}"}},
        {"id": "b", "type": "transform", "expression": "a.n * 2"},
        {"id": "c", "type": "transformation", "action": "extract_json", "inputs": {"text": "Result: {\"value\": {{ b }}}"}}
    ]}));
    let input = json!({"n": 21});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Completed);
    assert_eq!(adv.output, Some(json!({"value": 42})));
    assert_eq!(recs["b"].output, Some(json!(42)));
    assert_eq!(adv.changed.len(), 3);
}

#[test]
fn conditions_choose_a_branch() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "check", "type": "condition", "expression": "trigger.amount > 100", "then": ["big"], "else": ["small"]},
        {"id": "big", "type": "transform", "inputs": "manual review"},
        {"id": "small", "type": "transform", "inputs": "auto approve"},
        {"id": "done", "type": "transform", "inputs": "{{ big or small }}", "if": "trigger.amount >= 0"}
    ]}));
    for (amount, taken, skipped) in [(500, "big", "small"), (5, "small", "big")] {
        let input = json!({"amount": amount});
        let mut recs = Records::new();
        let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
        assert_eq!(adv.status, RunStatus::Completed);
        assert_eq!(recs[taken].status, StepStatus::Succeeded);
        assert_eq!(recs[skipped].status, StepStatus::Skipped);
        assert!(
            recs[skipped]
                .reason
                .as_deref()
                .unwrap()
                .contains("branch not taken")
        );
        assert_eq!(adv.output, recs[taken].output);
    }
}

#[test]
fn delays_wait_then_finish() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "wait", "type": "delay", "duration": "1h"},
        {"id": "after", "type": "transform", "inputs": "{{ wait.waited_until }}"}
    ]}));
    let input = json!({});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Waiting);
    assert_eq!(adv.wake_at, Some(t0() + Duration::hours(1)));
    let adv = advance(
        &w,
        info(&input),
        &mut recs,
        t0() + Duration::minutes(59),
        Limits::default(),
    );
    assert_eq!(adv.status, RunStatus::Waiting);
    assert!(adv.changed.is_empty());
    let adv = advance(
        &w,
        info(&input),
        &mut recs,
        t0() + Duration::hours(1),
        Limits::default(),
    );
    assert_eq!(adv.status, RunStatus::Completed);
    assert_eq!(recs["wait"].attempts.len(), 1);
}

#[test]
fn approvals_wait_for_completion_or_time_out() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "ok", "type": "approval", "timeout": "1d"},
        {"id": "act", "type": "transform", "inputs": {"approved": "{{ ok.approved }}"}}
    ]}));
    let input = json!({});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Waiting);
    assert_eq!(recs["ok"].status, StepStatus::Waiting);

    // Completed from outside, as the API does.
    let mut done = recs.clone();
    let r = done.get_mut("ok").unwrap();
    r.status = StepStatus::Succeeded;
    r.output = Some(json!({"approved": true}));
    let adv = advance(
        &w,
        info(&input),
        &mut done,
        t0() + Duration::minutes(5),
        Limits::default(),
    );
    assert_eq!(adv.status, RunStatus::Completed);
    assert_eq!(adv.output, Some(json!({"approved": true})));

    // Nobody answers.
    let adv = advance(
        &w,
        info(&input),
        &mut recs,
        t0() + Duration::days(1),
        Limits::default(),
    );
    assert_eq!(adv.status, RunStatus::Failed);
    assert_eq!(adv.error.as_ref().unwrap().code, "approval_timeout");
    assert_eq!(recs["act"].status, StepStatus::Cancelled);
}

#[test]
fn maps_collect_outputs_in_order() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "each", "type": "map", "items": "{{ trigger.xs }}", "concurrency": 2, "steps": [
            {"id": "sq", "type": "transform", "expression": "item * item"},
            {"id": "fmt", "type": "transform", "inputs": "{{ index }}:{{ sq }}"}
        ]},
        {"id": "labels", "type": "map", "items": "{{ each }}", "step": {"id": "up", "type": "transform", "expression": "item | upper"}, "output": "{{ up }}!"}
    ]}));
    let input = json!({"xs": [3, 1, 2]});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Completed, "{adv:?}");
    assert_eq!(recs["each"].output, Some(json!(["0:9", "1:1", "2:4"])));
    assert_eq!(recs["each.1.sq"].output, Some(json!(1)));
    assert_eq!(adv.output, Some(json!(["0:9!", "1:1!", "2:4!"])));

    let mut recs = Records::new();
    let adv = advance(
        &w,
        info(&json!({"xs": "nope"})),
        &mut recs,
        t0(),
        Limits::default(),
    );
    assert_eq!(adv.status, RunStatus::Failed);
    assert!(adv.error.unwrap().message.contains("must produce a list"));
}

/// A step's context built from only the records `records_read` names is
/// the one built from all of the run's records, at every level of nesting.
#[test]
fn a_steps_context_needs_only_the_records_it_reads() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "pre", "type": "transform", "expression": "trigger.k"},
        {"id": "other", "type": "transform", "expression": "1"},
        {"id": "each", "type": "map", "items": "{{ trigger.xs }}", "steps": [
            {"id": "sq", "type": "transform", "expression": "item * pre"},
            {"id": "rows", "type": "map", "items": "{{ [sq, sq] }}", "steps": [
                {"id": "in", "type": "transform", "inputs": "{{ index }}:{{ item }}:{{ sq }}:{{ pre }}"}
            ]},
            {"id": "fmt", "type": "transform", "inputs": "{{ rows }} {{ run.id }}"}
        ]},
        {"id": "last", "type": "transform", "inputs": "{{ each }} {{ pre }}"}
    ]}));
    let input = json!({"xs": [3, 1], "k": 2});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Completed, "{adv:?}");
    for key in [
        "pre",
        "each",
        "each.1.sq",
        "each.0.rows.1.in",
        "each.1.fmt",
        "last",
    ] {
        let read = context::records_read(&w, key).unwrap();
        let some: Records = read
            .iter()
            .filter_map(|k| recs.get(k).map(|r| (k.clone(), r.clone())))
            .collect();
        assert!(some.len() < recs.len(), "{key} reads {read:?}");
        let names = context::Names::Read(&w.step_by_key(key).unwrap().reads);
        let scope = context::scope_of(key);
        assert_eq!(
            context::scope_values(&w, info(&input), &some, scope, names),
            context::scope_values(&w, info(&input), &recs, scope, names),
            "{key} reads {read:?}"
        );
    }
    assert_eq!(context::records_read(&w, "nope"), None);
}

#[test]
fn continue_on_error_lets_dependents_see_the_error() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "parse", "type": "transform", "action": "parse_json", "inputs": {"text": "not json"}, "continue_on_error": true},
        {"id": "fallback", "type": "transform", "inputs": "{{ parse.error.code }}"}
    ]}));
    let input = json!({});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Completed);
    assert_eq!(adv.output, Some(json!("invalid_json")));
    assert_eq!(recs["parse"].status, StepStatus::Failed);
}

#[test]
fn missing_input_fails_the_step_with_a_clear_message() {
    let w = wf(
        json!({"name": "t", "steps": [{"id": "a", "type": "transform", "inputs": "{{ trigger.email_id }}"}]}),
    );
    let input = json!({});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Failed);
    let err = adv.error.unwrap();
    assert!(
        err.message.contains("step `a` failed") && err.message.contains("trigger.email_id"),
        "{err:?}"
    );
    assert_eq!(
        recs["a"].attempts.len(),
        1,
        "template errors are not retried"
    );
}

#[test]
fn where_drivers_cannot_know_an_attempt_is_orphaned_only_after_its_deadline() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "call", "type": "http", "url": "http://example.com/", "timeout": "10s"}
    ]}));
    let input = json!({});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.dispatch.len(), 1);
    let mut logs = Vec::new();
    // Within its timeout and the grace period: still in flight, and the
    // driver is told when to look again.
    let later = t0() + Duration::seconds(60);
    let o = interrupt_orphans(
        &w,
        &mut recs,
        "run_test",
        later,
        &InFlight::UntilDeadline,
        &mut logs,
    );
    assert!(o.changed.is_empty());
    assert_eq!(o.next_deadline, Some(t0() + Duration::seconds(130)));
    // Past it: interrupted, and retried by the step's policy.
    let past = t0() + Duration::seconds(131);
    let o = interrupt_orphans(
        &w,
        &mut recs,
        "run_test",
        past,
        &InFlight::UntilDeadline,
        &mut logs,
    );
    assert_eq!(o.changed, vec!["call".to_owned()]);
    assert_eq!(recs["call"].status, StepStatus::Pending);
    assert_eq!(
        recs["call"].attempts[0]
            .error
            .as_ref()
            .map(|e| e.code.as_str()),
        Some("interrupted")
    );
}

#[test]
fn a_bounded_call_does_part_of_the_work_and_asks_for_more() {
    let steps: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("s{i}"), "type": "transform", "inputs": i}))
        .collect();
    let w = wf(json!({"name": "t", "steps": steps}));
    let input = json!({});
    let mut recs = Records::new();
    let limits = Limits {
        max_changes: Some(4),
        max_dispatch: None,
    };
    let mut calls = 0;
    loop {
        calls += 1;
        let adv = advance(&w, info(&input), &mut recs, t0(), limits);
        assert!(adv.changed.len() <= 4, "{:?}", adv.changed);
        if adv.status == RunStatus::Completed {
            break;
        }
        assert_eq!(adv.wake_at, Some(t0()), "more work is due now");
    }
    assert_eq!(calls, 3);
}

#[test]
fn a_run_holding_too_much_fails() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "a", "type": "transform", "inputs": 1},
        {"id": "b", "type": "transform", "inputs": 2, "depends_on": ["a"]}
    ]}));
    let input = json!({});
    let mut recs = Records::new();
    let mut a = crate::domain::StepRecord::new("a", "transform");
    a.status = StepStatus::Succeeded;
    a.output = Some(json!(1));
    a.size = crate::domain::limits::MAX_RUN_STATE_BYTES + 1;
    recs.insert("a".into(), a);
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Failed);
    assert_eq!(adv.error.unwrap().code, "state_too_large");
}

#[test]
fn a_run_stops_when_steps_run_in_one_call_grow_it_too_much() {
    // Each item's step builds 3 MB inline: 1000 of them would hold 3 GB.
    let w = wf(json!({"name": "t", "steps": [
        {"id": "m", "type": "map", "items": "{{ range(1000) | list }}", "concurrency": 1000, "steps": [
            {"id": "t", "type": "transform", "inputs": {"v": "{{ 'x' * 3000000 }}"}}]}
    ]}));
    let input = json!({});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Failed);
    assert_eq!(adv.error.unwrap().code, "state_too_large");
    let held: u64 = recs.values().map(|r| r.size).sum();
    assert!(
        held < crate::domain::limits::MAX_RUN_STATE_BYTES + 8 * 1024 * 1024,
        "{held}"
    );
}

#[test]
fn a_run_holds_only_so_many_attempts_in_flight() {
    let w = wf(json!({"name": "t", "steps": [
        {"id": "outer", "type": "map", "items": "{{ range(20) | list }}", "concurrency": 1000, "step":
            {"id": "inner", "type": "map", "items": "{{ range(50) | list }}", "concurrency": 1000, "step":
                {"id": "call", "type": "http", "url": "http://example.com/"}}}
    ]}));
    let input = json!({});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.dispatch.len(), super::advance::MAX_IN_FLIGHT_PER_RUN);
    // Nothing more starts while they run, and no busy loop is asked for.
    let again = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert!(again.dispatch.is_empty());
    assert_eq!(again.wake_at, None);
    assert_eq!(again.status, RunStatus::Running);
}

#[test]
fn a_runs_state_counts_what_its_outputs_take_in_memory() {
    // 2000 small maps are ~16 KB of JSON but several hundred KB parsed:
    // the run's state (and `state_bytes`, what a pass reserves before it
    // reads the run) counts the latter, for outputs and map items alike.
    let w = wf(json!({"name": "t", "steps": [
        {"id": "dense", "type": "transform", "expression": "range(2000) | map('string') | list"},
        {"id": "m", "type": "map", "items": "{{ range(3) | list }}", "step":
            {"id": "t", "type": "transform", "inputs": {"a": 0}}}
    ]}));
    let input = json!({});
    let mut recs = Records::new();
    let adv = advance(&w, info(&input), &mut recs, t0(), Limits::default());
    assert_eq!(adv.status, RunStatus::Completed, "{:?}", adv.error);
    let sum: u64 = recs.values().map(|r| r.size).sum();
    assert_eq!(adv.state_bytes, sum);
    let dense = &recs["dense"];
    assert_eq!(
        dense.size,
        crate::memory::mem_size(dense.output.as_ref().unwrap())
    );
    assert!(dense.size > 2000 * 64, "{}", dense.size);
    // A map's record counts its items and its output.
    let m = &recs["m"];
    let items: u64 = m.items.iter().flatten().map(crate::memory::mem_size).sum();
    assert_eq!(
        m.size,
        items + crate::memory::mem_size(m.output.as_ref().unwrap())
    );
}
