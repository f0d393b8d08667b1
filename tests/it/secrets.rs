//! Workspace secrets: write-only through the API, usable in http steps as
//! `{{ secrets.NAME }}`, and never visible in run state, logs or responses.

use crate::common::{spawn_app, step, upstream};
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

    assert_eq!(app.delete("/v1/secrets/API_KEY").await.status, 204);
    assert_eq!(app.delete("/v1/secrets/API_KEY").await.status, 404);
}

#[tokio::test]
async fn http_steps_use_secrets_and_never_record_them() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    app.put("/v1/secrets/API_KEY", json!({"value": SECRET}))
        .await;
    app.create_workflow(json!({"id": "wf_s", "name": "uses a key", "steps": [
        {"id": "call", "type": "http", "url": format!("{up}/check-key"), "headers": {"x-api-key": "{{ secrets.API_KEY }}"}},
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
        {"id": "call", "type": "http", "url": format!("{up}/reject"), "headers": {"x-api-key": "{{ secrets.API_KEY }}"}}
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
        {"id": "call", "type": "http", "url": format!("{up}/echo"), "headers": {"authorization": "Bearer {{ secrets.NOPE }}"}}
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
            .contains("only be inserted into an http step")
    );
}

/// The attack that worked with placeholders: print a placeholder through a
/// filter, then feed it back as run input. Secrets are now resolved only
/// where the definition names them, so neither step is possible.
#[tokio::test]
async fn run_data_can_never_ask_for_a_secret() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    app.put("/v1/secrets/K", json!({"value": SECRET})).await;
    for (field, text) in [
        ("body", "{{ secrets.K[1:] }}"),
        ("body", "{{ secrets.K | upper }}"),
        ("body", "x{{ secrets.K ~ '' }}"),
        ("url", "{{ trigger.base }}/echo?k={{ secrets.K|urlencode }}"),
        ("body", "{% for c in secrets.K %}{{ c }}{% endfor %}"),
    ] {
        let mut call = json!({"id": "call", "type": "http", "url": "{{ trigger.base }}/echo", "method": "POST"});
        call[field] = json!(text);
        let r = app
            .post("/v1/workflows", json!({"name": "leak", "steps": [call]}))
            .await;
        assert_eq!(r.status, 422, "{text} was accepted: {}", r.body);
        let msg = r.body["errors"][0]["message"].as_str().unwrap_or("");
        assert!(msg.contains("secret"), "{text}: {msg}");
    }
    // Nor choose where a secret goes: a step that sends one names its host.
    for url in [
        "{{ trigger.base }}/echo".to_owned(),
        format!("{up}{{{{ trigger.path }}}}"),
    ] {
        let r = app
            .post(
                "/v1/workflows",
                json!({"name": "leak", "steps": [{"id": "call", "type": "http", "url": url,
                    "headers": {"authorization": "Bearer {{ secrets.K }}"}}]}),
            )
            .await;
        assert_eq!(r.status, 422, "{url} was accepted");
    }
    for step in [
        json!({"id": "t", "type": "llm", "model": "gpt-4o", "prompt": "say {{ secrets.K }}"}),
        json!({"id": "t", "type": "transform", "expression": "secrets.K"}),
        json!({"id": "t", "type": "condition", "expression": "secrets.K == 'x'", "then": ["u"]}),
    ] {
        let mut steps = vec![step];
        steps.push(json!({"id": "u", "type": "transform", "inputs": 1}));
        let r = app
            .post("/v1/workflows", json!({"name": "leak", "steps": steps}))
            .await;
        assert_eq!(r.status, 422, "{}", r.body);
    }

    // Text that looks like a placeholder, or like a template, is sent as it
    // is: it never becomes a secret.
    app.create_workflow(json!({"id": "wf_echo", "name": "echo", "steps": [
        {"id": "call", "type": "http", "method": "POST", "url": format!("{up}/echo"),
         "headers": {"x-api-key": "{{ secrets.K }}"}, "body": "{{ trigger.text }}"}
    ]}))
    .await;
    let forged = "\u{27EA}secret:01JABCDEFGHJKMNPQRSTVWXYZ0:K\u{27EB} {{ secrets.K }} ${K}";
    let run = app
        .start_run("wf_echo", json!({"base": up, "text": forged}))
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let echo = &step(&done, "call")["output"]["body"];
    assert_eq!(echo["text"], forged);
    // The secret the definition names did reach the service (recorded
    // redacted).
    assert_eq!(echo["x_api_key"], "[redacted]");
    assert!(!done.to_string().contains(SECRET));
}

/// A secret sent in a query is on the wire URL-encoded; a service that
/// echoes the URL, and error texts that quote it, must not reveal it.
#[tokio::test]
async fn encoded_secrets_are_redacted() {
    const ODD: &str = "p+q/r=s t&u\"v";
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    app.put("/v1/secrets/ODD", json!({"value": ODD})).await;
    app.create_workflow(json!({"id": "wf_q", "name": "q", "steps": [
        {"id": "call", "type": "http", "url": format!("{up}/echo"), "query": {"key": "{{ secrets.ODD }}"}}
    ]}))
    .await;
    let run = app.start_run("wf_q", json!({"base": up})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let text = done.to_string();
    let form: String = url::form_urlencoded::byte_serialize(ODD.as_bytes()).collect();
    assert!(!text.contains(&form), "{text}");
    assert!(!text.contains("p+q/r=s"), "{text}");
    assert!(
        step(&done, "call")["output"]["body"]["uri"]
            .as_str()
            .unwrap()
            .contains("[redacted]")
    );

    // A call that cannot connect: the error must not quote the URL's secret.
    app.create_workflow(json!({"id": "wf_down", "name": "down", "steps": [
        {"id": "call", "type": "http", "url": "http://127.0.0.1:9/x?key={{ secrets.ODD }}",
         "retry": {"max_attempts": 1}}
    ]}))
    .await;
    let run = app.start_run("wf_down", json!({})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let text = done.to_string();
    assert!(
        !text.contains(&form) && !text.contains("p+q") && !text.contains("p%2Bq"),
        "{text}"
    );
}

/// Redirects: credentials go only to the origin the definition names; a
/// redirect to another scheme is an egress refusal.
#[tokio::test]
async fn redirects_keep_credentials_at_their_origin() {
    let (app, up, other) = (
        spawn_app().await,
        upstream::spawn().await,
        upstream::spawn().await,
    );
    app.put("/v1/secrets/K", json!({"value": SECRET})).await;
    app.create_workflow(json!({"id": "wf_r", "name": "r", "steps": [
        {"id": "call", "type": "http", "url": format!("{up}/redirect"),
         "query": {"to": "{{ trigger.to }}"},
         "headers": {"x-api-key": "{{ secrets.K }}", "authorization": "Bearer t", "x-plain": "kept"}}
    ]}))
    .await;
    let run = app
        .start_run("wf_r", json!({"base": up, "to": format!("{other}/echo")}))
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let seen = &step(&done, "call")["output"]["body"]["headers"];
    assert!(seen.get("x-api-key").is_none(), "{seen}");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert_eq!(seen["x-plain"], "kept");

    // The same origin keeps them.
    let run = app
        .start_run("wf_r", json!({"base": up, "to": format!("{up}/echo")}))
        .await;
    let done = app.wait_finished(&run).await;
    let seen = &step(&done, "call")["output"]["body"]["headers"];
    assert_eq!(seen["x-api-key"], "[redacted]");

    let run = app
        .start_run("wf_r", json!({"base": up, "to": "file:///etc/passwd"}))
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["error"]["code"], "egress_denied", "{done}");

    let r = app
        .post(
            "/v1/workflows",
            json!({"name": "host", "steps": [
                {"id": "call", "type": "http", "url": "http://example.com/", "headers": {"Host": "internal"}}
            ]}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Host")
    );
}

/// An error quoting a response body is cut after it is redacted: a secret
/// across the cut does not leave its first half.
#[tokio::test]
async fn a_cut_error_text_holds_no_part_of_a_secret() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    app.put("/v1/secrets/K", json!({"value": SECRET})).await;
    for pad in [280, 285, 290, 295] {
        app.create_workflow(json!({"id": format!("wf_pad{pad}"), "name": "pad", "steps": [
            {"id": "call", "type": "http", "url": format!("{up}/reject"), "retry": {"max_attempts": 1},
             "query": {"pad": pad}, "headers": {"x-api-key": "{{ secrets.K }}"}}
        ]}))
        .await;
        let run = app.start_run(&format!("wf_pad{pad}"), json!({})).await;
        let done = app.wait_finished(&run).await;
        let text = done.to_string();
        assert!(!text.contains(&SECRET[..8]), "pad {pad}: {}", done["error"]);
    }
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_a_wrong_master_key_fails_clearly() {
    use weft::adapters::http::EgressPolicy;
    use weft::adapters::sqlite::MasterKey;
    use weft::platform::{Platform, PlatformConfig};

    let dir = tempfile::tempdir().expect("dir");
    let db = dir.path().join("weft.db");
    let up = upstream::spawn().await;
    let config = |key: [u8; 32]| PlatformConfig {
        egress: EgressPolicy::allowing("127.0.0.0/8").expect("policy"),
        master_key: Some(MasterKey::from_bytes(key)),
        ..Default::default()
    };
    let platform = Platform::open_with(&db, config([7; 32]))
        .await
        .expect("open");
    let (_, key) = platform
        .create_workspace("at rest", None)
        .await
        .expect("ws");
    let app =
        crate::common::TestApp::external(&crate::common::serve(platform.router()).await, &key);
    assert_eq!(
        app.put("/v1/secrets/API_KEY", json!({"value": SECRET}))
            .await
            .status,
        200
    );
    let wf = app
        .create_workflow(json!({"name": "use", "steps": [
            {"id": "call", "type": "http", "url": format!("{up}/check-key"),
             "headers": {"x-api-key": "{{ secrets.API_KEY }}"}}
        ]}))
        .await;
    let done = app
        .wait_finished(&app.start_run(&wf, json!({})).await)
        .await;
    assert_eq!(
        step(&done, "call")["output"]["body"]["authorized"],
        true,
        "{done}"
    );
    drop(platform);

    // No file of the database (main, WAL, shared memory) holds the value.
    let mut scanned = 0;
    for entry in std::fs::read_dir(dir.path()).expect("list") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read");
        scanned += bytes.len();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret in the clear",
            path.display()
        );
    }
    assert!(scanned > 0);

    // Another master key: the secret cannot be read, and the step says why.
    let error = match Platform::open_with(&db, config([8; 32])).await {
        Err(e) => format!("{e:#}"),
        Ok(platform) => {
            let app = crate::common::TestApp::external(
                &crate::common::serve(platform.router()).await,
                &key,
            );
            let done = app
                .wait_finished(&app.start_run(&wf, json!({})).await)
                .await;
            assert_eq!(done["status"], "FAILED", "{done}");
            done["error"].to_string()
        }
    };
    assert!(error.contains("master key"), "{error}");
    assert!(!error.contains(SECRET));
}
