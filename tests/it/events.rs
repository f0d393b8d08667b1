//! Events start runs: `POST /v1/events` runs every workflow with a trigger
//! for the event's name whose condition holds, once per event id.

use serde_json::{Value, json};

use crate::common::{TestApp, spawn_app};

fn workflow(id: &str, triggers: Value) -> Value {
    json!({"id": id, "name": id, "triggers": triggers, "steps": [
        {"id": "t", "type": "transform", "value": {"total": "{{ trigger.total }}", "by": id}}
    ]})
}

/// The workflow ids and run ids an answer lists, sorted by workflow.
fn started(body: &Value) -> Vec<(String, String)> {
    let mut runs: Vec<(String, String)> = body["runs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["workflow_id"].as_str().unwrap_or_default().to_owned(),
                r["run_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    runs.sort();
    runs
}

async fn runs_in_workspace(app: &TestApp) -> usize {
    let r = app.get("/v1/runs?limit=200").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn an_event_starts_each_workflow_it_triggers_once_per_id() {
    let app = spawn_app().await;
    app.create_workflow(workflow(
        "big_orders",
        json!([{"event": "order.created", "if": "event.data.total > 100"}]),
    ))
    .await;
    app.create_workflow(workflow("all_orders", json!([{"event": "order.created"}])))
        .await;
    app.create_workflow(workflow("refunds", json!([{"event": "order.refunded"}])))
        .await;
    app.create_workflow(json!({"id": "manual", "name": "manual", "steps": [
        {"id": "t", "type": "transform", "value": 1}
    ]}))
    .await;

    let sent = app
        .post(
            "/v1/events",
            json!({"name": "order.created", "id": "order-1", "data": {"total": 150}}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    assert_eq!(sent.body["id"], "order-1");
    let runs = started(&sent.body);
    let wfs: Vec<&str> = runs.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(wfs, ["all_orders", "big_orders"]);
    assert!(
        sent.body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["replayed"] == false)
    );
    // Each run's input is the event's data.
    for (wf, run) in &runs {
        let done = app.wait_finished(run).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["input"], json!({"total": 150}));
        assert_eq!(done["output"], json!({"total": 150, "by": wf}));
    }

    // The same event again (a retried request): the same runs, none new.
    let again = app
        .post(
            "/v1/events",
            json!({"name": "order.created", "id": "order-1", "data": {"total": 150}}),
        )
        .await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(started(&again.body), runs);
    assert!(
        again.body["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["replayed"] == true)
    );
    assert_eq!(runs_in_workspace(&app).await, 2);

    // The same id with other data (or another name) is refused, and
    // starts nothing.
    for other in [
        json!({"name": "order.created", "id": "order-1", "data": {"total": 5}}),
        json!({"name": "order.refunded", "id": "order-1", "data": {"total": 150}}),
    ] {
        let r = app.post("/v1/events", other.clone()).await;
        assert_eq!(r.status, 422, "{other}: {}", r.body);
        assert_eq!(crate::common::error_paths(&r.body), ["$.id"], "{}", r.body);
    }
    assert_eq!(runs_in_workspace(&app).await, 2);

    // Without an id every event is new; the condition leaves one out.
    for _ in 0..2 {
        let small = app
            .post(
                "/v1/events",
                json!({"name": "order.created", "data": {"total": 5}}),
            )
            .await;
        assert_eq!(small.status, 202, "{}", small.body);
        let wfs: Vec<String> = started(&small.body).into_iter().map(|(w, _)| w).collect();
        assert_eq!(wfs, ["all_orders"]);
        assert!(small.body["id"].as_str().unwrap().starts_with("evt_"));
        // An id Weft gives may not be sent back as the sender's own.
        let reused = app
            .post(
                "/v1/events",
                json!({"name": "order.created", "id": small.body["id"], "data": {"total": 1}}),
            )
            .await;
        assert_eq!(reused.status, 422, "{}", reused.body);
        assert_eq!(crate::common::error_paths(&reused.body), ["$.id"]);
    }
    assert_eq!(runs_in_workspace(&app).await, 4);

    // An event nothing listens for starts nothing.
    let none = app
        .post("/v1/events", json!({"name": "nobody.listens"}))
        .await;
    assert_eq!(none.status, 202, "{}", none.body);
    assert_eq!(none.body["runs"], json!([]));

    // Another workspace's event starts none of this one's workflows.
    let other = app.other_workspace().await;
    let theirs = app
        .call(
            "POST",
            "/v1/events",
            Some(json!({"name": "order.created", "id": "order-1", "data": {"total": 500}})),
            Some(&other),
            &[],
        )
        .await;
    assert_eq!(theirs.status, 202, "{}", theirs.body);
    assert_eq!(theirs.body["runs"], json!([]));
    assert_eq!(runs_in_workspace(&app).await, 4);
}

#[tokio::test]
async fn runs_an_event_cannot_start_are_named_and_the_rest_start() {
    let app = spawn_app().await;
    app.create_workflow(json!({"id": "typed", "name": "typed",
        "triggers": [{"event": "signup"}],
        "input_schema": {"type": "object", "required": ["email"]},
        "steps": [{"id": "t", "type": "transform", "value": "{{ trigger.email }}"}]}))
        .await;
    app.create_workflow(workflow(
        "deep",
        json!([{"event": "signup", "if": "event.data.plan.tier == 'pro'"}]),
    ))
    .await;
    app.create_workflow(workflow("any", json!([{"event": "signup"}])))
        .await;
    let sent = app
        .post(
            "/v1/events",
            json!({"name": "signup", "data": {"total": 1}}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    let wfs: Vec<String> = started(&sent.body).into_iter().map(|(w, _)| w).collect();
    assert_eq!(wfs, ["any"]);
    let mut errors: Vec<(String, String)> = sent.body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["workflow_id"].as_str().unwrap().to_owned(),
                e["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    errors.sort();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, "deep");
    assert!(errors[0].1.contains("condition"), "{}", errors[0].1);
    assert_eq!(errors[1].0, "typed");
    assert!(errors[1].1.contains("email"), "{}", errors[1].1);
}

#[tokio::test]
async fn bad_events_and_triggers_are_refused_with_their_paths() {
    let app = spawn_app().await;
    for (body, path) in [
        (json!({"data": {}}), "$.name"),
        (json!({"name": "has space"}), "$.name"),
        (json!({"name": 7}), "$.name"),
        (json!({"name": "ok", "id": ""}), "$.id"),
        (json!({"name": "ok", "id": "with space"}), "$.id"),
        (json!({"name": "ok", "when": 1}), "$.when"),
        (json!({"name": "ok", "data": {"deep": deep(80)}}), "$.data"),
    ] {
        let r = app.post("/v1/events", body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        let paths = crate::common::error_paths(&r.body);
        assert!(paths.contains(&path), "{body}: {}", r.body);
    }
    let r = app.post("/v1/events", json!(["name"])).await;
    assert_eq!(r.status, 422, "{}", r.body);

    let many: Vec<Value> = (0..21).map(|i| json!({"event": format!("e{i}")})).collect();
    for (triggers, path) in [
        (json!({"event": "x"}), "$.triggers"),
        (json!([{"if": "true"}]), "$.triggers[0]"),
        (json!([{"event": "bad name"}]), "$.triggers[0].event"),
        (
            json!([{"event": "x", "if": "steps.t.output"}]),
            "$.triggers[0].if",
        ),
        (json!([{"event": "x", "if": "{{ nope"}]), "$.triggers[0].if"),
        (json!([{"event": "x", "on": 1}]), "$.triggers[0].on"),
        (Value::Array(many), "$.triggers"),
    ] {
        let r = app
            .post("/v1/workflows", workflow("w", triggers.clone()))
            .await;
        assert_eq!(r.status, 422, "{triggers}: {}", r.body);
        let paths = crate::common::error_paths(&r.body);
        assert!(paths.contains(&path), "{triggers}: {}", r.body);
    }
}

/// An event would start more runs than one event may: refused, none
/// started. A run starts the version whose trigger matched.
#[tokio::test]
async fn an_event_starts_at_most_a_hundred_runs() {
    let app = spawn_app().await;
    for i in 0..101 {
        app.create_workflow(workflow(&format!("w{i:03}"), json!([{"event": "flood"}])))
            .await;
    }
    let r = app.post("/v1/events", json!({"name": "flood"})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["detail"].as_str().unwrap().contains("at most 100"),
        "{}",
        r.body
    );
    assert_eq!(runs_in_workspace(&app).await, 0);
    let r = app.delete("/v1/workflows/w000").await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = app.post("/v1/events", json!({"name": "flood"})).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(started(&r.body).len(), 100);
    let run = &r.body["runs"][0]["run_id"];
    let shown = app
        .get(&format!("/v1/runs/{}", run.as_str().unwrap()))
        .await;
    assert_eq!(shown.body["workflow_version"], 1, "{}", shown.body);
}

fn deep(n: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..n {
        v = json!([v]);
    }
    v
}

fn waits(timeout: &str) -> Value {
    json!({"id": "pay", "name": "pay", "steps": [
        {"id": "paid", "type": "wait_for_event", "event": "order.paid",
         "match": "event.data.order_id == trigger.order_id", "timeout": timeout},
        {"id": "done", "type": "transform", "value": "{{ paid.data.amount if paid else 'never paid' }}"}
    ]})
}

/// A step waits for the event its `match` picks out; the event is its
/// output. Others wait on.
#[tokio::test]
async fn a_waiting_step_takes_the_event_that_matches_it() {
    let app = spawn_app().await;
    app.create_workflow(waits("1h")).await;
    let a = app.start_run("pay", json!({"order_id": "A"})).await;
    let b = app.start_run("pay", json!({"order_id": "B"})).await;
    for run in [&a, &b] {
        let w = app.wait_run(run, |r| r["status"] == "WAITING").await;
        assert_eq!(crate::common::step(&w, "paid")["status"], "waiting");
    }
    let sent = app
        .post(
            "/v1/events",
            json!({"name": "order.paid", "id": "pay-b", "data": {"order_id": "B", "amount": 42}}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.body);
    assert_eq!(
        sent.body["resumed"],
        json!([{"run_id": b, "step_id": "paid"}])
    );
    let done = app.wait_finished(&b).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["output"], 42);
    let paid = crate::common::step(&done, "paid");
    assert_eq!(paid["output"]["data"]["amount"], 42);
    assert_eq!(paid["output"]["id"], "pay-b");
    // A waits on; the same event again resumes nothing.
    let again = app
        .post(
            "/v1/events",
            json!({"name": "order.paid", "id": "pay-b", "data": {"order_id": "B", "amount": 42}}),
        )
        .await;
    assert_eq!(again.body["resumed"], json!([]), "{}", again.body);
    let other = app
        .post(
            "/v1/events",
            json!({"name": "order.shipped", "data": {"order_id": "A"}}),
        )
        .await;
    assert_eq!(other.body["resumed"], json!([]));
    let still = app.get(&format!("/v1/runs/{a}")).await;
    assert_eq!(still.body["status"], "WAITING");
    // Another workspace's event reaches none of this one's steps.
    let key = app.other_workspace().await;
    let theirs = app
        .call(
            "POST",
            "/v1/events",
            Some(json!({"name": "order.paid", "data": {"order_id": "A", "amount": 1}})),
            Some(&key),
            &[],
        )
        .await;
    assert_eq!(theirs.body["resumed"], json!([]), "{}", theirs.body);
    let sent = app
        .post(
            "/v1/events",
            json!({"name": "order.paid", "data": {"order_id": "A", "amount": 7}}),
        )
        .await;
    assert_eq!(sent.body["resumed"][0]["run_id"], a.as_str());
    assert_eq!(app.wait_finished(&a).await["output"], 7);
}

/// No event in time: the step's output is null and the run goes on.
#[tokio::test]
async fn a_wait_for_an_event_times_out_with_null() {
    let app = spawn_app().await;
    app.create_workflow(waits("1s")).await;
    let run = app.start_run("pay", json!({"order_id": "Z"})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(crate::common::step(&done, "paid")["output"], Value::Null);
    assert_eq!(done["output"], "never paid");
}

#[tokio::test]
async fn bad_waits_are_refused_with_their_paths() {
    let app = spawn_app().await;
    for (step, path) in [
        (json!({"id": "w", "type": "wait_for_event"}), "$.steps[0]"),
        (
            json!({"id": "w", "type": "wait_for_event", "event": "a b"}),
            "$.steps[0].event",
        ),
        (
            json!({"id": "w", "type": "wait_for_event", "event": "x", "match": "secrets.k == 1"}),
            "$.steps[0].match",
        ),
        (
            json!({"id": "w", "type": "wait_for_event", "event": "x", "match": 3}),
            "$.steps[0].match",
        ),
        (
            json!({"id": "w", "type": "wait_for_event", "event": "x", "lookback": "2days"}),
            "$.steps[0].lookback",
        ),
        (
            json!({"id": "w", "type": "wait_for_event", "event": "x", "lookback": "soon"}),
            "$.steps[0].lookback",
        ),
    ] {
        let r = app
            .post(
                "/v1/workflows",
                json!({"name": "w", "steps": [step.clone()]}),
            )
            .await;
        assert_eq!(r.status, 422, "{step}: {}", r.body);
        let paths = crate::common::error_paths(&r.body);
        assert!(paths.contains(&path), "{step}: {}", r.body);
    }
}

/// A run an event starts does not take that event in a later wait for the
/// same name (it came before the run); the next one it does.
#[tokio::test]
async fn a_run_started_by_an_event_waits_for_the_next_one() {
    let app = spawn_app().await;
    app.create_workflow(json!({"id": "ticks", "name": "ticks",
        "triggers": [{"event": "clock.tick"}],
        "steps": [{"id": "next", "type": "wait_for_event", "event": "clock.tick", "timeout": "1h"}]}))
    .await;
    let first = app
        .post(
            "/v1/events",
            json!({"name": "clock.tick", "id": "t1", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(first.status, 202, "{}", first.body);
    let run = first.body["runs"][0]["run_id"]
        .as_str()
        .expect("a run")
        .to_owned();
    let w = app.wait_run(&run, |r| r["status"] == "WAITING").await;
    assert_eq!(crate::common::step(&w, "next")["status"], "waiting", "{w}");
    // The same event again (a repeat) is still not the run's.
    let again = app
        .post(
            "/v1/events",
            json!({"name": "clock.tick", "id": "t1", "data": {"n": 1}}),
        )
        .await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert!(
        !again.body["resumed"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["run_id"] == run.as_str())),
        "{}",
        again.body
    );
    let second = app
        .post(
            "/v1/events",
            json!({"name": "clock.tick", "id": "t2", "data": {"n": 2}}),
        )
        .await;
    assert!(
        second.body["resumed"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["run_id"] == run.as_str())),
        "{}",
        second.body
    );
    let done = app.wait_finished(&run).await;
    assert_eq!(
        crate::common::step(&done, "next")["output"]["id"],
        "t2",
        "{done}"
    );
}
