//! The `llm` step against a server speaking each provider's wire format.

use crate::common::providers::{calls, run_one, setup};
use crate::common::{providers, step};
use serde_json::json;

#[tokio::test]
async fn the_original_example_step_works_with_the_default_provider() {
    let (app, base) = setup(true).await;
    let done = run_one(
        &app,
        json!({"id": "step_2", "type": "llm", "model": "gpt-4", "prompt": "Draft a response to this email:\n\n{{ trigger.body }}"}),
        json!({"body": "Where is my order?"}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let out = &step(&done, "step_2")["output"];
    assert_eq!(
        out["response"],
        "echo: Draft a response to this email:\n\nWhere is my order?"
    );
    assert_eq!(out["provider"], "openai");
    assert_eq!(out["model"], "gpt-4");
    assert_eq!(out["finish_reason"], "stop");
    assert_eq!(
        out["usage"],
        json!({"input_tokens": 1000, "output_tokens": 500})
    );
    // gpt-4: $30 / $60 per million tokens.
    assert!(
        (out["cost_usd"].as_f64().unwrap() - 0.06).abs() < 1e-9,
        "{out}"
    );
    assert_eq!(calls(&base).await, ["openai/gpt-4"]);
}

#[tokio::test]
async fn each_provider_speaks_its_own_format() {
    let (app, _) = setup(true).await;
    for (provider, model, cost) in [
        ("anthropic", "claude-3-5-haiku-latest", 0.0028),
        ("gemini", "gemini-2.0-flash", 0.0003),
        ("openai", "gpt-4o-mini", 0.00045),
    ] {
        let done = run_one(
            &app,
            json!({"id": "ask", "type": "llm", "provider": provider, "model": model, "system": "Be brief.", "prompt": "Say hi to {{ trigger.name }}", "temperature": 0.2, "max_tokens": 50, "json": true}),
            json!({"name": "Ada"}),
        )
        .await;
        assert_eq!(done["status"], "COMPLETED", "{provider}: {done}");
        let out = &step(&done, "ask")["output"];
        assert_eq!(
            out["json"],
            json!({"echo": "Say hi to Ada"}),
            "{provider}: {out}"
        );
        assert_eq!(out["provider"], provider);
        assert!(
            (out["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-9,
            "{provider}: {out}"
        );
    }
}

#[tokio::test]
async fn fallbacks_are_tried_in_order_by_error_class() {
    let (app, base) = setup(true).await;
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "provider": "openai", "model": "gpt-4o-ratelimited", "prompt": "hello",
               "fallback": [{"provider": "anthropic", "model": "claude-3-5-haiku-broken"},
                            {"provider": "gemini", "model": "gemini-1.5-pro-toolong"},
                            {"provider": "gemini", "model": "gemini-2.0-flash"}],
               "retry": {"max_attempts": 1}}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let out = &step(&done, "ask")["output"];
    assert_eq!(out["provider"], "gemini");
    assert_eq!(out["model"], "gemini-2.0-flash");
    let codes: Vec<&str> = out["tries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["error"]["code"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "llm_rate_limited",
            "llm_server_error",
            "llm_context_too_long",
            "ok"
        ]
    );
    assert_eq!(
        calls(&base).await,
        [
            "openai/gpt-4o-ratelimited",
            "anthropic/claude-3-5-haiku-broken",
            "gemini/gemini-1.5-pro-toolong",
            "gemini/gemini-2.0-flash"
        ]
    );

    // A bad key is not a reason to fall back: the step fails at once.
    let (app, base) = setup(false).await;
    app.put("/v1/secrets/OPENAI_API_KEY", json!({"value": "wrong"}))
        .await;
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "model": "gpt-4o", "prompt": "hello", "fallback": [{"provider": "anthropic", "model": "claude-3-5-haiku-latest"}]}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["error"]["code"], "llm_auth");
    assert_eq!(step(&done, "ask")["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(calls(&base).await, ["openai/gpt-4o"]);
}

#[tokio::test]
async fn later_attempts_use_the_cheaper_model() {
    let (app, base) = setup(true).await;
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "model": "gpt-4o-broken", "retry_model": "gpt-4o-mini", "prompt": "hello",
               "retry": {"max_attempts": 2, "initial_interval": "50ms"}}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let s = step(&done, "ask");
    assert_eq!(s["attempts"][0]["error"]["code"], "llm_server_error");
    assert_eq!(s["output"]["model"], "gpt-4o-mini");
    assert_eq!(
        calls(&base).await,
        ["openai/gpt-4o-broken", "openai/gpt-4o-mini"]
    );
}

#[tokio::test]
async fn a_missing_key_is_a_clear_permanent_error() {
    let (app, base) = setup(false).await;
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "model": "gpt-4o", "prompt": "hello"}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["error"]["code"], "llm_auth");
    assert!(
        done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("OPENAI_API_KEY"),
        "{done}"
    );
    assert!(
        calls(&base).await.is_empty(),
        "nothing was sent without a key"
    );
}

#[tokio::test]
async fn the_provider_key_used_never_appears_in_what_a_run_shows() {
    let (app, base) = setup(true).await;
    // One call succeeds (the test provider accepts only the configured
    // key, so the key was sent), one fails on the server and is retried.
    let wf = app
        .create_workflow(json!({"name": "keys", "steps": [
            {"id": "ok", "type": "llm", "model": "gpt-4o", "prompt": "hello"},
            {"id": "broken", "type": "llm", "model": "gpt-4o-broken", "prompt": "hello",
             "retry": {"max_attempts": 2, "initial_interval": "10ms"}}
        ]}))
        .await;
    let run = app.start_run(&wf, json!({})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(step(&done, "ok")["status"], "succeeded", "{done}");
    assert_eq!(
        step(&done, "broken")["attempts"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(calls(&base).await.len(), 3);
    for path in [
        format!("/v1/runs/{run}"),
        format!("/v1/runs/{run}/logs"),
        format!("/v1/runs/{run}/steps"),
        format!("/v1/runs/{run}/steps/ok"),
        format!("/v1/runs/{run}/steps/broken"),
        "/v1/usage".to_owned(),
    ] {
        let r = app.get(&path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let text = r.body.to_string();
        assert!(!text.contains(providers::OPENAI_KEY), "{path}: {text}");
    }
}

#[tokio::test]
async fn a_call_that_times_out_falls_back() {
    let (app, base) = setup(true).await;
    // The first model never answers: its share of the attempt's timeout
    // (half of 4 s) ends it, and the fallback answers.
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "model": "gpt-4o-hangs", "prompt": "hello", "timeout": "4s",
               "fallback": [{"provider": "gemini", "model": "gemini-2.0-flash"}],
               "retry": {"max_attempts": 1}}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let out = &step(&done, "ask")["output"];
    assert_eq!(out["model"], "gemini-2.0-flash");
    assert_eq!(out["tries"][0]["error"]["code"], "llm_timeout", "{out}");
    assert_eq!(
        calls(&base).await,
        ["openai/gpt-4o-hangs", "gemini/gemini-2.0-flash"]
    );
}

#[tokio::test]
async fn a_provider_without_a_key_is_called_without_one() {
    // `local` is added with no key anywhere (as Ollama): the call is made,
    // and sends no authorization (the server refuses one that does).
    let (app, base) = setup(false).await;
    let done = run_one(
        &app,
        json!({"id": "ask", "type": "llm", "provider": "local", "model": "llama3", "prompt": "hello"}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let out = &step(&done, "ask")["output"];
    assert_eq!(out["provider"], "local");
    assert_eq!(out["response"], "echo: hello");
    assert_eq!(calls(&base).await, ["local/llama3"]);
}
