//! The REST API: one axum Router, served by `weft dev` and, on AWS, by the
//! API function under `lambda_http`.

pub mod commands;
mod events;
mod extract;
mod hooks;
mod problem;
mod runs;
mod schedules;
mod secrets;
mod usage;
pub mod views;
mod webhooks;
mod workflows;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;

pub use problem::{CONTENT_TYPE as PROBLEM_CONTENT_TYPE, Problem};

use crate::app::App;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route(
            "/v1/workflows",
            post(workflows::create).get(workflows::list),
        )
        .route(
            "/v1/workflows/{id}",
            get(workflows::get)
                .put(workflows::update)
                .delete(workflows::archive),
        )
        .route("/v1/workflows/{id}/runs", post(runs::start))
        .route("/v1/events", post(events::send))
        .route(
            "/v1/workflows/{id}/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/v1/workflows/{id}/schedules/{schedule_id}",
            get(schedules::get)
                .patch(schedules::update)
                .delete(schedules::delete),
        )
        .route(
            "/v1/workflows/{id}/hooks",
            post(hooks::create).get(hooks::list),
        )
        .route(
            "/v1/workflows/{id}/hooks/{hook_id}",
            get(hooks::get).delete(hooks::delete),
        )
        .route(
            "/v1/hooks/{hook_id}",
            post(hooks::receive).layer(DefaultBodyLimit::max(crate::hooks::MAX_BODY_BYTES)),
        )
        .route("/v1/endpoints", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/endpoints/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/v1/endpoints/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/v1/endpoints/{id}/deliveries", get(webhooks::deliveries))
        .route("/v1/endpoints/{id}/replay", post(webhooks::replay_since))
        .route("/v1/deliveries/{delivery_id}", get(webhooks::delivery))
        .route(
            "/v1/deliveries/{delivery_id}/replay",
            post(webhooks::replay),
        )
        .route("/v1/secrets", get(secrets::list))
        .route(
            "/v1/secrets/{name}",
            put(secrets::put).delete(secrets::delete),
        )
        .route(
            "/v1/settings",
            get(usage::get_settings).put(usage::put_settings),
        )
        .route("/v1/usage", get(usage::report))
        .route("/v1/runs", get(runs::list))
        .route("/v1/runs/{id}", get(runs::get))
        .route("/v1/runs/{id}/logs", get(runs::logs))
        .route("/v1/runs/{id}/steps", get(runs::steps))
        .route("/v1/runs/{id}/steps/{step_id}", get(runs::step))
        .route("/v1/runs/{id}/cancel", post(runs::cancel))
        .route(
            "/v1/runs/{id}/steps/{step_id}/complete",
            post(runs::complete_step),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(problem_instance))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                "something went wrong on our side; the error was logged",
            )
            .into_response()
        }))
        .with_state(app)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn not_found() -> Response {
    Problem::not_found("no such endpoint; see the README for the API").into_response()
}

async fn method_not_allowed() -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        "this endpoint does not accept that HTTP method",
    )
    .into_response()
}

/// Sets each problem's `instance` member to the path that was requested,
/// and turns any other error response (the framework's own rejections of a
/// path, a query or a body it could not read) into a problem.
async fn problem_instance(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let res = next.run(req).await;
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_CONTENT_TYPE.as_bytes());
    if !is_problem && !res.status().is_client_error() && !res.status().is_server_error() {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    if !is_problem {
        // The framework's own answer (a path or query it could not read, a
        // body over the limit): its text becomes the problem's detail.
        let text = String::from_utf8_lossy(&bytes);
        let detail: String = text.trim().chars().take(500).collect();
        let status = parts.status;
        let problem = json!({
            "type": format!("/problems/{}", if status.is_server_error() { "internal" } else { "bad-request" }),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": if detail.is_empty() { "the request could not be handled".to_owned() } else { detail },
        });
        parts.headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        return with_instance(parts, problem.to_string().as_bytes(), path);
    }
    with_instance(parts, &bytes, path)
}

fn with_instance(mut parts: axum::http::response::Parts, bytes: &[u8], path: String) -> Response {
    let body = match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("instance".into(), serde_json::Value::String(path));
            serde_json::Value::Object(m).to_string().into_bytes()
        }
        _ => bytes.to_vec(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
