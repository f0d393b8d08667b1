//! Outbound webhooks: an endpoint gets a signed delivery when a run ends
//! (checked with the Standard Webhooks reference library), failed ones are
//! tried again with the same id, a 410 disables the endpoint.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};

use crate::common::{TestApp, serve, spawn_app, spawn_app_with};

/// A receiver of deliveries: records each and answers with the next
/// status queued (200 when none is).
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl Receiver {
    async fn start(answers: &[u16]) -> (Self, String) {
        let r = Receiver::default();
        r.answers.lock().expect("lock").extend(answers);
        let app = axum::Router::new()
            .route("/hook", post(receive))
            .with_state(r.clone());
        let base = serve(app).await;
        (r, format!("{base}/hook"))
    }

    fn got(&self) -> Vec<(HeaderMap, Bytes)> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until `n` deliveries came.
    async fn wait_for(&self, n: usize, within: Duration) -> Vec<(HeaderMap, Bytes)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} deliveries of {n}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    r.got.lock().expect("lock").push((headers, body));
    let code = r.answers.lock().expect("lock").pop_front().unwrap_or(200);
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        format!("answer {code}"),
    )
}

fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    standardwebhooks::Webhook::new(secret)
        .map_err(|e| e.to_string())?
        .verify(body, headers)
        .map_err(|e| e.to_string())
}

async fn endpoint(app: &TestApp, body: Value) -> (String, String) {
    let r = app.post("/v1/endpoints", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("whsec_"));
    (r.body["id"].as_str().expect("id").to_owned(), secret)
}

async fn finished_run(app: &TestApp, wf: &str, input: Value) -> Value {
    let run = app.start_run(wf, input).await;
    app.wait_finished(&run).await
}

fn workflow() -> Value {
    json!({"name": "notify", "steps": [
        {"id": "t", "type": "transform", "value": {"doubled": "{{ trigger.n * 2 }}"}}
    ]})
}

#[tokio::test]
async fn a_run_that_ends_is_delivered_signed_and_a_failure_is_tried_again_with_the_same_id() {
    let app = spawn_app().await;
    let (rx, url) = Receiver::start(&[503]).await;
    let (ep, secret) = endpoint(&app, json!({"url": url, "description": "orders"})).await;
    // The secret is shown once.
    let shown = app.get(&format!("/v1/endpoints/{ep}")).await;
    assert!(!shown.body.to_string().contains(&secret), "{}", shown.body);
    let wf = app.create_workflow(workflow()).await;
    let run = finished_run(&app, &wf, json!({"n": 21})).await;
    // The first attempt is answered 503; the second comes about 5 s later.
    let got = rx.wait_for(2, Duration::from_secs(30)).await;
    for (headers, body) in &got {
        verify(&secret, headers, body).expect("signed as Standard Webhooks says");
    }
    assert_eq!(got[0].0["webhook-id"], got[1].0["webhook-id"]);
    let body: Value = serde_json::from_slice(&got[1].1).expect("json");
    assert_eq!(body["type"], "run.completed");
    assert_eq!(body["data"]["run_id"], run["run_id"]);
    assert_eq!(body["data"]["output"], json!({"doubled": 42}));
    assert_eq!(body["data"]["status"], "COMPLETED");
    // A changed body does not verify.
    let mut forged = got[1].1.to_vec();
    forged[10] ^= 1;
    assert!(verify(&secret, &got[1].0, &forged).is_err());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let r = app.get(&format!("/v1/endpoints/{ep}/deliveries")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        if r.body["items"][0]["status"] == "succeeded" || tokio::time::Instant::now() > deadline {
            break r.body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let d = &listed["items"][0];
    assert_eq!(d["status"], "succeeded", "{listed}");
    assert_eq!(d["attempts"][0]["status_code"], 503);
    // The start of each answer is kept.
    assert_eq!(d["attempts"][0]["response"], "answer 503");
    assert_eq!(d["attempts"][1]["status_code"], 200);
    assert_eq!(d["event_type"], "run.completed");
    let id = d["id"].as_str().expect("id");
    let one = app.get(&format!("/v1/deliveries/{id}")).await;
    assert_eq!(one.status, 200, "{}", one.body);
    assert_eq!(one.body["endpoint_id"], ep.as_str());

    // Replayed: sent again, same id.
    let r = app
        .post(&format!("/v1/deliveries/{id}/replay"), json!({}))
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got[2].0["webhook-id"], got[0].0["webhook-id"]);
}

#[tokio::test]
async fn endpoints_take_only_the_events_and_workflows_they_name_and_a_410_disables_one() {
    let app = spawn_app().await;
    let wf = app.create_workflow(workflow()).await;
    let other_wf = app.create_workflow(workflow()).await;
    let (failed_rx, failed_url) = Receiver::start(&[]).await;
    endpoint(&app, json!({"url": failed_url, "events": ["run.failed"]})).await;
    let (mine_rx, mine_url) = Receiver::start(&[]).await;
    endpoint(&app, json!({"url": mine_url, "workflow_ids": [wf]})).await;
    let (gone_rx, gone_url) = Receiver::start(&[410]).await;
    let (gone, _) = endpoint(&app, json!({"url": gone_url})).await;

    finished_run(&app, &other_wf, json!({"n": 1})).await;
    finished_run(&app, &wf, json!({"n": 2})).await;
    gone_rx.wait_for(1, Duration::from_secs(10)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = app.get(&format!("/v1/endpoints/{gone}")).await;
        if e.body["disabled"] == true {
            assert!(
                e.body["disabled_reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("410")),
                "{}",
                e.body
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", e.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The endpoint of one workflow hears of its run, and (whatever its
    // workflows) that the other endpoint was disabled.
    let got = mine_rx.wait_for(2, Duration::from_secs(10)).await;
    let bodies: Vec<Value> = got
        .iter()
        .map(|(_, b)| serde_json::from_slice(b).expect("json"))
        .collect();
    let of_type = |ty: &str| bodies.iter().find(|b| b["type"] == ty).cloned();
    let run = of_type("run.completed").expect("the run's event");
    assert_eq!(run["data"]["workflow_id"], wf.as_str());
    let told = of_type("endpoint.disabled").expect("told of the disabled one");
    assert_eq!(told["data"]["endpoint_id"], gone.as_str());
    assert!(
        told["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("410"))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A failed-runs endpoint heard nothing; the disabled one nothing more.
    assert!(failed_rx.got().is_empty());
    assert_eq!(gone_rx.got().len(), 1);
    assert_eq!(mine_rx.got().len(), 2);

    // Its failed delivery is a dead letter: listed by status, replayable
    // once the endpoint is on again.
    let list = |status: &'static str| {
        let (app, gone) = (&app, &gone);
        async move {
            app.get(&format!("/v1/endpoints/{gone}/deliveries?status={status}"))
                .await
        }
    };
    // The one answered 410, and the other run's if it was made before the
    // endpoint was off (then never sent): once none is pending.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while list("pending").await.body["items"] != json!([]) {
        assert!(tokio::time::Instant::now() < deadline, "still pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = list("failed").await;
    assert_eq!(failed.status, 200, "{}", failed.body);
    let n = failed.body["items"].as_array().map_or(0, Vec::len);
    assert!(n == 1 || n == 2, "{}", failed.body);
    assert_eq!(failed.body["items"][0]["status"], "failed");
    assert_eq!(list("succeeded").await.body["items"], json!([]));
    let bad = list("lost").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let since = json!({"since": "2020-01-01T00:00:00Z"});
    let replay = format!("/v1/endpoints/{gone}/replay");
    assert_eq!(app.post(&replay, since.clone()).await.status, 409);
    let on = app
        .call(
            "PATCH",
            &format!("/v1/endpoints/{gone}"),
            Some(json!({"disabled": false})),
            Some(&app.key),
            &[],
        )
        .await;
    assert_eq!(on.status, 200, "{}", on.body);
    let bad = app.post(&replay, json!({"since": "yesterday"})).await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    // Nothing failed of events still to come.
    let future = app
        .post(&replay, json!({"since": "2099-01-01T00:00:00Z"}))
        .await;
    assert_eq!(future.body, json!({"replayed": 0, "more": false}));
    let r = app.post(&replay, since).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body, json!({"replayed": n, "more": false}));
    let got = gone_rx.wait_for(1 + n, Duration::from_secs(10)).await;
    assert!(
        got[1..]
            .iter()
            .any(|(h, _)| h["webhook-id"] == got[0].0["webhook-id"]),
        "the same id again"
    );
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_old_one() {
    let app = spawn_app().await;
    let (rx, url) = Receiver::start(&[]).await;
    let (ep, old) = endpoint(&app, json!({"url": url})).await;
    let r = app
        .post(&format!("/v1/endpoints/{ep}/rotate-secret"), json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let new = r.body["secret"].as_str().expect("secret").to_owned();
    assert_ne!(new, old);
    let wf = app.create_workflow(workflow()).await;
    finished_run(&app, &wf, json!({"n": 3})).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let (headers, body) = &got[0];
    let sigs = headers["webhook-signature"].to_str().unwrap_or_default();
    assert_eq!(sigs.split(' ').count(), 2, "{sigs}");
    verify(&new, headers, body).expect("the new key signs");
    verify(&old, headers, body).expect("the old key signs for a day");
}

#[tokio::test]
async fn bad_endpoints_are_refused_and_other_workspaces_see_none() {
    // The default egress policy: no internal addresses.
    let strict = spawn_app_with(Default::default()).await;
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://127.0.0.1:9/x",
        "ftp://example.com/",
        "not a url",
        "https://user:pw@example.com/",
    ] {
        let r = strict.post("/v1/endpoints", json!({"url": url})).await;
        assert_eq!(r.status, 422, "{url}: {}", r.body);
        assert_eq!(crate::common::error_paths(&r.body), ["$.url"], "{url}");
    }
    let r = strict.post("/v1/endpoints", json!({"url": "https://example.com/h", "events": ["run.exploded"], "workflow_ids": ["wf_nope"], "color": 1})).await;
    assert_eq!(r.status, 422, "{}", r.body);
    let paths = crate::common::error_paths(&r.body);
    assert!(
        paths.contains(&"$.events[0]") && paths.contains(&"$.color"),
        "{paths:?}"
    );
    for bad in [json!(0), json!(1001), json!("fast"), json!(-1)] {
        let r = strict
            .post(
                "/v1/endpoints",
                json!({"url": "https://example.com/h", "rate_limit": bad}),
            )
            .await;
        assert_eq!(r.status, 422, "{bad}: {}", r.body);
        assert_eq!(
            crate::common::error_paths(&r.body),
            ["$.rate_limit"],
            "{bad}"
        );
    }
    let limited = strict
        .post(
            "/v1/endpoints",
            json!({"url": "https://example.com/h", "rate_limit": 5}),
        )
        .await;
    assert_eq!(limited.status, 201, "{}", limited.body);
    assert_eq!(limited.body["rate_limit"], 5);
    let r = strict
        .post(
            "/v1/endpoints",
            json!({"url": "https://example.com/h", "workflow_ids": ["wf_nope"]}),
        )
        .await;
    assert_eq!(
        crate::common::error_paths(&r.body),
        ["$.workflow_ids[0]"],
        "{}",
        r.body
    );

    let app = spawn_app().await;
    let (_, url) = Receiver::start(&[]).await;
    let (ep, _) = endpoint(&app, json!({"url": url})).await;
    let other = TestApp::external(&app.base, &app.other_workspace().await);
    assert_eq!(other.get(&format!("/v1/endpoints/{ep}")).await.status, 404);
    assert_eq!(
        other
            .post(&format!("/v1/endpoints/{ep}/rotate-secret"), json!({}))
            .await
            .status,
        404
    );
    assert_eq!(
        other
            .get(&format!("/v1/endpoints/{ep}/deliveries"))
            .await
            .status,
        404
    );
    assert_eq!(
        other.delete(&format!("/v1/endpoints/{ep}")).await.status,
        404
    );
    assert_eq!(other.get("/v1/endpoints").await.body["items"], json!([]));
    let r = app
        .call(
            "PATCH",
            &format!("/v1/endpoints/{ep}"),
            Some(json!({"disabled": true})),
            Some(&app.key),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["disabled"], true);
    assert_eq!(app.delete(&format!("/v1/endpoints/{ep}")).await.status, 204);
    assert_eq!(app.get(&format!("/v1/endpoints/{ep}")).await.status, 404);
}

/// A receiver that never answers in time.
async fn hanging() -> String {
    let app = axum::Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK
        }),
    );
    format!("{}/hook", serve(app).await)
}

#[tokio::test]
async fn one_tenants_hanging_endpoints_do_not_hold_up_anothers_deliveries() {
    let app = spawn_app().await;
    let slow = hanging().await;
    for _ in 0..3 {
        endpoint(&app, json!({"url": slow})).await;
    }
    let wf = app.create_workflow(workflow()).await;
    for n in 0..4 {
        finished_run(&app, &wf, json!({"n": n})).await;
    }
    // Another workspace's run ends while the first one's twelve
    // deliveries hang.
    let other = TestApp::external(&app.base, &app.other_workspace().await);
    let (rx, url) = Receiver::start(&[]).await;
    endpoint(&other, json!({"url": url})).await;
    let theirs = other.create_workflow(workflow()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ended = tokio::time::Instant::now();
    finished_run(&other, &theirs, json!({"n": 9})).await;
    rx.wait_for(1, Duration::from_secs(30)).await;
    let waited = ended.elapsed();
    // Not a speed claim: a send held up behind the hanging ones would wait
    // their 15 s timeout.
    assert!(waited < Duration::from_secs(8), "{waited:?}");
}

#[tokio::test]
async fn a_second_rotation_ends_the_first_old_key_and_replays_need_a_live_endpoint() {
    let app = spawn_app().await;
    let (rx, url) = Receiver::start(&[]).await;
    let (ep, first) = endpoint(&app, json!({"url": url})).await;
    let mut secrets = vec![first];
    for _ in 0..3 {
        let r = app
            .post(&format!("/v1/endpoints/{ep}/rotate-secret"), json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        secrets.push(r.body["secret"].as_str().expect("secret").to_owned());
    }
    let wf = app.create_workflow(workflow()).await;
    finished_run(&app, &wf, json!({"n": 1})).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let (headers, body) = &got[0];
    let sigs = headers["webhook-signature"].to_str().unwrap_or_default();
    assert_eq!(
        sigs.split(' ').count(),
        2,
        "the newest key and the one it replaced: {sigs}"
    );
    verify(&secrets[3], headers, body).expect("the newest key signs");
    verify(&secrets[2], headers, body).expect("the key it replaced signs for a day");
    assert!(verify(&secrets[1], headers, body).is_err());
    assert!(verify(&secrets[0], headers, body).is_err());

    let r = app.get(&format!("/v1/endpoints/{ep}/deliveries")).await;
    let id = r.body["items"][0]["id"].as_str().expect("id").to_owned();
    let r = app
        .call(
            "PATCH",
            &format!("/v1/endpoints/{ep}"),
            Some(json!({"disabled": true})),
            Some(&app.key),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let other = TestApp::external(&app.base, &app.other_workspace().await);
    let theirs = other
        .post(&format!("/v1/deliveries/{id}/replay"), json!({}))
        .await;
    assert_eq!(theirs.status, 404, "{}", theirs.body);
    assert_eq!(other.get(&format!("/v1/deliveries/{id}")).await.status, 404);
    let r = app
        .post(&format!("/v1/deliveries/{id}/replay"), json!({}))
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(app.delete(&format!("/v1/endpoints/{ep}")).await.status, 204);
    let r = app
        .post(&format!("/v1/deliveries/{id}/replay"), json!({}))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
}

#[tokio::test]
async fn a_step_that_waits_for_approval_or_fails_is_told_to_the_endpoints_that_take_it() {
    let app = spawn_app().await;
    let (rx, url) = Receiver::start(&[]).await;
    let (_, secret) = endpoint(
        &app,
        json!({"url": url, "events": ["run.waiting", "step.failed", "run.failed"]}),
    )
    .await;
    let body_of = |got: &(HeaderMap, Bytes)| -> Value {
        verify(&secret, &got.0, &got.1).expect("signed");
        serde_json::from_slice(&got.1).expect("json")
    };

    // Waiting for an approval: told once, with the step.
    let wf = app
        .create_workflow(json!({"name": "approve", "steps": [
            {"id": "ok", "type": "approval", "timeout": "1d"}
        ]}))
        .await;
    let run = app.start_run(&wf, json!({})).await;
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let waiting = body_of(&got[0]);
    assert_eq!(waiting["type"], "run.waiting", "{waiting}");
    assert_eq!(waiting["data"]["run_id"], run.as_str());
    assert_eq!(waiting["data"]["step"]["id"], "ok");
    assert_eq!(waiting["data"]["step"]["type"], "approval");
    assert!(waiting["data"]["step"]["times_out_at"].is_string());
    let r = app
        .post(
            &format!("/v1/runs/{run}/steps/ok/complete"),
            json!({"output": {"approved": true}}),
        )
        .await;
    assert!(r.status < 300, "{}", r.body);
    app.wait_finished(&run).await;

    // A step that fails (its one attempt answered 500): the step, then the
    // run.
    let (_, upstream) = Receiver::start(&[500]).await;
    let wf = app
        .create_workflow(json!({"name": "fails", "steps": [
            {"id": "call", "type": "http", "url": upstream, "retry": {"max_attempts": 1}}
        ]}))
        .await;
    let failed = finished_run(&app, &wf, json!({})).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    let got = rx.wait_for(3, Duration::from_secs(10)).await;
    let types: Vec<Value> = got[1..]
        .iter()
        .map(|g| body_of(g)["type"].clone())
        .collect();
    assert!(
        types.contains(&json!("step.failed")) && types.contains(&json!("run.failed")),
        "{types:?}"
    );
    let step = got[1..]
        .iter()
        .map(body_of)
        .find(|b| b["type"] == "step.failed")
        .expect("step.failed");
    assert_eq!(step["data"]["step"]["id"], "call");
    assert!(step["data"]["step"]["error"]["code"].is_string(), "{step}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Nothing it did not ask for (the approved run's completion).
    assert_eq!(rx.got().len(), 3);
}

#[tokio::test]
async fn a_model_call_refused_for_budget_is_told() {
    let (app, _) = crate::common::providers::setup(true).await;
    let (rx, url) = Receiver::start(&[]).await;
    endpoint(&app, json!({"url": url, "events": ["budget.exceeded"]})).await;
    let wf = app
        .create_workflow(json!({"name": "b", "budget_usd": 0.0001, "steps": [
            {"id": "ask", "type": "llm", "model": "gpt-4o", "max_tokens": 1000, "prompt": "hi"}
        ]}))
        .await;
    let run = finished_run(&app, &wf, json!({})).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let body: Value = serde_json::from_slice(&got[0].1).expect("json");
    assert_eq!(body["type"], "budget.exceeded", "{body}");
    assert_eq!(body["data"]["step"]["id"], "ask");
    assert_eq!(body["data"]["step"]["error"]["code"], "budget_exceeded");
}

#[tokio::test]
async fn a_2xx_whose_body_is_cut_off_is_no_success() {
    let app = spawn_app().await;
    // Answers 200, promises 100 bytes, sends 10 and hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/cut", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let _ = sock.read(&mut buf).await;
            let _ = sock
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
                .await;
            drop(sock);
        }
    });
    let (ep, _) = endpoint(&app, json!({"url": url})).await;
    let wf = app.create_workflow(workflow()).await;
    finished_run(&app, &wf, json!({"n": 1})).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let d = loop {
        let r = app.get(&format!("/v1/endpoints/{ep}/deliveries")).await;
        if r.body["items"][0]["attempts"][0].is_object() {
            break r.body["items"][0].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["status"], "pending", "tried again later: {d}");
    let attempt = &d["attempts"][0];
    assert_eq!(attempt["status_code"], 200);
    assert!(
        attempt["error"]
            .as_str()
            .is_some_and(|e| e.contains("cut off")),
        "{attempt}"
    );
}
