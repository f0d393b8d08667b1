//! Bounds on what one request or one run may use, and the API's answers
//! where a user would trip over them: every error a problem document, runs
//! listed in the order they were made, ids free again once archived.

use crate::common::{spawn_app, step};
use serde_json::{Value, json};

#[tokio::test]
async fn the_frameworks_own_rejections_are_problems() {
    let app = spawn_app().await;
    // `call` asserts that every error answer is application/problem+json
    // with a matching status.
    assert_eq!(app.get("/v1/runs/%ff%ff").await.status, 400);
    assert_eq!(app.get("/v1/runs?limit=many").await.status, 400);
    let big = json!({"input": {"text": "x".repeat(2 * 1024 * 1024)}});
    let r = app.post("/v1/workflows/any/runs", big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(r.body["instance"], "/v1/workflows/any/runs");
}

#[tokio::test]
async fn runs_are_listed_newest_first() {
    let app = std::sync::Arc::new(spawn_app().await);
    let wf = app
        .create_workflow(
            json!({"name": "t", "steps": [{"id": "a", "type": "transform", "inputs": 1}]}),
        )
        .await;
    // Many at once: several are made within one millisecond.
    let starts: Vec<_> = (0..80)
        .map(|_| {
            let (app, wf) = (app.clone(), wf.clone());
            tokio::spawn(async move { app.start_run(&wf, json!({})).await })
        })
        .collect();
    for s in starts {
        s.await.unwrap();
    }
    let listed = app.get("/v1/runs?limit=100").await.body;
    let created: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["created_at"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 80);
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        created.iter().map(|t| t.parse().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "not newest first: {created:?}"
    );
}

#[tokio::test]
async fn a_run_cannot_grow_without_bound() {
    let app = spawn_app().await;
    // A value of 100 MB from one transform.
    let wf = app
        .create_workflow(json!({"name": "big", "steps": [
            {"id": "t", "type": "transform", "inputs": "{{ 'x' * 100000000 }}"}
        ]}))
        .await;
    let run = app.start_run(&wf, json!({})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["code"], "template_error");
    assert!(done["error"]["message"].as_str().unwrap().contains("MiB"));

    // Maps inside maps: each 10,000 items would make 300,000 step records.
    let wf = app
        .create_workflow(json!({"name": "nested", "steps": [
            {"id": "outer", "type": "map", "items": "{{ range(30) | list }}", "concurrency": 30, "step":
                {"id": "inner", "type": "map", "items": "{{ range(10000) | list }}", "step":
                    {"id": "leaf", "type": "transform", "inputs": "{{ item }}"}}}
        ]}))
        .await;
    let run = app.start_run(&wf, json!({})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("step records"),
        "{}",
        done["error"]
    );

    // Input nested too deep to store and read back.
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    let r = app
        .post(
            &format!("/v1/workflows/{wf}/runs"),
            json!({"input": {"d": deep}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
}

#[tokio::test]
async fn usage_reports_take_sane_dates() {
    let app = spawn_app().await;
    let r = app
        .get("/v1/usage?from=+262142-01-01&to=+262142-12-31")
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = app.get("/v1/usage?from=9999-01-01&to=9999-12-31").await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn an_archived_workflows_id_can_be_used_again() {
    let app = spawn_app().await;
    let def = json!({"id": "wf_again", "name": "one", "steps": [{"id": "a", "type": "transform", "inputs": 1}]});
    app.create_workflow(def.clone()).await;
    let run = app.start_run("wf_again", json!({})).await;
    app.wait_finished(&run).await;
    assert_eq!(app.delete("/v1/workflows/wf_again").await.status, 204);
    let mut def2 = def.clone();
    def2["name"] = json!("two");
    let r = app.post("/v1/workflows", def2).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(app.get("/v1/workflows/wf_again").await.body["name"], "two");
    // The old run stays readable, pinned to its version.
    let old = app.get(&format!("/v1/runs/{run}")).await.body;
    assert_eq!(old["workflow_version"], 1);
    assert_eq!(step(&old, "a")["output"], 1);
    // A live one's id is still taken.
    assert_eq!(app.post("/v1/workflows", def).await.status, 409);
}

#[tokio::test]
async fn one_process_per_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("weft.db");
    let first = weft::platform::Platform::open(&db).await.expect("first");
    let second = weft::platform::Platform::open(&db).await;
    let err = second
        .err()
        .expect("the second open is refused")
        .to_string();
    assert!(err.contains("another Weft process"), "{err}");
    drop(first);
    assert!(weft::platform::Platform::open(&db).await.is_ok());
}

#[tokio::test]
async fn a_large_run_is_read_in_pages() {
    let (app, up) = (spawn_app().await, crate::common::upstream::spawn().await);
    let wf = app
        .create_workflow(json!({"name": "wide", "steps": [
            {"id": "m", "type": "map", "items": "{{ range(1200) | list }}", "concurrency": 100,
             "step": {"id": "t", "type": "transform", "inputs": "{{ item }}"}},
            {"id": "big1", "type": "http", "url": "{{ trigger.base }}/bytes/3000000"},
            {"id": "big2", "type": "http", "url": "{{ trigger.base }}/bytes/3000000"}
        ], "output": {"n": "{{ m | length }}"}}))
        .await;
    let run = app.start_run(&wf, json!({"base": up})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{}", done["error"]);
    // One answer holds at most 1,000 steps and 5 MiB of their outputs.
    assert_eq!(done["steps"].as_array().unwrap().len(), 1000);
    assert_eq!(done["steps_omitted"], 1203 - 1000);
    assert!(done.to_string().len() < 6_000_000);
    // The pages visit every step once.
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let page = app
            .get(&format!("/v1/runs/{run}/steps?limit=200{cursor}"))
            .await
            .body;
        for s in page["items"].as_array().unwrap() {
            assert!(
                seen.insert(s["id"].as_str().unwrap().to_owned()),
                "{}",
                s["id"]
            );
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 1203);
    // A large output left out of a listing is read on its own.
    let big = app.get(&format!("/v1/runs/{run}/steps/big2")).await.body;
    assert_eq!(big["output"]["body"].as_str().unwrap().len(), 3_000_000);
    let one = app.get(&format!("/v1/runs/{run}/steps/m.7.t")).await.body;
    assert_eq!(one["output"], 7);
    assert_eq!(
        app.get(&format!("/v1/runs/{run}/steps/nope")).await.status,
        404
    );
}

#[tokio::test]
async fn a_definition_with_thousands_of_problems_gets_a_readable_answer() {
    let app = spawn_app().await;
    let mut step = serde_json::Map::new();
    step.insert("id".into(), json!("a"));
    step.insert("type".into(), json!("transform"));
    for i in 0..8_000 {
        step.insert(format!("unknown_field_{i:05}"), json!(1));
    }
    let r = app
        .post("/v1/workflows", json!({"name": "t", "steps": [step]}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errors"].as_array().unwrap().len(), 200);
    assert!(
        r.body["detail"].as_str().unwrap().contains("8000"),
        "{}",
        r.body["detail"]
    );
}

/// The limits the README documents, at their edges: the limit itself is
/// accepted, one past it is refused with a problem naming it.
#[tokio::test]
async fn documented_limits_hold_at_their_edges() {
    let app = spawn_app().await;
    let steps = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"id": format!("s{i}"), "type": "transform", "inputs": 1}))
            .collect()
    };
    // 1,000 steps per workflow.
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "max", "steps": steps(1000)}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "over", "steps": steps(1001)}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body.to_string().contains("the limit is 1000"),
        "{}",
        r.body
    );

    // A usage report covers at most 366 days.
    let r = app.get("/v1/usage?from=2025-01-01&to=2026-01-01").await;
    assert_eq!(r.status, 200, "366 days: {}", r.body);
    let r = app.get("/v1/usage?from=2025-01-01&to=2026-01-02").await;
    assert_eq!(r.status, 400, "367 days: {}", r.body);
    assert!(r.body["detail"].to_string().contains("366"), "{}", r.body);

    // A cache TTL of at most 30 days.
    let cached = |ttl: &str| json!({"name": "c", "steps": [{"id": "s", "type": "llm", "model": "m", "prompt": "p", "cache": {"ttl": ttl}}]});
    assert_eq!(app.post("/v1/workflows", cached("30d")).await.status, 201);
    let r = app.post("/v1/workflows", cached("31d")).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["errors"][0]["path"], "$.steps[0].cache.ttl");

    // A map iterates over at most 100,000 items.
    let wf = app
        .create_workflow(json!({"name": "wide map", "steps": [
            {"id": "m", "type": "map", "items": "{{ trigger.items }}", "step": {"id": "t", "type": "transform", "inputs": 1}}
        ]}))
        .await;
    let run = app.start_run(&wf, json!({"items": vec![0; 100_001]})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert!(
        done["error"]["message"]
            .to_string()
            .contains("the map has 100001 items; the limit is 100000"),
        "{}",
        done["error"]
    );

    // Pages of at most 200.
    for path in ["/v1/workflows", "/v1/runs"] {
        assert_eq!(app.get(&format!("{path}?limit=200")).await.status, 200);
        let r = app.get(&format!("{path}?limit=201")).await;
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.body["detail"].to_string().contains("200"), "{}", r.body);
    }
}

#[tokio::test]
async fn an_input_that_would_take_too_much_memory_is_refused() {
    // 400 KB of `{"a":0}` is within the input's 1 MiB limit but takes some
    // 40 MiB parsed: refused at the start, with what it would take.
    let app = spawn_app().await;
    app.create_workflow(json!({"id": "wf_in", "name": "in", "steps": [
        {"id": "t", "type": "transform", "inputs": "{{ trigger.x | length }}"}
    ], "output": "{{ t }}"}))
        .await;
    let dense: Vec<serde_json::Value> = (0..50_000).map(|_| json!({"a": 0})).collect();
    let r = app
        .post("/v1/workflows/wf_in/runs", json!({"input": {"x": dense}}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.to_string().contains("in memory"), "{}", r.body);
    let few: Vec<serde_json::Value> = (0..1000).map(|_| json!({"a": 0})).collect();
    let run = app.start_run("wf_in", json!({"x": few})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["output"], json!(1000), "{done}");
}
