//! A run survives `kill -9` of the `weft dev` process: after a restart it
//! resumes where it stood, finished steps are not executed again, timers
//! keep their time and approvals can still be completed.

use std::time::{Duration, Instant};

use crate::common::server::{KEY, start, start_with};
use crate::common::{TestApp, step, upstream};
use serde_json::json;

#[tokio::test]
async fn runs_resume_after_kill_9() {
    let dir = tempfile::tempdir().expect("dir");
    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);

    app.create_workflow(json!({"id": "wf_crash", "name": "Crash", "steps": [
        {"id": "before", "type": "transform", "inputs": {"n": "{{ trigger.n }}"}},
        {"id": "nap", "type": "delay", "duration": "3s", "depends_on": ["before"]},
        {"id": "after", "type": "transform", "inputs": "{{ before.n + 1 }}", "depends_on": ["nap"]}
    ]}))
    .await;
    app.create_workflow(json!({"id": "wf_gate", "name": "Gate", "steps": [
        {"id": "ask", "type": "approval"},
        {"id": "then", "type": "transform", "inputs": "{{ ask.ok }}"}
    ]}))
    .await;
    let timed = app.start_run("wf_crash", json!({"n": 41})).await;
    let gated = app.start_run("wf_gate", json!({})).await;
    let waiting = app
        .wait_run(&timed, |b| step(b, "nap")["status"] == "waiting")
        .await;
    app.wait_run(&gated, |b| b["status"] == "WAITING").await;
    let before = step(&waiting, "before").clone();
    let wake_at = step(&waiting, "nap")["wake_at"].clone();

    server.kill_9();
    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);

    let done = app.wait_finished(&timed).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["output"], 42);
    let after_restart = step(&done, "before");
    assert_eq!(
        after_restart["attempts"].as_array().map(Vec::len),
        Some(1),
        "a finished step never runs again"
    );
    assert_eq!(after_restart["started_at"], before["started_at"]);
    assert_eq!(after_restart["output"], before["output"]);
    assert_eq!(
        step(&done, "nap")["wake_at"],
        wake_at,
        "the timer kept its time"
    );
    let nap_end =
        chrono::DateTime::parse_from_rfc3339(step(&done, "nap")["finished_at"].as_str().unwrap())
            .unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(wake_at.as_str().unwrap()).unwrap();
    assert!(nap_end >= due, "the delay did not end early");

    // The approval is still waiting and can be completed on the new process.
    let r = app
        .post(
            &format!("/v1/runs/{gated}/steps/ask/complete"),
            json!({"output": {"ok": "yes"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = app.wait_finished(&gated).await;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["output"], "yes");
}

#[tokio::test]
async fn durable_mode_keeps_what_it_acknowledged() {
    // `--durable` syncs every commit; what the API acknowledged is there
    // after a kill, and runs go on as in the default mode.
    let dir = tempfile::tempdir().expect("dir");
    let server = start_with(dir.path(), &["--durable"]);
    let app = TestApp::external(&server.base, KEY);
    app.create_workflow(json!({"id": "wf_durable", "name": "Durable", "steps": [
        {"id": "a", "type": "transform", "inputs": "{{ trigger.n * 2 }}"},
        {"id": "ask", "type": "approval", "depends_on": ["a"]}
    ]}))
    .await;
    let runs: Vec<String> = start_runs(&app, 20).await;
    for r in &runs {
        app.wait_run(r, |b| b["status"] == "WAITING").await;
    }
    server.kill_9();
    let server = start_with(dir.path(), &["--durable"]);
    let app = TestApp::external(&server.base, KEY);
    for r in &runs {
        let ok = app
            .post(
                &format!("/v1/runs/{r}/steps/ask/complete"),
                json!({"output": true}),
            )
            .await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(app.wait_finished(r).await["status"], "COMPLETED");
    }
    drop(server);
}

/// Starts `n` runs of `wf_durable`.
async fn start_runs(app: &TestApp, n: i64) -> Vec<String> {
    let mut out = Vec::new();
    let starts: Vec<_> = (0..n)
        .map(|i| app.start_run("wf_durable", json!({"n": i})))
        .collect();
    for s in starts {
        out.push(s.await);
    }
    out
}

#[tokio::test]
async fn the_dev_key_workspace_and_secrets_survive_restarts() {
    let dir = tempfile::tempdir().expect("dir");
    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);
    let up = upstream::spawn().await;
    app.create_workflow(json!({"id": "wf_keep", "name": "Keep", "steps": [
        {"id": "call", "type": "http", "url": format!("{up}/check-key"), "headers": {"x-api-key": "{{ secrets.API_KEY }}"}}
    ]}))
    .await;
    assert_eq!(
        app.put("/v1/secrets/API_KEY", json!({"value": "s3cret-value-42"}))
            .await
            .status,
        200
    );
    server.kill_9();
    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);
    assert_eq!(app.get("/v1/workflows/wf_keep").await.status, 200);
    // The secret is still readable: the master key file kept its key.
    let run = app.start_run("wf_keep", json!({})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(step(&done, "call")["output"]["body"]["authorized"], true);
    drop(server);
}

#[tokio::test]
async fn an_http_call_in_flight_at_the_crash_is_retried() {
    let up = upstream::spawn().await;
    let dir = tempfile::tempdir().expect("dir");
    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);
    // The upstream holds the first call unanswered, so the kill below lands
    // while it is certainly in flight, however slow the machine.
    app.create_workflow(json!({"id": "wf_call", "name": "Call", "steps": [
        {"id": "call", "type": "http", "url": "{{ trigger.url }}", "timeout": "5m",
         "retry": {"max_attempts": 3, "initial_interval": "100ms"}},
        {"id": "after", "type": "transform", "inputs": "{{ call.body.calls }}"}
    ]}))
    .await;
    let run = app
        .start_run("wf_call", json!({"url": format!("{up}/hold-once/crash")}))
        .await;
    wait_for_calls(&up, "crash", 1).await;
    server.kill_9();

    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["output"], 2, "the second call answered");
    let attempts = step(&done, "call")["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(attempts[0]["error"]["code"], "interrupted");
    assert!(attempts[1]["error"].is_null());
    drop(server);
}

/// Waits until the upstream has had `n` calls for `key` (at most a minute).
async fn wait_for_calls(up: &str, key: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = upstream::read(up, &format!("/calls/{key}")).await;
        if seen["calls"].as_u64() >= Some(n) {
            return;
        }
        assert!(Instant::now() < deadline, "the upstream saw {seen}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The start-up journal (`weft.db.recovering`) as a start leaves it when
/// the process stops while resumed runs take their first pass: `alone` is
/// the run that was advanced with nothing else resumed, so the one that
/// stopped the process; `together` were advanced at once.
fn leave_journal(dir: &std::path::Path, culprit: &str, suspects: &[&str]) {
    let creds: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("dev-credentials.json")).expect("credentials"),
    )
    .expect("json");
    let ws = creds["workspace_id"].as_str().expect("workspace id");
    let together: Vec<_> = suspects.iter().map(|r| json!([ws, r])).collect();
    let journal = json!({"alone": [ws, culprit], "together": together});
    std::fs::write(dir.join("weft.db.recovering"), journal.to_string()).expect("journal");
}

#[tokio::test]
async fn a_run_that_stopped_the_server_twice_is_failed_not_resumed_again() {
    let dir = tempfile::tempdir().expect("dir");
    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);
    app.create_workflow(json!({"id": "wf_gate", "name": "Gate", "steps": [
        {"id": "ask", "type": "approval"},
        {"id": "then", "type": "transform", "inputs": "{{ ask.ok }}"}
    ]}))
    .await;
    let mut runs = Vec::new();
    for _ in 0..4 {
        let run = app.start_run("wf_gate", json!({})).await;
        app.wait_run(&run, |b| b["status"] == "WAITING").await;
        runs.push(run);
    }
    server.kill_9();
    // The process stopped while `runs[0]` was advanced alone (after it had
    // stopped with `runs[0..3]` advanced together).
    leave_journal(dir.path(), &runs[0], &[&runs[1], &runs[2]]);

    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);
    let failed = app.wait_finished(&runs[0]).await;
    assert_eq!(failed["status"], "FAILED");
    assert_eq!(failed["error"]["code"], "internal_error");
    // The others were resumed: each still waits and can go on.
    for run in &runs[1..] {
        let r = app
            .post(
                &format!("/v1/runs/{run}/steps/ask/complete"),
                json!({"output": {"ok": "yes"}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(app.wait_finished(run).await["status"], "COMPLETED");
    }
    // Every resumed run took its pass: the journal is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    while dir.path().join("weft.db.recovering").exists() {
        assert!(Instant::now() < deadline, "the journal was left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A webhook delivery cut off by `kill -9` mid-send is sent again after a
/// restart, with the same `webhook-id`, and then recorded as delivered.
#[tokio::test]
async fn a_webhook_delivery_cut_off_by_kill_9_is_sent_again_after_a_restart() {
    use std::sync::{Arc, Mutex};
    // The first request hangs (the process dies meanwhile); later ones are
    // answered 200.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap| {
                let seen = seen.clone();
                async move {
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let first = {
                        let mut s = seen.lock().expect("lock");
                        s.push(id);
                        s.len() == 1
                    };
                    if first {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    "ok"
                }
            }
        }),
    );
    let receiver = crate::common::serve(router).await;

    let dir = tempfile::tempdir().expect("dir");
    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);
    let r = app
        .post("/v1/endpoints", json!({"url": format!("{receiver}/hook")}))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let ep = r.body["id"].as_str().expect("id").to_owned();
    app.create_workflow(json!({"id": "wf_told", "name": "Told", "steps": [
        {"id": "t", "type": "transform", "inputs": {"ok": true}}
    ]}))
    .await;
    let run = app.start_run("wf_told", json!({})).await;
    app.wait_finished(&run).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().expect("lock").is_empty() {
        assert!(Instant::now() < deadline, "the delivery never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.kill_9();
    let server = start(dir.path());
    let app = TestApp::external(&server.base, KEY);

    // Sent again once the cut-off attempt's hold ends (at most a minute).
    let deadline = Instant::now() + Duration::from_secs(90);
    let delivered = loop {
        let r = app.get(&format!("/v1/endpoints/{ep}/deliveries")).await;
        if r.body["items"][0]["status"] == "succeeded" {
            break r.body["items"][0].clone();
        }
        assert!(Instant::now() < deadline, "not delivered: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let ids = seen.lock().expect("lock").clone();
    assert!(ids.len() >= 2, "{ids:?}");
    assert!(ids.iter().all(|i| *i == ids[0]), "one webhook-id: {ids:?}");
    assert_eq!(delivered["id"], ids[0].as_str());
}
