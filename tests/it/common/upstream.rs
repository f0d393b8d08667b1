//! A real HTTP server for tests of outbound steps: echoes requests, fails on
//! demand, redirects, stalls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router};
use serde_json::{Value, json};

#[derive(Default)]
struct Calls(
    Mutex<HashMap<String, u32>>,
    /// Per key: requests in flight now, and the most there ever were.
    Mutex<HashMap<String, (u32, u32)>>,
);

impl Calls {
    fn count(&self, key: &str) -> u32 {
        self.0.lock().expect("lock").get(key).copied().unwrap_or(0)
    }

    fn bump(&self, key: &str) -> u32 {
        let mut m = self.0.lock().expect("lock");
        let n = m.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

/// What the server at `up` answers to `GET {path}` (its counters).
pub async fn read(up: &str, path: &str) -> Value {
    super::test_client()
        .get(format!("{up}{path}"))
        .send()
        .await
        .expect("upstream")
        .json()
        .await
        .expect("json")
}

/// Starts the server on 127.0.0.1 and returns its base URL.
pub async fn spawn() -> String {
    let calls = Arc::new(Calls::default());
    let app = Router::new()
        .route("/echo", any(echo))
        .route("/flaky/{key}/{failures}", any(flaky))
        .route("/limited/{key}", any(limited))
        .route("/status/{code}", any(status))
        .route("/slow/{ms}", any(slow))
        .route("/redirect", any(redirect))
        .route("/bytes/{n}", any(bytes))
        .route("/check-key", any(check_key))
        .route("/reject", any(reject))
        .route("/hold-once/{key}", any(hold_once))
        .route("/calls/{key}", any(calls_of))
        .route("/inflight/{key}", any(inflight))
        .route("/hold/{key}", any(hold))
        .route("/dense/{n}", any(dense))
        .route("/inflight-max/{key}", any(inflight_max))
        .route("/inflight-now/{key}", any(inflight_now))
        .with_state(calls);
    super::serve(app).await
}

async fn echo(
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    body: String,
) -> Json<Value> {
    let json_body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let all: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    Json(json!({
        "method": method.as_str(),
        "uri": uri.to_string(),
        "headers": all,
        "query": q,
        "x_api_key": headers.get("x-api-key").and_then(|v| v.to_str().ok()),
        "content_type": headers.get("content-type").and_then(|v| v.to_str().ok()),
        "text": body,
        "json": json_body,
    }))
}

/// Fails with 503 `failures` times per key, then answers 200.
async fn flaky(
    State(calls): State<Arc<Calls>>,
    Path((key, failures)): Path<(String, u32)>,
) -> Response {
    let n = calls.bump(&key);
    if n <= failures {
        (StatusCode::SERVICE_UNAVAILABLE, "try later").into_response()
    } else {
        Json(json!({"ok": true, "calls": n})).into_response()
    }
}

/// Answers 429 with `Retry-After: 1` once per key, then 200.
async fn limited(State(calls): State<Arc<Calls>>, Path(key): Path<String>) -> Response {
    if calls.bump(&key) == 1 {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response()
    } else {
        Json(json!({"ok": true})).into_response()
    }
}

async fn status(Path(code): Path<u16>) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT),
        format!("status {code}"),
    )
        .into_response()
}

async fn slow(Path(ms): Path<u64>) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({"slept_ms": ms}))
}

async fn redirect(Query(q): Query<HashMap<String, String>>) -> Response {
    let to = q.get("to").cloned().unwrap_or_default();
    (StatusCode::FOUND, [("location", to)]).into_response()
}

/// A text body of `n` bytes (at most 8 MiB).
async fn bytes(axum::extract::Path(n): axum::extract::Path<usize>) -> String {
    "x".repeat(n.min(8 * 1024 * 1024))
}

/// Says whether `x-api-key` is the expected test secret, and echoes it back
/// (as careless services do).
async fn check_key(headers: HeaderMap) -> Json<Value> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Json(json!({"authorized": key == "s3cret-value-42", "you_sent": key}))
}

/// A 400 whose body repeats the key it was sent (after `pad` characters
/// of filler, if asked).
async fn reject(headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let pad = q.get("pad").and_then(|p| p.parse().ok()).unwrap_or(0usize);
    (
        StatusCode::BAD_REQUEST,
        format!("{}invalid key {key}", "-".repeat(pad)),
    )
        .into_response()
}

/// The first call per key is held without an answer for as long as the
/// caller waits; later calls answer at once with their number. A test can
/// then act while a call is certainly in flight (see `/calls/{key}`).
async fn hold_once(State(calls): State<Arc<Calls>>, Path(key): Path<String>) -> Json<Value> {
    let n = calls.bump(&key);
    if n == 1 {
        std::future::pending::<()>().await;
    }
    Json(json!({"calls": n}))
}

/// How many calls `key` has had (of `/hold-once/{key}` or `/flaky/...`).
async fn calls_of(State(calls): State<Arc<Calls>>, Path(key): Path<String>) -> Json<Value> {
    Json(json!({"calls": calls.count(&key)}))
}

/// Counts the requests in flight per key while each is held for 300 ms.
async fn inflight(State(calls): State<Arc<Calls>>, Path(key): Path<String>) -> Json<Value> {
    {
        let mut m = calls.1.lock().expect("lock");
        let e = m.entry(key.clone()).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(e) = calls.1.lock().expect("lock").get_mut(&key) {
        e.0 -= 1;
    }
    Json(json!({"ok": true}))
}

/// The most requests `/inflight/{key}` had in flight at once.
async fn inflight_max(State(calls): State<Arc<Calls>>, Path(key): Path<String>) -> Json<Value> {
    let max = calls.1.lock().expect("lock").get(&key).map_or(0, |e| e.1);
    Json(json!({"max": max}))
}

/// Holds every call without an answer for as long as the caller waits,
/// counting it in flight under `key` until the caller goes away (read with
/// `/inflight-now/{key}`; `/calls/{key}` counts them all).
async fn hold(State(calls): State<Arc<Calls>>, Path(key): Path<String>) -> Json<Value> {
    struct InFlight(Arc<Calls>, String);
    impl Drop for InFlight {
        fn drop(&mut self) {
            if let Some(e) = self.0.1.lock().expect("lock").get_mut(&self.1) {
                e.0 -= 1;
            }
        }
    }
    calls.bump(&key);
    {
        let mut m = calls.1.lock().expect("lock");
        let e = m.entry(key.clone()).or_insert((0, 0));
        e.0 += 1;
        e.1 = e.1.max(e.0);
    }
    let _held = InFlight(calls.clone(), key);
    std::future::pending::<()>().await;
    Json(json!({}))
}

/// How many requests `/hold/{key}` has in flight now.
async fn inflight_now(State(calls): State<Arc<Calls>>, Path(key): Path<String>) -> Json<Value> {
    let now = calls.1.lock().expect("lock").get(&key).map_or(0, |e| e.0);
    Json(json!({"now": now}))
}

/// A JSON list of `n` small maps (`{"a":0}`): a few bytes of text each,
/// hundreds once parsed.
async fn dense(Path(n): Path<usize>) -> Response {
    let mut body = String::with_capacity(n * 8 + 2);
    body.push('[');
    for i in 0..n.min(1_000_000) {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{\"a\":0}");
    }
    body.push(']');
    ([("content-type", "application/json")], body).into_response()
}
