//! A real HTTP server speaking the providers' wire formats: OpenAI chat
//! completions, Anthropic Messages and Gemini generateContent, with their
//! documented error shapes. What a model does is chosen by its name:
//! `…-ratelimited` answers 429 (with retry-after), `…-broken` a server error
//! (Anthropic: 529 overloaded), `…-toolong` the provider's context-length
//! error, `…-hangs` (OpenAI) never answers; any other model echoes the last
//! user message. Keys are checked; `/keyless` is an OpenAI-compatible
//! server that takes no key (as Ollama) and refuses a request that brings
//! one.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use weft::adapters::http::EgressPolicy;
use weft::adapters::llm::LlmConfig;
use weft::platform::PlatformConfig;

use super::{TestApp, spawn_app_with};

pub const OPENAI_KEY: &str = "test-openai-key";
pub const ANTHROPIC_KEY: &str = "test-anthropic-key";
pub const GEMINI_KEY: &str = "test-gemini-key";

#[derive(Default)]
pub struct Log(
    Mutex<Vec<(String, String, Value)>>,
    /// Scripted replies: a prompt containing the first string gets the second.
    Mutex<Vec<(String, String)>>,
);

type Shared = Arc<Log>;

/// Starts the server; returns its base URL. `GET /calls` lists the
/// (provider, model) pairs called, in order.
pub async fn spawn() -> String {
    let log: Shared = Arc::default();
    let app = Router::new()
        .route("/openai/v1/chat/completions", post(openai))
        .route("/keyless/v1/chat/completions", post(keyless))
        .route("/anthropic/v1/messages", post(anthropic))
        .route("/gemini/v1beta/models/{call}", post(gemini))
        .route("/calls", get(list_calls))
        .route("/script", post(add_script))
        .with_state(log);
    super::serve(app).await
}

/// A platform whose providers are this server (plus `groq`, an added
/// OpenAI-compatible provider at the same address with an operator key),
/// with the workspace keys stored as secrets if `with_keys`.
pub async fn setup(with_keys: bool) -> (TestApp, String) {
    setup_with(
        with_keys,
        EgressPolicy::allowing("127.0.0.0/8").expect("policy"),
    )
    .await
}

/// `setup` with the egress policy for tenants' http steps given.
pub async fn setup_with(with_keys: bool, egress: EgressPolicy) -> (TestApp, String) {
    let base = spawn().await;
    let mut llm = LlmConfig {
        default_provider: "openai".into(),
        base_urls: std::collections::HashMap::from([
            ("openai".into(), format!("{base}/openai/v1")),
            ("anthropic".into(), format!("{base}/anthropic")),
            ("gemini".into(), format!("{base}/gemini")),
        ]),
        ..LlmConfig::default()
    };
    llm.add_compatible(&format!("groq={base}/openai/v1"))
        .expect("provider");
    llm.operator_keys.insert("groq".into(), OPENAI_KEY.into());
    llm.add_compatible(&format!("local={base}/keyless/v1"))
        .expect("provider");
    let app = spawn_app_with(PlatformConfig {
        egress,
        llm,
        ..Default::default()
    })
    .await;
    if with_keys {
        for (name, value) in [
            ("OPENAI_API_KEY", OPENAI_KEY),
            ("ANTHROPIC_API_KEY", ANTHROPIC_KEY),
            ("GEMINI_API_KEY", GEMINI_KEY),
        ] {
            assert_eq!(
                app.put(&format!("/v1/secrets/{name}"), json!({"value": value}))
                    .await
                    .status,
                200
            );
        }
    }
    (app, base)
}

/// Creates a one-step workflow, runs it with `input` and waits for the end.
pub async fn run_one(app: &TestApp, step_def: Value, input: Value) -> Value {
    let wf = app
        .create_workflow(json!({"name": "llm", "steps": [step_def]}))
        .await;
    let run = app.start_run(&wf, input).await;
    app.wait_finished(&run).await
}

/// The (provider/model) calls the server received, in order.
pub async fn calls(base: &str) -> Vec<String> {
    reqwest::get(format!("{base}/calls"))
        .await
        .expect("calls")
        .json()
        .await
        .expect("json")
}

/// Makes every prompt containing `when` get `reply`.
pub async fn script(base: &str, when: &str, reply: &str) {
    let res = reqwest::Client::new()
        .post(format!("{base}/script"))
        .json(&json!({"when": when, "reply": reply}))
        .send()
        .await
        .expect("script");
    assert_eq!(res.status(), 204);
}

async fn list_calls(State(log): State<Shared>) -> Json<Value> {
    let calls = log.0.lock().expect("lock");
    Json(json!(
        calls
            .iter()
            .map(|(p, m, _)| format!("{p}/{m}"))
            .collect::<Vec<_>>()
    ))
}

fn record(log: &Shared, provider: &str, model: &str, body: &Value) {
    log.0
        .lock()
        .expect("lock")
        .push((provider.into(), model.into(), body.clone()));
}

/// `POST /script` with `{"when": "text in the prompt", "reply": "..."}`.
async fn add_script(State(log): State<Shared>, Json(body): Json<Value>) -> StatusCode {
    let (Some(when), Some(reply)) = (body["when"].as_str(), body["reply"].as_str()) else {
        return StatusCode::BAD_REQUEST;
    };
    log.1
        .lock()
        .expect("lock")
        .push((when.to_owned(), reply.to_owned()));
    StatusCode::NO_CONTENT
}

fn reply_text(log: &Shared, last_user: &str, json_mode: bool) -> String {
    let scripted = log
        .1
        .lock()
        .expect("lock")
        .iter()
        .find(|(when, _)| last_user.contains(when.as_str()))
        .map(|(_, r)| r.clone());
    if let Some(reply) = scripted {
        return reply;
    }
    if json_mode {
        format!("Here you go:\n```json\n{}\n```", json!({"echo": last_user}))
    } else {
        format!("echo: {last_user}")
    }
}

async fn openai(
    State(log): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    record(&log, "openai", &model, &body);
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {OPENAI_KEY}"))
    {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}))).into_response();
    }
    if model.ends_with("-ratelimited") {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}))).into_response();
    }
    if model.ends_with("-broken") {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "The server had an error", "type": "server_error"}})),
        )
            .into_response();
    }
    if model.ends_with("-toolong") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error", "code": "context_length_exceeded"}}))).into_response();
    }
    if model.ends_with("-hangs") {
        std::future::pending::<()>().await;
    }
    chat_completion(&log, &model, &body)
}

/// An OpenAI-compatible server without keys: a request that sends one is
/// refused, so a test sees that none was sent.
async fn keyless(
    State(log): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    record(&log, "local", &model, &body);
    if headers.contains_key("authorization") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "this server takes no key", "type": "invalid_request_error"}}))).into_response();
    }
    chat_completion(&log, &model, &body)
}

/// The answer of an OpenAI-compatible model that echoes.
fn chat_completion(log: &Shared, model: &str, body: &Value) -> Response {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let json_mode = body["response_format"]["type"] == "json_object";
    Json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply_text(log, &last, json_mode)}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
    }))
    .into_response()
}

async fn anthropic(
    State(log): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    record(&log, "anthropic", &model, &body);
    let key_ok = headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(ANTHROPIC_KEY);
    let version_ok = headers.get("anthropic-version").is_some();
    if !key_ok || !version_ok || body["max_tokens"].as_u64().is_none() {
        return (StatusCode::UNAUTHORIZED, Json(json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}))).into_response();
    }
    if model.ends_with("-ratelimited") {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"}}))).into_response();
    }
    if model.ends_with("-broken") {
        return (StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE), Json(json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))).into_response();
    }
    if model.ends_with("-toolong") {
        return (StatusCode::BAD_REQUEST, Json(json!({"type": "error", "error": {"type": "invalid_request_error", "message": "prompt is too long: 250000 tokens > 200000 maximum"}}))).into_response();
    }
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|x| x["role"] == "user"))
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    let json_mode = body["system"].as_str().is_some_and(|s| s.contains("JSON"));
    Json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": reply_text(&log, &last, json_mode)}],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": {"input_tokens": 1000, "output_tokens": 500}
    }))
    .into_response()
}

async fn gemini(
    State(log): State<Shared>,
    Path(call): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = call
        .strip_suffix(":generateContent")
        .unwrap_or(&call)
        .to_owned();
    record(&log, "gemini", &model, &body);
    if headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()) != Some(GEMINI_KEY) {
        return (StatusCode::FORBIDDEN, Json(json!({"error": {"code": 403, "message": "API key not valid.", "status": "PERMISSION_DENIED"}}))).into_response();
    }
    if model.ends_with("-ratelimited") {
        return (StatusCode::TOO_MANY_REQUESTS, Json(json!({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}))).into_response();
    }
    if model.ends_with("-broken") {
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}))).into_response();
    }
    if model.ends_with("-toolong") {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"code": 400, "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}))).into_response();
    }
    let last = body["contents"]
        .as_array()
        .and_then(|c| c.iter().rev().find(|x| x["role"] == "user"))
        .and_then(|c| c["parts"][0]["text"].as_str())
        .unwrap_or_default()
        .to_owned();
    let json_mode = body["generationConfig"]["responseMimeType"] == "application/json";
    Json(json!({
        "candidates": [{"content": {"role": "model", "parts": [{"text": reply_text(&log, &last, json_mode)}]}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 500, "totalTokenCount": 1500}
    }))
    .into_response()
}
