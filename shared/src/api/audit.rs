//! The audit log: each change made through the API recorded after it
//! succeeded (`record`), and `GET /v1/audit` to read it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::extract::{Auth, Params};
use super::problem::Problem;
use super::views;
use crate::app::{App, Principal};
use crate::domain::{AuditEntry, AuditFilter};

/// Longest user agent kept.
const MAX_USER_AGENT: usize = 200;

/// Runs the change; if it succeeded, records who made it, on what, and
/// from where. (A failed record is logged: the change stands.)
pub(super) async fn record(action: String, req: Request, next: Next) -> Response {
    let app = req.extensions().get::<Arc<App>>().cloned();
    let who = req.extensions().get::<Principal>().cloned();
    let path = req.uri().path().to_owned();
    // The peer's address where the server knows it (`weft dev`); behind
    // AWS's front door, the address it forwarded.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .or_else(|| {
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(|v| v.trim().chars().take(64).collect())
        });
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(MAX_USER_AGENT).collect());
    let res = next.run(req).await;
    let (Some(app), Some(who)) = (app, who) else {
        return res;
    };
    if !res.status().is_success() {
        return res;
    }
    // What was made is where its Location points.
    let resource = res
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map_or(path, str::to_owned);
    let mut e = AuditEntry::new(&who.workspace_id, who.actor.clone(), action, resource);
    e.ip = ip;
    e.user_agent = user_agent;
    if let Err(err) = app.stores.audit.append_audit(&e).await {
        tracing::error!(workspace_id = %who.workspace_id, error = %err, "recording a change in the audit log failed");
    }
    res
}

fn time(params: &Params, name: &str) -> Result<Option<DateTime<Utc>>, Problem> {
    params
        .get(name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    Problem::bad_request(format!(
                        "`{name}` must be an RFC 3339 time such as 2026-12-01T00:00:00Z"
                    ))
                })
        })
        .transpose()
}

/// `GET /v1/audit`: newest first; `action` (a prefix: `key.` for every
/// key change), `actor`, `since`, `until`, `limit`, `cursor`.
pub async fn list(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&["action", "actor", "since", "until", "limit", "cursor"])?;
    let filter = AuditFilter {
        action: params.get("action").map(|a| a.chars().take(100).collect()),
        actor: params.get("actor").map(|a| a.chars().take(200).collect()),
        since: time(&params, "since")?,
        until: time(&params, "until")?,
    };
    let page = app
        .stores
        .audit
        .list_audit(&who.workspace_id, &filter, &params.page()?)
        .await
        .map_err(crate::app::AppError::from)?;
    Ok(Json(views::PageView::of(&page, |e: &AuditEntry| e)).into_response())
}
