//! The API as a client sees it, against the real embedded server.

use crate::common::spawn_app;
use serde_json::{Value, json};

fn simple(id: Option<&str>) -> Value {
    let mut v = json!({"name": "Simple", "steps": [{"id": "a", "type": "transform", "inputs": "{{ trigger.x }}"}]});
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v
}

#[tokio::test]
async fn health_needs_no_key_and_everything_else_does() {
    let app = spawn_app().await;
    let r = app.call("GET", "/v1/health", None, None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["status"], "ok");

    for key in [None, Some("weft_wrong"), Some("")] {
        let r = app.call("GET", "/v1/workflows", None, key, &[]).await;
        assert_eq!(r.status, 401, "{key:?}");
        assert_eq!(r.body["type"], "/problems/unauthorized");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
    }
    assert_eq!(app.get("/v1/nowhere").await.status, 404);
    assert_eq!(
        app.call("PATCH", "/v1/workflows", None, Some(&app.key), &[])
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn workflows_are_versioned_listed_and_archived() {
    let app = spawn_app().await;
    let r = app.post("/v1/workflows", simple(Some("wf_demo"))).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["id"], "wf_demo");
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.headers["location"], "/v1/workflows/wf_demo");
    assert_eq!(
        app.post("/v1/workflows", simple(Some("wf_demo")))
            .await
            .status,
        409
    );

    // Without an id the server picks a random one.
    let generated = app.create_workflow(simple(None)).await;
    assert!(
        generated.starts_with("wf_") && generated.len() > 20,
        "{generated}"
    );

    let mut v2 = simple(None);
    v2["name"] = json!("Simple v2");
    let r = app.put("/v1/workflows/wf_demo", v2).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["version"], 2);
    assert_eq!(
        app.get("/v1/workflows/wf_demo").await.body["name"],
        "Simple v2"
    );
    assert_eq!(
        app.get("/v1/workflows/wf_demo?version=1").await.body["name"],
        "Simple"
    );
    assert_eq!(app.get("/v1/workflows/wf_demo?version=7").await.status, 404);
    assert_eq!(app.get("/v1/workflows/wf_demo?version=x").await.status, 400);
    // The body's id must match the URL's.
    let r = app
        .put("/v1/workflows/wf_demo", simple(Some("other")))
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["path"], "$.id");

    // A run on the old version, then archive: the run stays readable.
    let r = app
        .post(
            "/v1/workflows/wf_demo/runs",
            json!({"input": {"x": 1}, "version": 1}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["workflow_version"], 1);
    let run = r.body["run_id"].as_str().unwrap().to_owned();
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED");

    assert_eq!(
        app.call("DELETE", "/v1/workflows/wf_demo", None, Some(&app.key), &[])
            .await
            .status,
        204
    );
    assert_eq!(app.get("/v1/workflows/wf_demo").await.status, 404);
    assert_eq!(
        app.post("/v1/workflows/wf_demo/runs", json!({"input": {}}))
            .await
            .status,
        404
    );
    assert_eq!(
        app.get(&format!("/v1/runs/{run}")).await.body["status"],
        "COMPLETED"
    );
    let listed = app.get("/v1/workflows").await.body;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn listings_paginate_with_opaque_cursors() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create_workflow(simple(Some(&format!("wf_{i}")))).await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/workflows?limit=2".to_owned();
    loop {
        let page = app.get(&path).await.body;
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/workflows?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["wf_0", "wf_1", "wf_2", "wf_3", "wf_4"]);
    assert_eq!(app.get("/v1/workflows?cursor=garbage").await.status, 400);
    assert_eq!(app.get("/v1/workflows?limit=0").await.status, 400);
    assert_eq!(app.get("/v1/workflows?colour=red").await.status, 400);

    let mut runs = Vec::new();
    for x in 0..3 {
        runs.push(app.start_run("wf_0", json!({"x": x})).await);
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let failing = app.start_run("wf_1", json!({})).await;
    app.wait_finished(&failing).await;
    for r in &runs {
        app.wait_finished(r).await;
    }
    let page = app.get("/v1/runs?workflow_id=wf_0&limit=2").await.body;
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [runs[2].as_str(), runs[1].as_str()], "newest first");
    // Listings carry no input or output (a run's own view does).
    let first = &page["items"][0];
    assert_eq!(first["status"], "COMPLETED", "{first}");
    assert!(
        first.get("input").is_none() && first.get("output").is_none(),
        "{first}"
    );
    let whole = app.get(&format!("/v1/runs/{}", runs[2])).await.body;
    assert_eq!(whole["input"], json!({"x": 2}));
    let next = app
        .get(&format!(
            "/v1/runs?workflow_id=wf_0&limit=2&cursor={}",
            page["next_cursor"].as_str().unwrap()
        ))
        .await
        .body;
    assert_eq!(next["items"][0]["run_id"], runs[0].as_str());
    assert_eq!(next["next_cursor"], Value::Null);
    let failed = app.get("/v1/runs?status=failed").await.body;
    assert_eq!(failed["items"].as_array().unwrap().len(), 1);
    assert_eq!(failed["items"][0]["run_id"], failing.as_str());
    assert_eq!(app.get("/v1/runs?status=sleepy").await.status, 400);
}

#[tokio::test]
async fn idempotency_keys_replay_refuse_and_stay_in_their_workspace() {
    let app = spawn_app().await;
    app.create_workflow(simple(Some("wf_i"))).await;
    let key = [("idempotency-key", "order-42")];
    let body = json!({"input": {"x": 1}});
    let first = app
        .call(
            "POST",
            "/v1/workflows/wf_i/runs",
            Some(body.clone()),
            Some(&app.key),
            &key,
        )
        .await;
    assert_eq!(first.status, 202);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = app
        .call(
            "POST",
            "/v1/workflows/wf_i/runs",
            Some(body.clone()),
            Some(&app.key),
            &key,
        )
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body, first.body, "a replay gets the first response");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let other = app
        .call(
            "POST",
            "/v1/workflows/wf_i/runs",
            Some(json!({"input": {"x": 2}})),
            Some(&app.key),
            &key,
        )
        .await;
    assert_eq!(other.status, 422);
    assert_eq!(other.body["type"], "/problems/idempotency-key-reused");
    let runs = app.get("/v1/runs").await.body;
    assert_eq!(
        runs["items"].as_array().unwrap().len(),
        1,
        "only one run was created"
    );

    // The same key in another workspace is independent.
    let b = app.other_workspace().await;
    app.call(
        "POST",
        "/v1/workflows",
        Some(simple(Some("wf_i"))),
        Some(&b),
        &[],
    )
    .await;
    let theirs = app
        .call(
            "POST",
            "/v1/workflows/wf_i/runs",
            Some(body),
            Some(&b),
            &key,
        )
        .await;
    assert_eq!(theirs.status, 202);
    assert_ne!(theirs.body["run_id"], first.body["run_id"]);

    let bad = app
        .call(
            "POST",
            "/v1/workflows/wf_i/runs",
            Some(json!({})),
            Some(&app.key),
            &[("idempotency-key", "")],
        )
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn one_workspace_cannot_see_or_touch_another() {
    let app = spawn_app().await;
    app.create_workflow(
        json!({"id": "wf_private", "name": "p", "steps": [{"id": "ask", "type": "approval"}]}),
    )
    .await;
    let run = app.start_run("wf_private", json!({"secret": "a"})).await;
    app.wait_run(&run, |b| b["status"] == "WAITING").await;

    let intruder = app.other_workspace().await;
    let as_b = |method: &'static str, path: String, body: Option<Value>| {
        let intruder = intruder.clone();
        let app = &app;
        async move { app.call(method, &path, body, Some(&intruder), &[]).await }
    };
    assert_eq!(
        as_b("GET", "/v1/workflows/wf_private".into(), None)
            .await
            .status,
        404
    );
    assert_eq!(
        as_b("GET", format!("/v1/runs/{run}"), None).await.status,
        404
    );
    assert_eq!(
        as_b("GET", format!("/v1/runs/{run}/logs"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        as_b("POST", format!("/v1/runs/{run}/cancel"), Some(json!({})))
            .await
            .status,
        404
    );
    assert_eq!(
        as_b(
            "POST",
            format!("/v1/runs/{run}/steps/ask/complete"),
            Some(json!({"output": {}}))
        )
        .await
        .status,
        404
    );
    assert_eq!(
        as_b(
            "POST",
            "/v1/workflows/wf_private/runs".into(),
            Some(json!({}))
        )
        .await
        .status,
        404
    );
    assert_eq!(
        as_b("PUT", "/v1/workflows/wf_private".into(), Some(simple(None)))
            .await
            .status,
        404
    );
    assert_eq!(
        as_b("DELETE", "/v1/workflows/wf_private".into(), None)
            .await
            .status,
        404
    );
    assert!(
        as_b("GET", "/v1/runs".into(), None).await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        as_b("GET", "/v1/workflows".into(), None).await.body["items"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // And the owner's run is untouched.
    assert_eq!(
        app.get(&format!("/v1/runs/{run}")).await.body["status"],
        "WAITING"
    );
}

#[tokio::test]
async fn bad_definitions_and_bodies_are_refused_clearly() {
    let app = spawn_app().await;
    // The original design example: parses, and names the missing connector.
    let example = json!({"id": "wf_email_draft", "name": "Draft Email Response", "version": "1.0",
     "steps": [
      {"id": "step_1", "type": "integration", "service": "gmail", "action": "read_email", "inputs": {"email_id": "{{trigger.email_id}}"}},
      {"id": "step_2", "type": "llm", "model": "gpt-4", "prompt": "Draft a response to this email:\n\n{{step_1.body}}", "inputs": {"context": {"company": "{{user.company}}"}}},
      {"id": "step_3", "type": "transformation", "action": "extract_json", "inputs": {"text": "{{step_2.response}}"}},
      {"id": "step_4", "type": "integration", "service": "gmail", "action": "save_draft", "inputs": {"to": "{{step_1.from}}", "subject": "Re: {{step_1.subject}}", "body": "{{step_3.draft}}"}}]});
    let r = app.post("/v1/workflows", example).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["type"], "/problems/invalid-definition");
    let errors = r.body["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["path"] == "$.steps[0].service"
            && e["message"].as_str().unwrap().contains("gmail")),
        "{errors:?}"
    );

    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "cyc", "steps": [
        {"id": "a", "type": "transform", "inputs": "{{ b }}"},
        {"id": "b", "type": "transform", "inputs": "{{ a }}"},
        {"id": "a", "type": "transform"}]}),
        )
        .await;
    assert_eq!(r.status, 422);
    let text = r.body["errors"].to_string();
    assert!(
        text.contains("dependency cycle") && text.contains("duplicate step id"),
        "{text}"
    );

    let huge = json!({"name": "big", "steps": [{"id": "a", "type": "transform", "inputs": "x".repeat(300 * 1024)}]});
    let r = app.post("/v1/workflows", huge).await;
    assert_eq!(r.status, 422);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("limit")
    );
    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "x".repeat(2 * 1024 * 1024)}),
        )
        .await;
    assert_eq!(r.status, 413);

    let r = app
        .call("POST", "/v1/workflows", None, Some(&app.key), &[])
        .await;
    assert_eq!(r.status, 400);
    let r = app.post("/v1/workflows", json!([1, 2])).await;
    assert_eq!(r.status, 422);

    app.create_workflow(simple(Some("wf_ok"))).await;
    let r = app
        .post("/v1/workflows/wf_ok/runs", json!({"inputs": {}}))
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["path"], "$.inputs");
}

#[tokio::test]
async fn run_details_have_steps_counts_and_logs() {
    let app = spawn_app().await;
    app.create_workflow(json!({"id": "wf_d", "name": "d", "steps": [
        {"id": "a", "type": "transform", "inputs": "{{ trigger.x }}"},
        {"id": "gate", "type": "condition", "expression": "a > 1", "then": ["big"]},
        {"id": "big", "type": "transform", "inputs": "big"}
    ]}))
    .await;
    let run = app.start_run("wf_d", json!({"x": 0})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["counts"]["total"], 3);
    assert_eq!(done["counts"]["succeeded"], 2);
    assert_eq!(done["counts"]["skipped"], 1);
    assert!(done["duration_ms"].as_i64().is_some());
    let a = &done["steps"][0];
    assert_eq!(a["id"], "a");
    assert_eq!(a["type"], "transform");
    assert_eq!(a["output"], 0);
    assert_eq!(a["attempts"].as_array().unwrap().len(), 1);
    for field in ["started_at", "finished_at", "duration_ms"] {
        assert!(!a[field].is_null(), "{field}");
    }
    let logs = app.get(&format!("/v1/runs/{run}/logs")).await.body;
    let items = logs["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|l| l["step_id"] == "big" && l["message"].as_str().unwrap().contains("skipped")),
        "{items:?}"
    );
    assert!(
        items
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );

    // Completing a step that is not waiting, or does not exist.
    assert_eq!(
        app.post(
            &format!("/v1/runs/{run}/steps/a/complete"),
            json!({"output": {}})
        )
        .await
        .status,
        409
    );
    assert_eq!(
        app.post(
            &format!("/v1/runs/{run}/steps/zz/complete"),
            json!({"output": {}})
        )
        .await
        .status,
        404
    );
    assert_eq!(
        app.post(&format!("/v1/runs/{run}/cancel"), json!({}))
            .await
            .status,
        409
    );
}
