//! Inbound webhooks: a hook's public URL takes a request signed as its
//! scheme says, answers 202 at once, and starts one run per message.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::{TestApp, spawn_app};

/// The signing secret a sender would be given (`whsec_` + base64).
pub const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

/// Standard Webhooks headers for `body`, signed at `ts`.
pub fn standard_headers(id: &str, ts: i64, body: &str) -> Vec<(String, String)> {
    let key = base64::engine::general_purpose::STANDARD
        .decode(WHSEC.trim_start_matches("whsec_"))
        .expect("base64");
    let sig = mac(
        &key,
        &[
            id.as_bytes(),
            b".",
            ts.to_string().as_bytes(),
            b".",
            body.as_bytes(),
        ],
    );
    vec![
        ("content-type".into(), "application/json".into()),
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.to_string()),
        (
            "webhook-signature".into(),
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(sig)
            ),
        ),
    ]
}

pub async fn post_raw(
    app: &TestApp,
    path: &str,
    body: &str,
    headers: &[(String, String)],
) -> (u16, Value) {
    let mut req = app
        .client
        .post(format!("{}{path}", app.base))
        .body(body.to_owned());
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = res.text().await.expect("body");
    if status >= 400 {
        assert_eq!(ct, "application/problem+json", "{status} {text}");
    }
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub async fn runs_of(app: &TestApp, wf: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/runs?workflow_id={wf}&limit=100"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until the workflow has `n` runs (a hook's run starts after its
/// request is answered).
pub async fn wait_runs(app: &TestApp, wf: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + app.wait_deadline();
    loop {
        let runs = runs_of(app, wf).await;
        if runs.len() >= n {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} runs of {n}",
            runs.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn setup(app: &TestApp, verify: Value, extra: Value) -> (String, String) {
    let r = app
        .put("/v1/secrets/hook_secret", json!({"value": WHSEC}))
        .await;
    assert!(r.status < 300, "{}", r.body);
    let wf = app
        .create_workflow(json!({"name": "on hook", "steps": [
            {"id": "t", "type": "transform", "value": "{{ trigger }}"}
        ]}))
        .await;
    let mut body = json!({"verify": verify});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let r = app.post(&format!("/v1/workflows/{wf}/hooks"), body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let path = r.body["path"].as_str().expect("path").to_owned();
    assert!(path.starts_with("/v1/hooks/hk_") && path.len() == "/v1/hooks/hk_".len() + 40);
    // The secret is named, never shown.
    assert!(!r.body.to_string().contains(WHSEC), "{}", r.body);
    (wf, path)
}

#[tokio::test]
async fn a_signed_request_starts_one_run_per_message() {
    let app = spawn_app().await;
    let (wf, path) = setup(
        &app,
        json!({"scheme": "standard_webhooks", "secret": "hook_secret"}),
        json!({}),
    )
    .await;
    let body = r#"{"order": 42, "total": 9.5}"#;
    let now = chrono::Utc::now().timestamp();
    let headers = standard_headers("msg_1", now, body);
    let (status, answer) = post_raw(&app, &path, body, &headers).await;
    assert_eq!(status, 202, "{answer}");
    assert!(
        answer["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("rcpt_")),
        "{answer}"
    );
    let runs = wait_runs(&app, &wf, 1).await;
    let run = app
        .wait_finished(runs[0]["run_id"].as_str().expect("run id"))
        .await;
    assert_eq!(run["status"], "COMPLETED", "{run}");
    assert_eq!(run["input"], json!({"order": 42, "total": 9.5}));
    assert_eq!(run["output"], json!({"order": 42, "total": 9.5}));
    // The sender retries the same message (same webhook-id): accepted,
    // and no second run.
    let (status, _) = post_raw(&app, &path, body, &headers).await;
    assert_eq!(status, 202);
    // Another message does start one.
    let other = standard_headers("msg_2", now, body);
    assert_eq!(post_raw(&app, &path, body, &other).await.0, 202);
    wait_runs(&app, &wf, 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(runs_of(&app, &wf).await.len(), 2);
}

#[tokio::test]
async fn a_request_that_is_not_signed_right_is_refused_and_starts_nothing() {
    let app = spawn_app().await;
    let (wf, path) = setup(
        &app,
        json!({"scheme": "standard_webhooks", "secret": "hook_secret"}),
        json!({}),
    )
    .await;
    let body = r#"{"order": 1}"#;
    let now = chrono::Utc::now().timestamp();
    // A changed body.
    let headers = standard_headers("msg_1", now, body);
    let (status, p) = post_raw(&app, &path, r#"{"order": 2}"#, &headers).await;
    assert_eq!(status, 401, "{p}");
    assert_eq!(p["type"], "/problems/signature-invalid", "{p}");
    // Signed six minutes ago (a replay).
    let old = standard_headers("msg_2", now - 360, body);
    let (status, p) = post_raw(&app, &path, body, &old).await;
    assert_eq!(status, 401);
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("5 minutes")),
        "{p}"
    );
    // No signature at all.
    let (status, p) = post_raw(&app, &path, body, &[]).await;
    assert_eq!(status, 401);
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("webhook-id")),
        "{p}"
    );
    // A hook nobody made.
    let (status, _) = post_raw(
        &app,
        "/v1/hooks/hk_0000000000000000000000000000000000000000",
        body,
        &headers,
    )
    .await;
    assert_eq!(status, 404);
    // Too large.
    let big = format!("\"{}\"", "x".repeat(300 * 1024));
    let (status, _) = post_raw(&app, &path, &big, &standard_headers("msg_3", now, &big)).await;
    assert_eq!(status, 413);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(runs_of(&app, &wf).await.is_empty());
}

#[tokio::test]
async fn github_and_hmac_hooks_make_their_input_and_dedupe_from_templates() {
    let app = spawn_app().await;
    let (wf, path) = setup(
        &app,
        json!({"scheme": "github", "secret": "hook_secret"}),
        json!({"input": {"repo": "{{ body.repository.name }}", "event": "{{ headers['x-github-event'] }}"}}),
    )
    .await;
    let body = r#"{"repository": {"name": "weft"}, "action": "opened"}"#;
    let sig = format!(
        "sha256={}",
        hex::encode(mac(WHSEC.as_bytes(), &[body.as_bytes()]))
    );
    let headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("x-hub-signature-256".to_owned(), sig),
        ("x-github-event".to_owned(), "pull_request".to_owned()),
        ("x-github-delivery".to_owned(), "d-1".to_owned()),
        ("authorization".to_owned(), "Bearer not-for-runs".to_owned()),
    ];
    assert_eq!(post_raw(&app, &path, body, &headers).await.0, 202);
    assert_eq!(post_raw(&app, &path, body, &headers).await.0, 202);
    let runs = wait_runs(&app, &wf, 1).await;
    let run = app
        .wait_finished(runs[0]["run_id"].as_str().expect("run id"))
        .await;
    assert_eq!(
        run["input"],
        json!({"repo": "weft", "event": "pull_request"})
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        runs_of(&app, &wf).await.len(),
        1,
        "one delivery id, one run"
    );

    // A named HMAC header with a form body; dedupe by a field of it.
    let (wf2, path2) = setup(
        &app,
        json!({"scheme": "hmac", "secret": "hook_secret", "header": "X-Signature", "encoding": "base64"}),
        json!({"dedupe": "{{ body.id }}", "input": {"all": "{{ headers }}"}}),
    )
    .await;
    let form = "id=7&text=hello+there";
    let sig =
        base64::engine::general_purpose::STANDARD.encode(mac(WHSEC.as_bytes(), &[form.as_bytes()]));
    let headers = vec![
        (
            "content-type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("x-signature".to_owned(), sig),
        ("authorization".to_owned(), "Bearer not-for-runs".to_owned()),
        ("cookie".to_owned(), "session=secret".to_owned()),
    ];
    assert_eq!(post_raw(&app, &path2, form, &headers).await.0, 202);
    let runs = wait_runs(&app, &wf2, 1).await;
    let run = app
        .wait_finished(runs[0]["run_id"].as_str().expect("run id"))
        .await;
    // Credentials of the hop never reach a run.
    let all = run["input"]["all"].to_string();
    assert!(
        all.contains("x-signature")
            && !all.contains("not-for-runs")
            && !all.contains("session=secret"),
        "{all}"
    );
}

#[tokio::test]
async fn hooks_are_managed_per_workflow_and_hidden_from_other_workspaces() {
    let app = spawn_app().await;
    let (wf, path) = setup(
        &app,
        json!({"scheme": "stripe", "secret": "hook_secret"}),
        json!({"description": "payments"}),
    )
    .await;
    let id = path.trim_start_matches("/v1/hooks/");
    let r = app.get(&format!("/v1/workflows/{wf}/hooks")).await;
    assert_eq!(
        r.body["items"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.body
    );
    assert_eq!(
        r.body["items"][0]["verify"],
        json!({"scheme": "stripe", "secret": "hook_secret"})
    );
    let other = TestApp::external(&app.base, &app.other_workspace().await);
    assert_eq!(
        other
            .get(&format!("/v1/workflows/{wf}/hooks/{id}"))
            .await
            .status,
        404
    );
    assert_eq!(
        other
            .delete(&format!("/v1/workflows/{wf}/hooks/{id}"))
            .await
            .status,
        404
    );
    assert_eq!(
        app.get(&format!("/v1/workflows/{wf}/hooks/{id}"))
            .await
            .status,
        200
    );

    // Bad hooks are refused with their paths.
    let r = app
        .post(
            &format!("/v1/workflows/{wf}/hooks"),
            json!({"verify": {"scheme": "github", "secret": "hook_secret"}, "extra": 1}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(crate::common::error_paths(&r.body), ["$.extra"]);
    let r = app
        .post(
            &format!("/v1/workflows/{wf}/hooks"),
            json!({"verify": {"scheme": "github", "secret": "nope"}, "dedupe": "{{ body."}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let paths = crate::common::error_paths(&r.body);
    assert!(
        paths.contains(&"$.verify.secret") && paths.contains(&"$.dedupe"),
        "{paths:?}"
    );
    let r = app
        .post(
            &format!("/v1/workflows/{wf}/hooks"),
            json!({"verify": {"scheme": "carrier-pigeon", "secret": "hook_secret"}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = app
        .post(&format!("/v1/workflows/{wf}/hooks"), json!({"verify": {"scheme": "hmac", "secret": "hook_secret", "header": "Authorization"}}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        app.post(
            "/v1/workflows/wf_nope/hooks",
            json!({"verify": {"scheme": "github", "secret": "hook_secret"}})
        )
        .await
        .status,
        404
    );

    // Deleted: its URL answers 404.
    assert_eq!(
        app.delete(&format!("/v1/workflows/{wf}/hooks/{id}"))
            .await
            .status,
        204
    );
    let (status, _) = post_raw(&app, &path, "{}", &[]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn secrets_that_cannot_sign_and_hooks_of_archived_workflows_take_nothing() {
    let app = spawn_app().await;
    let (wf, path) = setup(
        &app,
        json!({"scheme": "standard_webhooks", "secret": "hook_secret"}),
        json!({}),
    )
    .await;
    // Only secrets named hook_… can check requests; a key anybody could
    // sign with is refused.
    let r = app
        .put(
            "/v1/secrets/stripe_api_key",
            json!({"value": "sk_live_0123456789abcdef"}),
        )
        .await;
    assert!(r.status < 300, "{}", r.body);
    let r = app
        .post(
            &format!("/v1/workflows/{wf}/hooks"),
            json!({"verify": {"scheme": "github", "secret": "stripe_api_key"}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.body.to_string().contains("hook_"), "{}", r.body);
    for weak in ["whsec_", "whsec_AA=="] {
        let r = app
            .put("/v1/secrets/hook_weak", json!({"value": weak}))
            .await;
        assert!(r.status < 300, "{}", r.body);
        let r = app
            .post(
                &format!("/v1/workflows/{wf}/hooks"),
                json!({"verify": {"scheme": "standard_webhooks", "secret": "hook_weak"}}),
            )
            .await;
        assert_eq!(r.status, 422, "{weak}: {}", r.body);
    }
    // The secret changed to one that cannot sign after the hook was made:
    // a request signed with an empty key is refused, saying nothing of why.
    let r = app
        .put("/v1/secrets/hook_secret", json!({"value": "whsec_"}))
        .await;
    assert!(r.status < 300, "{}", r.body);
    let body = r#"{"x": 1}"#;
    let now = chrono::Utc::now().timestamp();
    let sig = base64::engine::general_purpose::STANDARD.encode(mac(
        b"",
        &[b"m1.", now.to_string().as_bytes(), b".", body.as_bytes()],
    ));
    let forged = vec![
        ("webhook-id".to_owned(), "m1".to_owned()),
        ("webhook-timestamp".to_owned(), now.to_string()),
        ("webhook-signature".to_owned(), format!("v1,{sig}")),
    ];
    let (status, p) = post_raw(&app, &path, body, &forged).await;
    assert_eq!(status, 401, "{p}");
    assert!(!p.to_string().contains("secret"), "{p}");
    // A timestamp no clock has is refused, not a crash.
    let mut odd = forged.clone();
    odd[1].1 = "-9223372036854775808".into();
    assert_eq!(post_raw(&app, &path, body, &odd).await.0, 401);

    // Archived: the hook's URL is gone with its workflow.
    let r = app
        .put("/v1/secrets/hook_secret", json!({"value": WHSEC}))
        .await;
    assert!(r.status < 300, "{}", r.body);
    assert_eq!(app.delete(&format!("/v1/workflows/{wf}")).await.status, 204);
    let (status, _) = post_raw(&app, &path, body, &standard_headers("m2", now, body)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_dedupe_that_makes_nothing_of_a_request_refuses_it() {
    let app = spawn_app().await;
    let (wf, path) = setup(
        &app,
        json!({"scheme": "hmac", "secret": "hook_secret", "header": "X-Sig"}),
        json!({"dedupe": "{{ body.event_id }}"}),
    )
    .await;
    let sign = |b: &str| hex::encode(mac(WHSEC.as_bytes(), &[b.as_bytes()]));
    let body = r#"{"other": 1}"#;
    let headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("x-sig".to_owned(), sign(body)),
    ];
    let (status, p) = post_raw(&app, &path, body, &headers).await;
    assert_eq!(status, 400, "{p}");
    assert!(
        p["detail"].as_str().is_some_and(|d| d.contains("dedupe")),
        "{p}"
    );
    // The same message id in two bodies is one message.
    for b in [
        r#"{"event_id": "e1", "n": 1}"#,
        r#"{"event_id": "e1", "n": 2}"#,
    ] {
        let headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-sig".to_owned(), sign(b)),
        ];
        assert_eq!(post_raw(&app, &path, b, &headers).await.0, 202);
    }
    wait_runs(&app, &wf, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(runs_of(&app, &wf).await.len(), 1);
}
