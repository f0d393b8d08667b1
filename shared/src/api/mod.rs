//! The REST API: one axum Router, served by `weft dev` and, on AWS, by the
//! API function under `lambda_http`.

mod access;
mod audit;
pub mod commands;
mod events;
mod extract;
mod hooks;
mod keys;
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
use axum::http::Method;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;

pub use access::{Access, RouteSpec, audit_action};
pub use audit::ClientIp;
pub use problem::{CONTENT_TYPE as PROBLEM_CONTENT_TYPE, Problem};

use crate::app::App;
use crate::domain::Role;
use access::Routes;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    let (routes, _) = routes();
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::Extension(app.clone()))
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

/// Every route with the access it asks for (what the tenant-isolation and
/// role tests walk).
pub fn route_table() -> Vec<RouteSpec> {
    routes().1
}

fn routes() -> (Router<Arc<App>>, Vec<RouteSpec>) {
    use Access::{Public, Role as R, RunsOf};
    use Method as M;
    use Role::{Admin, Editor, Owner, Viewer};
    Routes::new()
        .add(M::GET, "/v1/health", Public, get(health))
        .add(M::POST, "/v1/workflows", R(Editor), post(workflows::create))
        .add(M::GET, "/v1/workflows", R(Viewer), get(workflows::list))
        .add(M::GET, "/v1/workflows/{id}", R(Viewer), get(workflows::get))
        .add(
            M::PUT,
            "/v1/workflows/{id}",
            R(Editor),
            put(workflows::update),
        )
        .add(
            M::DELETE,
            "/v1/workflows/{id}",
            R(Editor),
            delete(workflows::archive),
        )
        .add(
            M::POST,
            "/v1/workflows/{id}/runs",
            RunsOf(Editor),
            post(runs::start),
        )
        .add(M::POST, "/v1/events", R(Editor), post(events::send))
        .add(
            M::POST,
            "/v1/workflows/{id}/schedules",
            R(Admin),
            post(schedules::create),
        )
        .add(
            M::GET,
            "/v1/workflows/{id}/schedules",
            R(Viewer),
            get(schedules::list),
        )
        .add(M::GET, SCHEDULE, R(Viewer), get(schedules::get))
        .add(M::PATCH, SCHEDULE, R(Admin), patch(schedules::update))
        .add(M::DELETE, SCHEDULE, R(Admin), delete(schedules::delete))
        // A hook's id is what lets the outside start runs: only Admins see it.
        .add(
            M::POST,
            "/v1/workflows/{id}/hooks",
            R(Admin),
            post(hooks::create),
        )
        .add(
            M::GET,
            "/v1/workflows/{id}/hooks",
            R(Admin),
            get(hooks::list),
        )
        .add(
            M::GET,
            "/v1/workflows/{id}/hooks/{hook_id}",
            R(Admin),
            get(hooks::get),
        )
        .add(
            M::DELETE,
            "/v1/workflows/{id}/hooks/{hook_id}",
            R(Admin),
            delete(hooks::delete),
        )
        .add(
            M::POST,
            "/v1/hooks/{hook_id}",
            Public,
            post(hooks::receive).layer(DefaultBodyLimit::max(crate::hooks::MAX_BODY_BYTES)),
        )
        .add(M::POST, "/v1/endpoints", R(Admin), post(webhooks::create))
        .add(M::GET, "/v1/endpoints", R(Admin), get(webhooks::list))
        .add(M::GET, "/v1/endpoints/{id}", R(Admin), get(webhooks::get))
        .add(
            M::PATCH,
            "/v1/endpoints/{id}",
            R(Admin),
            patch(webhooks::update),
        )
        .add(
            M::DELETE,
            "/v1/endpoints/{id}",
            R(Admin),
            delete(webhooks::delete),
        )
        .add(
            M::POST,
            "/v1/endpoints/{id}/rotate-secret",
            R(Admin),
            post(webhooks::rotate_secret),
        )
        .add(
            M::GET,
            "/v1/endpoints/{id}/deliveries",
            R(Admin),
            get(webhooks::deliveries),
        )
        .add(
            M::POST,
            "/v1/endpoints/{id}/replay",
            R(Admin),
            post(webhooks::replay_since),
        )
        .add(
            M::GET,
            "/v1/deliveries/{delivery_id}",
            R(Admin),
            get(webhooks::delivery),
        )
        .add(
            M::POST,
            "/v1/deliveries/{delivery_id}/replay",
            R(Admin),
            post(webhooks::replay),
        )
        .add(M::GET, "/v1/secrets", R(Admin), get(secrets::list))
        .add(M::PUT, "/v1/secrets/{name}", R(Admin), put(secrets::put))
        .add(
            M::DELETE,
            "/v1/secrets/{name}",
            R(Admin),
            delete(secrets::delete),
        )
        .add(M::POST, "/v1/keys", R(Admin), post(keys::create))
        .add(M::GET, "/v1/keys", R(Admin), get(keys::list))
        .add(M::GET, "/v1/keys/{key_id}", R(Admin), get(keys::get))
        .add(
            M::DELETE,
            "/v1/keys/{key_id}",
            R(Admin),
            delete(keys::delete),
        )
        .add(
            M::POST,
            "/v1/keys/{key_id}/rotate",
            R(Admin),
            post(keys::rotate),
        )
        .add(M::GET, "/v1/audit", R(Admin), get(audit::list))
        .add(M::GET, "/v1/settings", R(Viewer), get(usage::get_settings))
        // The budget and prices: billing, the Owner's.
        .add(M::PUT, "/v1/settings", R(Owner), put(usage::put_settings))
        .add(M::GET, "/v1/usage", R(Viewer), get(usage::report))
        .add(M::GET, "/v1/runs", RunsOf(Viewer), get(runs::list))
        .add(M::GET, "/v1/runs/{id}", RunsOf(Viewer), get(runs::get))
        .add(
            M::GET,
            "/v1/runs/{id}/logs",
            RunsOf(Viewer),
            get(runs::logs),
        )
        .add(
            M::GET,
            "/v1/runs/{id}/steps",
            RunsOf(Viewer),
            get(runs::steps),
        )
        .add(
            M::GET,
            "/v1/runs/{id}/steps/{step_id}",
            RunsOf(Viewer),
            get(runs::step),
        )
        .add(
            M::POST,
            "/v1/runs/{id}/cancel",
            R(Editor),
            post(runs::cancel),
        )
        .add(
            M::POST,
            "/v1/runs/{id}/steps/{step_id}/complete",
            R(Editor),
            post(runs::complete_step),
        )
        .finish()
}

const SCHEDULE: &str = "/v1/workflows/{id}/schedules/{schedule_id}";

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
