//! The `http` step against a real upstream server: requests built from
//! templates, retries of transient failures, Retry-After, permanent errors,
//! timeouts, and refusal of internal destinations.

use crate::common::{spawn_app, spawn_app_with, step, upstream};
use std::time::Duration;

use serde_json::{Value, json};
use weft::platform::PlatformConfig;

fn attempts(run: &Value, id: &str) -> Vec<Value> {
    step(run, id)["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ts(v: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(v.as_str().expect("timestamp")).expect("rfc3339")
}

#[tokio::test]
async fn requests_are_built_from_templates_and_responses_flow_on() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    app.create_workflow(json!({"id": "wf_http", "name": "call", "steps": [
        {"id": "call", "type": "http", "method": "post", "url": "{{ trigger.base }}/echo",
         "query": {"q": "{{ trigger.term }}", "n": 2}, "headers": {"x-api-key": "k-{{ trigger.term }}"},
         "body": {"term": "{{ trigger.term }}", "tags": "{{ trigger.tags }}"}},
        {"id": "use", "type": "transform", "inputs": {"status": "{{ call.status }}", "echoed": "{{ call.body.json }}", "q": "{{ call.body.query.q }}"}}
    ]}))
    .await;
    let run = app
        .start_run(
            "wf_http",
            json!({"base": up, "term": "rust", "tags": ["a", "b"]}),
        )
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(
        done["output"],
        json!({"status": 200, "echoed": {"term": "rust", "tags": ["a", "b"]}, "q": "rust"})
    );
    let call = step(&done, "call");
    assert_eq!(call["output"]["body"]["method"], "POST");
    assert_eq!(call["output"]["body"]["x_api_key"], "k-rust");
    assert_eq!(call["output"]["body"]["query"]["n"], "2");
    assert_eq!(call["output"]["body"]["content_type"], "application/json");
    assert_eq!(
        call["output"]["headers"]["content-type"],
        "application/json"
    );
}

#[tokio::test]
async fn transient_failures_are_retried_per_the_step_policy() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    let def = |attempts: u32| {
        json!({"name": "flaky", "steps": [
            {"id": "call", "type": "http", "url": "{{ trigger.url }}",
             "retry": {"max_attempts": attempts, "initial_interval": "50ms", "jitter": 0}}
        ]})
    };
    let ok = app.create_workflow(def(3)).await;
    let run = app
        .start_run(&ok, json!({"url": format!("{up}/flaky/a/2")}))
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let tries = attempts(&done, "call");
    assert_eq!(tries.len(), 3);
    assert_eq!(tries[0]["error"]["code"], "http_503");
    assert!(tries[2]["error"].is_null());
    assert_eq!(step(&done, "call")["output"]["body"]["calls"], 3);

    let short = app.create_workflow(def(2)).await;
    let run = app
        .start_run(&short, json!({"url": format!("{up}/flaky/b/5")}))
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(attempts(&done, "call").len(), 2);
    assert_eq!(done["error"]["code"], "http_503");
    let logs = app
        .get(&format!("/v1/runs/{run}/logs"))
        .await
        .body
        .to_string();
    assert!(logs.contains("retrying at"), "{logs}");
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    let wf = app.create_workflow(json!({"name": "limited", "steps": [
        {"id": "call", "type": "http", "url": "{{ trigger.url }}", "retry": {"max_attempts": 2, "initial_interval": "10ms", "jitter": 0}}
    ]}))
    .await;
    let run = app
        .start_run(&wf, json!({"url": format!("{up}/limited/x")}))
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let tries = attempts(&done, "call");
    assert_eq!(tries[0]["error"]["code"], "http_429");
    let waited = ts(&tries[1]["started_at"]) - ts(&tries[0]["finished_at"]);
    assert!(waited.num_milliseconds() >= 1000, "waited only {waited}");
}

#[tokio::test]
async fn client_errors_are_permanent_and_timeouts_transient() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    // The 404 and the large response are answered at once: their step's
    // timeout is generous, so a loaded machine cannot turn them into
    // timeouts. Only the timeout case has a short one, against a server
    // that answers ten times later than it.
    let wf = app
        .create_workflow(json!({"name": "errors", "steps": [
            {"id": "call", "type": "http", "url": "{{ trigger.url }}", "timeout": "60s",
             "retry": {"max_attempts": 2, "initial_interval": "10ms"}}
        ]}))
        .await;
    let short = app
        .create_workflow(json!({"name": "short timeout", "steps": [
            {"id": "call", "type": "http", "url": "{{ trigger.url }}", "timeout": "300ms",
             "retry": {"max_attempts": 2, "initial_interval": "10ms"}}
        ]}))
        .await;
    let run = app
        .start_run(&wf, json!({"url": format!("{up}/status/404")}))
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["error"]["code"], "http_404");
    assert_eq!(attempts(&done, "call").len(), 1, "a 404 is not retried");

    let run = app
        .start_run(&short, json!({"url": format!("{up}/slow/3000")}))
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["error"]["code"], "timeout");
    assert_eq!(attempts(&done, "call").len(), 2, "a timeout is retried");

    let run = app
        .start_run(
            &wf,
            json!({"url": format!("{up}/bytes/{}", 6 * 1024 * 1024)}),
        )
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["error"]["code"], "response_too_large");
}

#[tokio::test]
async fn internal_destinations_are_refused() {
    let up = upstream::spawn().await;
    let port = up.rsplit(':').next().expect("port").to_owned();
    // The default policy: nothing internal, loopback included.
    let app = spawn_app_with(PlatformConfig::default()).await;
    let wf = app.create_workflow(json!({"name": "ssrf", "steps": [
        {"id": "call", "type": "http", "url": "{{ trigger.url }}", "retry": {"max_attempts": 3, "initial_interval": "10ms"}}
    ]}))
    .await;
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://localhost:{port}/echo"),
        format!("http://127.0.0.1:{port}/echo"),
        format!("http://[::1]:{port}/echo"),
        "file:///etc/passwd".to_owned(),
    ] {
        let run = app.start_run(&wf, json!({ "url": url })).await;
        let done = app.wait_finished(&run).await;
        assert_eq!(done["status"], "FAILED", "{url}: {done}");
        assert_eq!(done["error"]["code"], "egress_denied", "{url}: {done}");
        assert_eq!(
            attempts(&done, "call").len(),
            1,
            "{url}: refusals are permanent"
        );
    }

    // Loopback allowed (as in development), but a redirect to a private
    // address is still refused.
    let app = spawn_app().await;
    let wf = app.create_workflow(json!({"name": "redirect", "steps": [{"id": "call", "type": "http", "url": "{{ trigger.url }}"}]})).await;
    let run = app
        .start_run(
            &wf,
            json!({"url": format!("{up}/redirect?to=http://10.0.0.1/admin")}),
        )
        .await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["error"]["code"], "egress_denied", "{done}");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("10.0.0.1")
    );
    // A redirect to an allowed place is followed.
    let run = app
        .start_run(&wf, json!({"url": format!("{up}/redirect?to={up}/echo")}))
        .await;
    assert_eq!(app.wait_finished(&run).await["status"], "COMPLETED");
}

#[tokio::test]
async fn a_map_holds_at_most_its_concurrency_in_flight() {
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    let wf = app
        .create_workflow(json!({"name": "fan", "steps": [
            {"id": "m", "type": "map", "items": "{{ range(12) | list }}", "concurrency": 3,
             "step": {"id": "call", "type": "http", "url": "{{ trigger.base }}/inflight/map"}}
        ]}))
        .await;
    let done = app
        .wait_finished(&app.start_run(&wf, json!({"base": up})).await)
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let seen = upstream::read(&up, "/inflight-max/map").await;
    // Counted at the server: never more than 3 at once, and more than one
    // (the map does run items side by side).
    let max = seen["max"].as_u64().unwrap_or(0);
    assert!((2..=3).contains(&max), "{seen}");
}

#[tokio::test]
async fn results_and_an_approval_arriving_together_are_all_kept() {
    // The map's results are recorded by the run's passes (from the records
    // the orchestrator keeps between them) while the approval is completed
    // through the API: neither may overwrite the other.
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    let wf = app
        .create_workflow(json!({"name": "both", "steps": [
            {"id": "m", "type": "map", "items": "{{ range(30) | list }}", "concurrency": 3,
             "step": {"id": "call", "type": "http", "url": "{{ trigger.base }}/inflight/both"},
             "output": "{{ index }}"},
            {"id": "ok", "type": "approval"},
            {"id": "end", "type": "transform", "depends_on": ["m", "ok"],
             "inputs": {"n": "{{ m | length }}", "sum": "{{ m | sum }}", "by": "{{ ok.by }}"}}
        ]}))
        .await;
    let run = app.start_run(&wf, json!({"base": up})).await;
    app.wait_run(&run, |b| step(b, "ok")["status"] == "waiting")
        .await;
    let r = app
        .post(
            &format!("/v1/runs/{run}/steps/ok/complete"),
            json!({"output": {"by": "ada"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["output"], json!({"n": 30, "sum": 435, "by": "ada"}));
}

#[tokio::test]
async fn a_cancelled_runs_attempts_stop_and_free_their_slots() {
    // Two runs hold every attempt slot of the workspace with calls that
    // never answer (the second has attempts queued behind the first's).
    // Cancelling them must stop the calls under way, never start the
    // queued ones, and leave the slots to the workspace's next run.
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    let wf = app
        .create_workflow(json!({"name": "hold", "steps": [
            {"id": "m", "type": "map", "items": "{{ range(300) | list }}", "concurrency": 300,
             "step": {"id": "call", "type": "http", "url": "{{ trigger.base }}/hold/h",
                      "timeout": "5m"}}
        ]}))
        .await;
    let a = app.start_run(&wf, json!({"base": up})).await;
    let b = app.start_run(&wf, json!({"base": up})).await;
    let calls = || async {
        upstream::read(&up, "/calls/h").await["calls"]
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + app.wait_deadline();
    // The workspace's attempt slots (256) all taken; the rest queue.
    while calls().await < 256 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "calls: {}",
            calls().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for run in [&b, &a] {
        let r = app.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // The calls under way are dropped...
    loop {
        let now = upstream::read(&up, "/inflight-now/h").await["now"]
            .as_u64()
            .unwrap_or(0);
        if now == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still in flight: {now}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...the slots serve the next run at once...
    let quick = app
        .create_workflow(json!({"name": "quick", "steps": [
            {"id": "call", "type": "http", "url": "{{ trigger.base }}/echo"}
        ]}))
        .await;
    let done = app
        .wait_finished(&app.start_run(&quick, json!({"base": up})).await)
        .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    // ...and no queued attempt of the cancelled runs ever started.
    assert_eq!(calls().await, 256);
}

#[tokio::test]
async fn an_approval_and_a_cancel_beside_a_busy_map_take_effect_at_once() {
    // The map's passes commit one after another while the approval and
    // the cancel are made: each writes only the run and the one step it
    // changes, so it must not lose its turn to them (409) nor be lost.
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    let wf = app
        .create_workflow(json!({"name": "busy", "steps": [
            {"id": "m", "type": "map", "items": "{{ range(4000) | list }}", "concurrency": 200,
             "step": {"id": "call", "type": "http", "url": "{{ trigger.base }}/echo"}},
            {"id": "ok", "type": "approval"},
            {"id": "end", "type": "transform", "depends_on": ["m", "ok"], "value": 1}
        ]}))
        .await;
    let run = app.start_run(&wf, json!({"base": up})).await;
    app.wait_run(&run, |b| {
        step(b, "ok")["status"] == "waiting" && b["counts"]["succeeded"].as_u64() >= Some(300)
    })
    .await;
    let r = app
        .post(
            &format!("/v1/runs/{run}/steps/ok/complete"),
            json!({"output": {"by": "ada"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // (Read on its own: the run's view lists the map's iterations first.)
    let ok = app.get(&format!("/v1/runs/{run}/steps/ok")).await;
    assert_eq!(ok.body["output"], json!({"by": "ada"}), "{}", ok.body);
    let r = app.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "CANCELLED", "{}", r.body);
    // Nothing of it is left open, and the approval's output stays.
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "CANCELLED");
    for open in ["running", "pending", "waiting"] {
        assert_eq!(done["counts"][open], 0, "{}", done["counts"]);
    }
    let ok = app.get(&format!("/v1/runs/{run}/steps/ok")).await;
    assert_eq!(ok.body["output"], json!({"by": "ada"}), "{}", ok.body);
    let end = app.get(&format!("/v1/runs/{run}/steps/end")).await;
    assert_eq!(end.body["status"], "cancelled", "{}", end.body);
}

#[tokio::test]
async fn json_that_would_take_too_much_memory_parsed_is_refused_before_parsing() {
    // 3.4 MB of `{"a":0}` is within the 4 MiB body limit but would take
    // several hundred MiB parsed: refused by its estimate, not parsed. The
    // same shape, smaller, is parsed as usual.
    let (app, up) = (spawn_app().await, upstream::spawn().await);
    let wf = app
        .create_workflow(json!({"name": "dense", "steps": [
            {"id": "call", "type": "http", "url": "{{ trigger.base }}/dense/{{ trigger.n }}"}
        ]}))
        .await;
    let big = app
        .wait_finished(&app.start_run(&wf, json!({"base": up, "n": 420_000})).await)
        .await;
    assert_eq!(big["status"], "FAILED", "{big}");
    let call = step(&big, "call");
    assert_eq!(call["error"]["code"], "response_too_large", "{call}");
    let msg = call["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("in memory once parsed"), "{msg}");
    let small = app
        .wait_finished(&app.start_run(&wf, json!({"base": up, "n": 1000})).await)
        .await;
    assert_eq!(small["status"], "COMPLETED", "{small}");
    let body = &step(&small, "call")["output"]["body"];
    assert_eq!(body.as_array().map(Vec::len), Some(1000), "{body}");
}
