//! `/v1/endpoints` and `/v1/deliveries`: a workspace's outbound webhook
//! endpoints and their deliveries.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::commands::{invalid, unknown_fields};
use super::extract::{Auth, JsonBody, Params};
use super::problem::Problem;
use super::views::{self, EndpointView};
use crate::app::{App, AppError, EndpointFields};
use crate::domain::{DeliveryStatus, EndpointId, EventType, WorkflowId};
use crate::dsl::{Path as At, ValidationError};

pub async fn create(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let fields = endpoint_fields(&body, true)?;
    let (e, secret) = app.create_endpoint(&who.workspace_id, fields).await?;
    let mut view = json!(EndpointView::from(&e));
    // Shown once: receivers check deliveries' signatures with it.
    view["secret"] = json!(secret);
    let at = format!("/v1/endpoints/{}", e.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, at)],
        Json(view),
    )
        .into_response())
}

pub async fn list(State(app): State<Arc<App>>, Auth(who): Auth) -> Result<Response, Problem> {
    let all = app.list_endpoints(&who.workspace_id).await?;
    let items: Vec<EndpointView> = all.iter().map(EndpointView::from).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let e = app
        .get_endpoint(&who.workspace_id, &EndpointId::from_string(id))
        .await?;
    Ok(Json(EndpointView::from(&e)).into_response())
}

pub async fn update(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let fields = endpoint_fields(&body, false)?;
    let e = app
        .update_endpoint(&who.workspace_id, &EndpointId::from_string(id), fields)
        .await?;
    Ok(Json(EndpointView::from(&e)).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    app.delete_endpoint(&who.workspace_id, &EndpointId::from_string(id))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn rotate_secret(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let (e, secret) = app
        .rotate_endpoint_secret(&who.workspace_id, &EndpointId::from_string(id))
        .await?;
    let mut view = json!(EndpointView::from(&e));
    view["secret"] = json!(secret);
    Ok(Json(view).into_response())
}

pub async fn deliveries(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&["limit", "cursor", "status"])?;
    let status = match params.get("status") {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            Problem::bad_request(format!(
                "`status` must be pending, succeeded or failed, not `{}`",
                crate::app::cut(s.to_owned())
            ))
        })?),
    };
    let page = app
        .list_deliveries(
            &who.workspace_id,
            &EndpointId::from_string(id),
            status,
            &params.page()?,
        )
        .await?;
    Ok(Json(views::PageView::of(&page, views::DeliveryView::from)).into_response())
}

pub async fn delivery(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let d = app.get_delivery(&who.workspace_id, &id).await?;
    Ok(Json(views::DeliveryView::from(&d)).into_response())
}

pub async fn replay(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let d = app.replay_delivery(&who.workspace_id, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(views::DeliveryView::from(&d))).into_response())
}

/// `{"since": "<RFC 3339 time>"}`: replays the endpoint's failed
/// deliveries made since then.
pub async fn replay_since(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let since = match &body {
        Value::Object(f) => {
            let mut errors = unknown_fields(f, &["since"], "expected only `since`");
            let since = match f.get("since") {
                Some(Value::String(s)) => Some(s.as_str()),
                Some(_) => {
                    errors.push(ValidationError::new(
                        &At::root().key("since"),
                        "expected an RFC 3339 time (a string) such as 2026-12-01T09:00:00Z",
                    ));
                    None
                }
                None => {
                    errors.push(ValidationError::new(
                        &At::root().key("since"),
                        "missing required field `since`: the failed deliveries of events since then are sent again",
                    ));
                    None
                }
            };
            if !errors.is_empty() {
                return Err(invalid(errors).into());
            }
            since
        }
        _ => None,
    };
    let Some(since) = since else {
        return Err(invalid(vec![ValidationError::new(
            &At::root(),
            "the body must be {\"since\": \"<RFC 3339 time>\"}: the failed deliveries of events since then are sent again",
        )])
        .into());
    };
    let since = chrono::DateTime::parse_from_rfc3339(since)
        .map_err(|_| {
            invalid(vec![ValidationError::new(
                &At::root().key("since"),
                format!(
                    "`{}` is not an RFC 3339 time such as 2026-12-01T09:00:00Z",
                    crate::app::cut(since.to_owned())
                ),
            )])
        })?
        .with_timezone(&chrono::Utc);
    let (replayed, more) = app
        .replay_failed_since(&who.workspace_id, &EndpointId::from_string(id), since)
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replayed": replayed, "more": more})),
    )
        .into_response())
}

/// `{"url", "events"?, "workflow_ids"?, "description"?, "disabled"?}`
/// (`url` required to create one).
fn endpoint_fields(body: &Value, create: bool) -> Result<EndpointFields, AppError> {
    let Value::Object(fields) = body else {
        return Err(invalid(vec![ValidationError::new(
            &At::root(),
            "the body must be a JSON object such as {\"url\": \"https://example.com/weft\"}",
        )]));
    };
    let mut errors = unknown_fields(
        fields,
        &[
            "url",
            "events",
            "workflow_ids",
            "description",
            "disabled",
            "rate_limit",
        ],
        "expected `url`, `events`, `workflow_ids`, `description`, `disabled` or `rate_limit`",
    );
    let at = |k: &str| At::root().key(k);
    let mut f = EndpointFields::default();
    match fields.get("url") {
        Some(Value::String(u)) => f.url = Some(u.clone()),
        None if !create => {}
        None => errors.push(ValidationError::new(
            &at("url"),
            "missing required field `url`: where deliveries are sent (https)",
        )),
        Some(_) => errors.push(ValidationError::new(
            &at("url"),
            "expected a URL (a string)",
        )),
    }
    match fields.get("events") {
        None => {}
        Some(Value::Array(items)) => {
            let mut events = Vec::new();
            for (i, v) in items.iter().enumerate() {
                match serde_json::from_value::<EventType>(v.clone()) {
                    Ok(ty) if !events.contains(&ty) => events.push(ty),
                    Ok(_) => {}
                    Err(_) => errors.push(ValidationError::new(
                        &at("events").index(i),
                        format!(
                            "unknown event {}; expected one of {}",
                            crate::app::cut(v.to_string()),
                            EventType::names()
                        ),
                    )),
                }
            }
            f.events = Some(events);
        }
        Some(_) => errors.push(ValidationError::new(
            &at("events"),
            "expected a list of event types",
        )),
    }
    match fields.get("workflow_ids") {
        None => {}
        Some(Value::Array(items)) => {
            let mut ids = Vec::new();
            for (i, v) in items.iter().enumerate() {
                match v {
                    Value::String(s) => ids.push(WorkflowId::from_string(s.clone())),
                    _ => errors.push(ValidationError::new(
                        &at("workflow_ids").index(i),
                        "expected a workflow id",
                    )),
                }
            }
            f.workflow_ids = Some(ids);
        }
        Some(_) => errors.push(ValidationError::new(
            &at("workflow_ids"),
            "expected a list of workflow ids",
        )),
    }
    match fields.get("description") {
        None => {}
        Some(Value::Null) => f.description = Some(None),
        Some(Value::String(d)) => f.description = Some(Some(d.clone())),
        Some(_) => errors.push(ValidationError::new(
            &at("description"),
            "expected a string",
        )),
    }
    match fields.get("rate_limit") {
        None => {}
        Some(Value::Null) => f.rate_limit = Some(None),
        // A whole number, written as such or as 5.0.
        Some(v) => match v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0)
                    .map(|f| f as u64)
            })
            .and_then(|n| u32::try_from(n).ok())
        {
            Some(n) => f.rate_limit = Some(Some(n)),
            None => errors.push(ValidationError::new(
                &at("rate_limit"),
                "expected a whole number of deliveries per second, or null",
            )),
        },
    }
    match fields.get("disabled") {
        None => {}
        Some(Value::Bool(b)) => f.disabled = Some(*b),
        Some(_) => errors.push(ValidationError::new(
            &at("disabled"),
            "expected true or false",
        )),
    }
    if errors.is_empty() {
        Ok(f)
    } else {
        Err(invalid(errors))
    }
}
