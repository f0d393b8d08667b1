//! Token and cost control of `llm` steps through the API: budgets checked
//! before the call, the result cache, usage reports, workspace prices and
//! providers an operator adds.

use crate::common::providers::{calls, run_one, setup};
use crate::common::{TestApp, step};
use serde_json::{Value, json};

/// What one call to the test server costs on gpt-4o-mini: it reports 1000
/// input and 500 output tokens, at $0.15 and $0.60 per million.
const MINI_CALL_USD: f64 = (1000.0 * 0.15 + 500.0 * 0.60) / 1e6;

fn close(a: &Value, b: f64) -> bool {
    a.as_f64().is_some_and(|a| (a - b).abs() < 1e-9)
}

/// The dollar amount written just before `marker` in `msg` (`$0.00045`).
fn amount_before(msg: &str, marker: &str) -> f64 {
    let head = &msg[..msg
        .find(marker)
        .unwrap_or_else(|| panic!("{marker:?} in {msg}"))];
    let figure = head.rsplit('$').next().unwrap_or_default();
    figure
        .parse()
        .unwrap_or_else(|e| panic!("{figure:?} in {msg}: {e}"))
}

async fn start(app: &TestApp, wf: &str, body: Value) -> String {
    let r = app.post(&format!("/v1/workflows/{wf}/runs"), body).await;
    assert_eq!(r.status, 202, "{}", r.body);
    r.body["run_id"].as_str().expect("run id").to_owned()
}

#[tokio::test]
async fn a_run_budget_refuses_the_call_before_it_is_made() {
    let (app, base) = setup(true).await;
    // gpt-4o at up to 1000 output tokens could cost $0.01: more than $0.0001.
    let wf = app
        .create_workflow(json!({"name": "b", "budget_usd": 0.0001, "steps": [
            {"id": "ask", "type": "llm", "model": "gpt-4o", "max_tokens": 1000, "prompt": "hi"}
        ]}))
        .await;
    let run = start(&app, &wf, json!({"input": {}})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(done["error"]["code"], "budget_exceeded");
    let msg = done["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("the run's budget of $0.0001"), "{msg}");
    assert!(msg.contains("openai/gpt-4o"), "{msg}");
    assert_eq!(done["budget_usd"], 0.0001);
    assert!(calls(&base).await.is_empty(), "no call was made");
    // Not retried: the budget will not grow by waiting.
    assert_eq!(
        step(&done, "ask")["attempts"].as_array().map(Vec::len),
        Some(1)
    );

    // A run may bring its own budget.
    let run = start(&app, &wf, json!({"input": {}, "budget_usd": 1})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["budget_usd"], 1.0);
    assert_eq!(calls(&base).await, vec!["openai/gpt-4o"]);

    let bad = app
        .post(
            &format!("/v1/workflows/{wf}/runs"),
            json!({"budget_usd": -1}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["path"], "$.budget_usd");
}

#[tokio::test]
async fn the_run_budget_counts_what_earlier_steps_spent() {
    let (app, base) = setup(true).await;
    // Each call's worst case is small (100 output tokens), but each really
    // costs $0.00045: the second no longer fits in $0.0005.
    let wf = app
        .create_workflow(json!({"name": "two", "budget_usd": 0.0005, "steps": [
            {"id": "a", "type": "llm", "model": "gpt-4o-mini", "max_tokens": 100, "prompt": "one"},
            {"id": "b", "type": "llm", "model": "gpt-4o-mini", "max_tokens": 100, "prompt": "two {{ a.response }}"}
        ]}))
        .await;
    let done = app.wait_finished(&start(&app, &wf, json!({})).await).await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert_eq!(step(&done, "a")["status"], "succeeded");
    assert_eq!(step(&done, "b")["error"]["code"], "budget_exceeded");
    let msg = done["error"]["message"].as_str().unwrap_or_default();
    let spent = amount_before(msg, " is spent");
    assert!(
        (spent - MINI_CALL_USD).abs() < 1e-9,
        "the message names what `a` cost: {msg}"
    );
    assert_eq!(calls(&base).await.len(), 1);
    assert!(
        close(&done["usage"]["cost_usd"], MINI_CALL_USD),
        "{}",
        done["usage"]
    );
}

#[tokio::test]
async fn the_monthly_cap_covers_every_run_of_the_workspace() {
    let (app, base) = setup(true).await;
    let r = app
        .put("/v1/settings", json!({"monthly_budget_usd": 0.0001}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        app.get("/v1/settings").await.body["monthly_budget_usd"],
        0.0001
    );
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "model": "gpt-4o-mini", "prompt": "hi"}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let msg = done["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("the workspace's monthly budget of $0.0001"),
        "{msg}"
    );
    assert!(calls(&base).await.is_empty());
    let usage = app.get("/v1/usage").await;
    assert_eq!(usage.body["month"]["budget_usd"], 0.0001);

    // Another workspace is not held back by this one's cap: the same
    // priced call (over $0.0001 at its worst) is made for it.
    let other = TestApp::external(&app.base, &app.other_workspace().await);
    assert_eq!(
        other
            .put(
                "/v1/secrets/OPENAI_API_KEY",
                json!({"value": crate::common::providers::OPENAI_KEY})
            )
            .await
            .status,
        200
    );
    let wf = other
        .create_workflow(json!({"name": "o", "steps": [
            {"id": "ask", "type": "llm", "model": "gpt-4o-mini", "prompt": "hi"}
        ]}))
        .await;
    let run = other.start_run(&wf, json!({})).await;
    let done = other.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(close(&done["usage"]["cost_usd"], MINI_CALL_USD), "{done}");
    assert_eq!(calls(&base).await, vec!["openai/gpt-4o-mini"]);
}

#[tokio::test]
async fn identical_calls_are_served_from_the_cache() {
    let (app, base) = setup(true).await;
    let wf = app
        .create_workflow(json!({"name": "c", "steps": [
            {"id": "sum", "type": "llm", "model": "gpt-4o-mini", "cache": {"ttl": "1h"},
             "prompt": "Summarise: {{ trigger.text }}", "inputs": {"ticket": "{{ trigger.id }}"}}
        ]}))
        .await;
    let first = app
        .wait_finished(&app.start_run(&wf, json!({"text": "hello", "id": 1})).await)
        .await;
    let out = &step(&first, "sum")["output"];
    assert!(close(&out["cost_usd"], MINI_CALL_USD), "{out}");
    assert!(out.get("cached").is_none());

    let second = app
        .wait_finished(&app.start_run(&wf, json!({"text": "hello", "id": 2})).await)
        .await;
    let out = &step(&second, "sum")["output"];
    assert_eq!(out["cached"], true, "{out}");
    assert!(close(&out["cost_saved_usd"], MINI_CALL_USD), "{out}");
    assert!(close(&out["cost_usd"], 0.0));
    assert_eq!(out["response"], "echo: Summarise: hello");
    // Pass-through inputs are this run's, not the cached run's.
    assert_eq!(out["inputs"]["ticket"], 2);
    assert_eq!(calls(&base).await.len(), 1, "the second run made no call");
    assert!(close(&second["usage"]["cost_saved_usd"], MINI_CALL_USD));
    assert_eq!(second["usage"]["cache_hits"], 1);

    app.wait_finished(&app.start_run(&wf, json!({"text": "other", "id": 3})).await)
        .await;
    assert_eq!(calls(&base).await.len(), 2, "a different prompt is called");

    let bad = app
        .post(
            "/v1/workflows",
            json!({"name": "x", "steps": [{"id": "s", "type": "llm", "model": "m", "prompt": "p", "cache": {"ttl": "forever"}}]}),
        )
        .await;
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(bad.body["errors"][0]["path"], "$.steps[0].cache.ttl");
}

#[tokio::test]
async fn the_cache_key_holds_the_provider_and_every_parameter() {
    let (app, base) = setup(true).await;
    // The same prompt with a different provider, model, temperature,
    // max_tokens, system prompt or json mode is a different call; each is
    // made once and then served from the cache.
    let variants = [
        json!({"model": "gpt-4o-mini"}),
        json!({"model": "gpt-4o-mini", "provider": "groq"}),
        json!({"model": "gpt-4o"}),
        json!({"model": "gpt-4o-mini", "temperature": 0.5}),
        json!({"model": "gpt-4o-mini", "max_tokens": 50}),
        json!({"model": "gpt-4o-mini", "system": "be brief"}),
        json!({"model": "gpt-4o-mini", "json": true, "prompt": "answer in JSON: {\"a\": 1}"}),
    ];
    let steps: Vec<Value> = variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let mut s = json!({"id": format!("s{i}"), "type": "llm", "prompt": "same words", "cache": {"ttl": "1h"}});
            for (k, val) in v.as_object().expect("object") {
                s[k] = val.clone();
            }
            s
        })
        .collect();
    let wf = app
        .create_workflow(json!({"name": "keys", "steps": steps}))
        .await;
    let first = app
        .wait_finished(&app.start_run(&wf, json!({})).await)
        .await;
    assert_eq!(first["status"], "COMPLETED", "{first}");
    assert_eq!(
        calls(&base).await.len(),
        variants.len(),
        "no variant hit another's entry"
    );
    let second = app
        .wait_finished(&app.start_run(&wf, json!({})).await)
        .await;
    for i in 0..variants.len() {
        assert_eq!(
            step(&second, &format!("s{i}"))["output"]["cached"],
            true,
            "{second}"
        );
    }
    assert_eq!(calls(&base).await.len(), variants.len());
}

#[tokio::test]
async fn a_cache_entry_expires_with_its_ttl() {
    let (app, base) = setup(true).await;
    let wf = app
        .create_workflow(json!({"name": "ttl", "steps": [
            {"id": "ask", "type": "llm", "model": "gpt-4o-mini", "prompt": "hi", "cache": {"ttl": "5s"}}
        ]}))
        .await;
    let started = std::time::Instant::now();
    app.wait_finished(&app.start_run(&wf, json!({})).await)
        .await;
    let hit = app
        .wait_finished(&app.start_run(&wf, json!({})).await)
        .await;
    // A run takes milliseconds: the second is well within the TTL.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(step(&hit, "ask")["output"]["cached"], true, "{hit}");
    assert_eq!(calls(&base).await.len(), 1);
    tokio::time::sleep(
        std::time::Duration::from_secs(5).saturating_sub(started.elapsed())
            + std::time::Duration::from_millis(500),
    )
    .await;
    let after = app
        .wait_finished(&app.start_run(&wf, json!({})).await)
        .await;
    assert!(
        step(&after, "ask")["output"].get("cached").is_none(),
        "{after}"
    );
    assert_eq!(
        calls(&base).await.len(),
        2,
        "an expired entry is called again"
    );
}

#[tokio::test]
async fn parallel_calls_cannot_jointly_pass_the_run_budget() {
    let (app, base) = setup(true).await;
    // Each call's worst case (about $0.00006) fits in $0.0001; two do not.
    // Both steps start in the same pass: the reservation of one counts
    // against the other, so at most one call is made.
    let wf = app
        .create_workflow(json!({"name": "pair", "budget_usd": 0.0001, "steps": [
            {"id": "a", "type": "llm", "model": "gpt-4o-mini", "max_tokens": 100, "prompt": "one"},
            {"id": "b", "type": "llm", "model": "gpt-4o-mini", "max_tokens": 100, "prompt": "two"}
        ]}))
        .await;
    let done = app
        .wait_finished(&app.start_run(&wf, json!({})).await)
        .await;
    assert_eq!(done["status"], "FAILED", "{done}");
    let mut codes: Vec<String> = ["a", "b"]
        .iter()
        .map(|id| {
            step(&done, id)["error"]["code"]
                .as_str()
                .unwrap_or("ok")
                .to_owned()
        })
        .collect();
    codes.sort();
    assert_eq!(codes, ["budget_exceeded", "ok"], "{done}");
    // The run failed with the refusal; the other call, if it was under
    // way, was stopped with it. Never were both made.
    assert!(calls(&base).await.len() <= 1, "{:?}", calls(&base).await);
}

#[tokio::test]
async fn usage_is_reported_per_day_and_per_workflow() {
    let (app, _base) = setup(true).await;
    let step_def = json!({"id": "ask", "type": "llm", "model": "gpt-4o-mini", "prompt": "hi"});
    let a = app
        .create_workflow(json!({"name": "a", "steps": [step_def]}))
        .await;
    let b = app
        .create_workflow(json!({"name": "b", "steps": [step_def]}))
        .await;
    for wf in [&a, &a, &b] {
        let done = app.wait_finished(&app.start_run(wf, json!({})).await).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert!(close(&done["usage"]["cost_usd"], MINI_CALL_USD));
        assert_eq!(done["usage"]["input_tokens"], 1000);
        assert_eq!(done["usage"]["output_tokens"], 500);
    }
    let r = app.get("/v1/usage").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let u = &r.body;
    assert_eq!(u["total"]["calls"], 3);
    assert_eq!(u["total"]["input_tokens"], 3000);
    assert!(close(&u["total"]["cost_usd"], 3.0 * MINI_CALL_USD));
    let today = chrono::Utc::now().date_naive().to_string();
    assert_eq!(u["days"][0]["date"], today.as_str());
    assert_eq!(u["days"][0]["calls"], 3);
    let per_wf = |id: &str| {
        u["workflows"]
            .as_array()
            .and_then(|w| w.iter().find(|x| x["workflow_id"] == id))
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(per_wf(&a)["calls"], 2);
    assert_eq!(per_wf(&b)["calls"], 1);
    assert!(close(&u["month"]["spent_usd"], 3.0 * MINI_CALL_USD));

    let other = TestApp::external(&app.base, &app.other_workspace().await);
    assert_eq!(other.get("/v1/usage").await.body["total"]["calls"], 0);

    let r = app.get("/v1/usage?from=2026-13-01").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = app.get("/v1/usage?from=2026-02-01&to=2026-01-01").await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = app.get("/v1/usage?from=2000-01-01&to=2000-01-31").await;
    assert_eq!(r.body["total"]["calls"], 0);
}

#[tokio::test]
async fn a_workspace_sets_its_own_prices() {
    let (app, _base) = setup(true).await;
    let r = app
        .put(
            "/v1/settings",
            json!({"prices": {"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 2}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "model": "gpt-4o-mini-2024-07-18", "prompt": "hi"}),
        json!({}),
    )
    .await;
    let out = &step(&done, "ask")["output"];
    assert!(
        close(&out["cost_usd"], (1000.0 + 500.0 * 2.0) / 1e6),
        "{out}"
    );

    let r = app
        .put(
            "/v1/settings",
            json!({"prices": {"m": {"input_per_mtok": -1}}, "colour": "blue"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let paths: Vec<&str> = r.body["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["path"].as_str())
        .collect();
    assert!(paths.contains(&"$.colour"), "{paths:?}");
    assert!(paths.contains(&"$.prices.m.input_per_mtok"), "{paths:?}");
    assert!(paths.contains(&"$.prices.m.output_per_mtok"), "{paths:?}");
    // The refused document changed nothing.
    assert_eq!(
        app.get("/v1/settings").await.body["prices"]["gpt-4o-mini"]["input_per_mtok"],
        1.0
    );
}

#[tokio::test]
async fn an_added_provider_is_used_by_name() {
    let (app, base) = setup(false).await;
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "provider": "groq", "model": "llama-3.1-8b-instant", "prompt": "hi"}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let out = &step(&done, "ask")["output"];
    assert_eq!(out["provider"], "groq");
    assert_eq!(out["response"], "echo: hi");
    assert_eq!(out["cost_usd"], Value::Null, "no price is known for it");
    assert_eq!(calls(&base).await, vec!["openai/llama-3.1-8b-instant"]);

    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "provider": "mistral", "model": "m", "prompt": "hi"}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "FAILED");
    let msg = done["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("`mistral` is not configured"), "{msg}");
    assert!(msg.contains("groq"), "{msg}");
}
