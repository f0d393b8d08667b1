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

/// The caller's address as the front door saw it (AWS: API Gateway's
/// `sourceIp`, set by the API function), never what a client wrote.
#[derive(Clone, Debug)]
pub struct ClientIp(pub String);

/// Runs the change; if it succeeded, records who made it (the key itself,
/// whoever made it), on what, and from where. (A failed record is logged:
/// the change stands. The change and its record run to the end even if
/// the client goes: see `access::to_the_end`.)
pub(super) async fn record(action: String, req: Request, next: Next) -> Response {
    let app = req.extensions().get::<Arc<App>>().cloned();
    let who = req.extensions().get::<Principal>().cloned();
    // The path as the handler read it (percent-decoded), the id segments
    // in it, and for `…/{id}/verb` the resource acted on.
    let mut path = percent_encoding::percent_decode_str(req.uri().path())
        .decode_utf8_lossy()
        .into_owned();
    if action
        .rsplit('.')
        .next()
        .is_some_and(|verb| !["created", "updated", "deleted"].contains(&verb))
        && let Some((resource, _verb)) = path.rsplit_once('/')
    {
        path = resource.to_owned();
    }
    let ip = req
        .extensions()
        .get::<ClientIp>()
        .map(|c| c.0.clone())
        .or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string())
        });
    let user_agent = req.headers().get(header::USER_AGENT).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(MAX_USER_AGENT)
            .collect()
    });
    let res = next.run(req).await;
    let (Some(app), Some(who)) = (app, who) else {
        return res;
    };
    if !res.status().is_success() {
        return res;
    }
    // What was made is where its Location points.
    let resource = match res.headers().get(header::LOCATION) {
        Some(at) if action.ends_with(".created") => {
            String::from_utf8_lossy(at.as_bytes()).into_owned()
        }
        _ => path,
    };
    let mut e = AuditEntry::new(
        &who.workspace_id,
        format!("key:{}", who.key_id),
        action,
        resource,
    );
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
