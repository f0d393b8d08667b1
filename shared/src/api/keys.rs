//! `/v1/keys`: the workspace's API keys.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::commands::{invalid, unknown_fields};
use super::extract::{Auth, JsonBody, OptionalJsonBody, Params};
use super::problem::Problem;
use crate::app::{
    App, AppError, DEFAULT_ROTATION_OVERLAP, MAX_KEY_WORKFLOWS, MAX_ROTATION_OVERLAP, NewKey,
};
use crate::domain::{ApiKeyId, ApiKeyRecord, Rate, Role, WorkflowId};
use crate::dsl::{Path, ValidationError};

/// Longest key name.
const MAX_KEY_NAME_CHARS: usize = 100;

/// A key as listed: never its secret or its hash.
#[derive(Serialize)]
pub struct KeyView<'a> {
    pub id: &'a ApiKeyId,
    pub name: &'a str,
    pub role: Role,
    pub prefix: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workflows: Option<&'a [WorkflowId]>,
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<&'a ApiKeyId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<&'a ApiKeyId>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl<'a> From<&'a ApiKeyRecord> for KeyView<'a> {
    fn from(k: &'a ApiKeyRecord) -> Self {
        KeyView {
            id: &k.id,
            name: &k.name,
            role: k.role,
            prefix: &k.prefix,
            workflows: k.workflows.as_deref(),
            expires_at: k.expires_at,
            rotated_from: k.rotated_from.as_ref(),
            rate_limit: k.rate_limit,
            replaced_by: k.replaced_by.as_ref(),
            created_at: k.created_at,
            last_used_at: k.last_used_at,
        }
    }
}

/// A key just made: the view and, this once, the key itself.
#[derive(Serialize)]
struct MadeKey<'a> {
    #[serde(flatten)]
    view: KeyView<'a>,
    key: &'a str,
}

fn made(rec: &ApiKeyRecord, secret: &str) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/keys/{}", rec.id))],
        Json(MadeKey {
            view: KeyView::from(rec),
            key: secret,
        }),
    )
        .into_response()
}

pub async fn create(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let new = new_key(&body, Utc::now())?;
    let (rec, secret) = app.create_key(&who, new).await?;
    Ok(made(&rec, &secret))
}

pub async fn list(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&[])?;
    let keys = app.list_keys(&who).await?;
    let items: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, Problem> {
    let rec = app.get_key(&who, &ApiKeyId::from_string(id)).await?;
    Ok(Json(KeyView::from(&rec)).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, Problem> {
    app.delete_key(&who, &ApiKeyId::from_string(id)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn rotate(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    UrlPath(id): UrlPath<String>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, Problem> {
    let overlap = rotation_overlap(body.as_ref())?;
    let (rec, secret) = app
        .rotate_key(&who, &ApiKeyId::from_string(id), overlap)
        .await?;
    Ok(made(&rec, &secret))
}

/// `POST /v1/keys`: `{"name", "role", "workflows", "expires_at"}`.
fn new_key(body: &Value, now: DateTime<Utc>) -> Result<NewKey, AppError> {
    let Value::Object(m) = body else {
        return Err(AppError::BadRequest(
            "the body must be a JSON object such as {\"name\": \"ci\", \"role\": \"editor\"}"
                .into(),
        ));
    };
    let at = |k: &str| Path::root().key(k);
    let mut errors = unknown_fields(
        m,
        &["name", "role", "workflows", "expires_at", "rate_limit"],
        "a key has name, role, workflows, expires_at and rate_limit",
    );
    let name = match m.get("name").and_then(Value::as_str).map(str::trim) {
        Some(n)
            if !n.is_empty()
                && n.chars().count() <= MAX_KEY_NAME_CHARS
                && !n.chars().any(|c| c.is_control() || is_bidi_control(c)) =>
        {
            n.to_owned()
        }
        _ => {
            errors.push(ValidationError::new(
                &at("name"),
                format!("`name` must be a non-empty string of at most {MAX_KEY_NAME_CHARS} characters, without control characters"),
            ));
            String::new()
        }
    };
    let role = match m.get("role").and_then(Value::as_str).and_then(Role::parse) {
        Some(r) => r,
        None => {
            errors.push(ValidationError::new(
                &at("role"),
                "`role` must be one of viewer, editor, admin, owner",
            ));
            Role::Viewer
        }
    };
    let workflows = match m.get("workflows") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_KEY_WORKFLOWS => {
            let mut ids = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str().filter(|s| !s.is_empty() && s.len() <= 200) {
                    Some(id) => ids.push(WorkflowId::from_string(id)),
                    None => errors.push(ValidationError::new(
                        &at("workflows").index(i),
                        "each entry of `workflows` must be a workflow id",
                    )),
                }
            }
            // Each once, in the order given (errors found later name
            // positions in this list).
            let mut seen = std::collections::HashSet::new();
            ids.retain(|id| seen.insert(id.clone()));
            Some(ids)
        }
        Some(_) => {
            errors.push(ValidationError::new(
                &at("workflows"),
                format!("`workflows` must be a list of 1 to {MAX_KEY_WORKFLOWS} workflow ids (leave it out for a key not limited to workflows)"),
            ));
            None
        }
    };
    if workflows.is_some() && role > Role::Editor {
        errors.push(ValidationError::new(
            &at("role"),
            "a key limited to workflows can only start and read runs: its role must be viewer or editor",
        ));
    }
    let expires_at = match m.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(v) => match v
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        {
            Some(t) if t.with_timezone(&Utc) > now => Some(t.with_timezone(&Utc)),
            _ => {
                errors.push(ValidationError::new(
                    &at("expires_at"),
                    "`expires_at` must be an RFC 3339 time in the future, e.g. 2027-01-01T00:00:00Z",
                ));
                None
            }
        },
    };
    let rate_limit = match m.get("rate_limit") {
        None | Some(Value::Null) => None,
        Some(v) => {
            // An object of exactly these two whole numbers.
            let rate = v
                .as_object()
                .filter(|o| o.len() == 2)
                .and_then(|o| {
                    Some(Rate {
                        per_second: u32::try_from(o.get("per_second")?.as_u64()?).ok()?,
                        burst: u32::try_from(o.get("burst")?.as_u64()?).ok()?,
                    })
                })
                .filter(Rate::valid);
            if rate.is_none() {
                errors.push(ValidationError::new(
                    &at("rate_limit"),
                    "`rate_limit` must be {\"per_second\": N, \"burst\": B} with 1 ≤ N ≤ B ≤ 1000000",
                ));
            }
            rate
        }
    };
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    Ok(NewKey {
        rate_limit,
        name,
        role,
        workflows,
        expires_at,
    })
}

/// Characters that reorder text as shown or show nothing (a name that
/// reads as another).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}'
    )
}

/// `POST /v1/keys/{id}/rotate`: `{"overlap": "24h"}` (how long the old key
/// keeps working; `0s` ends it now).
fn rotation_overlap(body: Option<&Value>) -> Result<chrono::Duration, AppError> {
    let Some(body) = body else {
        return Ok(DEFAULT_ROTATION_OVERLAP);
    };
    let Value::Object(m) = body else {
        return Err(AppError::BadRequest(
            "the body must be a JSON object such as {\"overlap\": \"24h\"}, or empty".into(),
        ));
    };
    let mut errors = unknown_fields(m, &["overlap"], "send {\"overlap\": \"24h\"}");
    let max_hours = MAX_ROTATION_OVERLAP.num_hours();
    let overlap = match m.get("overlap") {
        None | Some(Value::Null) => DEFAULT_ROTATION_OVERLAP,
        Some(Value::String(s)) => match humantime::parse_duration(s)
            .ok()
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .filter(|d| *d <= MAX_ROTATION_OVERLAP)
        {
            Some(d) => d,
            None => {
                errors.push(ValidationError::new(
                    &Path::root().key("overlap"),
                    format!("`overlap` must be a duration such as \"1h\" or \"0s\", at most {max_hours}h"),
                ));
                DEFAULT_ROTATION_OVERLAP
            }
        },
        Some(_) => {
            errors.push(ValidationError::new(
                &Path::root().key("overlap"),
                format!(
                    "`overlap` must be a duration such as \"1h\" or \"0s\", at most {max_hours}h"
                ),
            ));
            DEFAULT_ROTATION_OVERLAP
        }
    };
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    Ok(overlap)
}
