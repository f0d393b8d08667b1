//! Workspace secrets: write-only through the API, usable in http steps as
//! `{{ secrets.NAME }}`, and never visible in run state, logs or responses.

mod common;

use common::{spawn_app, step, upstream};
use serde_json::json;

const SECRET: &str = "s3cret-value-42";

#[tokio::test]
async fn secrets_are_write_only_and_per_workspace() {
    let app = spawn_app().await;
    let r = app
        .put("/v1/secrets/API_KEY", json!({"value": SECRET}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["name"], "API_KEY");
    assert!(!r.body.to_string().contains(SECRET));
    let listed = app.get("/v1/secrets").await;
    assert_eq!(listed.body["items"][0]["name"], "API_KEY");
    assert!(!listed.body.to_string().contains(SECRET));

    assert_eq!(
        app.put("/v1/secrets/bad-name", json!({"value": "x"}))
            .await
            .status,
        400
    );
    assert_eq!(
        app.put("/v1/secrets/OK", json!({"value": ""})).await.status,
        422
    );
    assert_eq!(
        app.put("/v1/secrets/OK", json!({"secret": "x"}))
            .await
            .status,
        422
    );

    let other = app.other_workspace().await;
    let theirs = app
        .call("GET", "/v1/secrets", None, Some(&other), &[])
        .await;
    assert!(theirs.body["items"].as_array().unwrap().is_empty());
    assert_eq!(
        app.call("DELETE", "/v1/secrets/API_KEY", None, Some(&other), &[])
            .await
            .status,
        404
    );

    assert_eq!(
        app.call(
            "DELETE",
            "/v1/secrets/API_KEY",
            None,
            Some(&app.key.clone()),
            &[]
        )
        .await
        .status,
        204
    );
    assert_eq!(
        app.call(
            "DELETE",
            "/v1/secrets/API_KEY",
            None,
            Some(&app.key.clone()),
            &[]
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn http_steps_use_secrets_and_never_record_them() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    app.put("/v1/secrets/API_KEY", json!({"value": SECRET}))
        .await;
    app.create_workflow(json!({"id": "wf_s", "name": "uses a key", "steps": [
        {"id": "call", "type": "http", "url": "{{ trigger.base }}/check-key", "headers": {"x-api-key": "{{ secrets.API_KEY }}"}},
        {"id": "copy", "type": "transform", "inputs": {"sent": "{{ call.body.you_sent }}", "ok": "{{ call.body.authorized }}"}}
    ]}))
    .await;
    let run = app.start_run("wf_s", json!({"base": up})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // The upstream got the real value…
    assert_eq!(done["output"]["ok"], true);
    // …and its echo was redacted before anything was recorded.
    assert_eq!(done["output"]["sent"], "[redacted]");
    assert_eq!(
        step(&done, "call")["output"]["body"]["you_sent"],
        "[redacted]"
    );
    let logs = app.get(&format!("/v1/runs/{run}/logs")).await.body;
    for body in [
        done.to_string(),
        logs.to_string(),
        app.get("/v1/runs").await.body.to_string(),
    ] {
        assert!(!body.contains(SECRET), "a secret leaked: {body}");
    }

    // An error that repeats the secret is redacted too.
    app.create_workflow(json!({"id": "wf_e", "name": "rejected", "steps": [
        {"id": "call", "type": "http", "url": "{{ trigger.base }}/reject", "headers": {"x-api-key": "{{ secrets.API_KEY }}"}}
    ]}))
    .await;
    let run = app.start_run("wf_e", json!({"base": up})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid key [redacted]"),
        "{done}"
    );
    let logs = app.get(&format!("/v1/runs/{run}/logs")).await.body;
    assert!(!done.to_string().contains(SECRET) && !logs.to_string().contains(SECRET));
}

#[tokio::test]
async fn missing_and_misplaced_secrets_are_clear_errors() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    app.create_workflow(json!({"id": "wf_m", "name": "missing", "steps": [
        {"id": "call", "type": "http", "url": "{{ trigger.base }}/echo", "headers": {"authorization": "Bearer {{ secrets.NOPE }}"}}
    ]}))
    .await;
    let run = app.start_run("wf_m", json!({"base": up})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["error"]["code"], "secret_not_found");
    assert!(done["error"]["message"].as_str().unwrap().contains("NOPE"));

    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "leaky", "steps": [
                {"id": "t", "type": "transform", "inputs": "{{ secrets.API_KEY }}"}
            ]}),
        )
        .await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["errors"][0]["path"], "$.steps[0].inputs");
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("only be used in http steps")
    );
}
