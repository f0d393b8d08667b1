use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::commands::{invalid, unknown_fields};
use super::extract::{Auth, JsonBody};
use super::problem::Problem;
use super::views;
use crate::app::{App, AppError};
use crate::domain::{HookId, WorkflowId};
use crate::dsl::{Path as At, ValidationError};

pub async fn create(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(wf): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let fields = hook_fields(&body)?;
    let h = app
        .create_hook(&who.workspace_id, &WorkflowId::from_string(wf), fields)
        .await?;
    let at = format!("/v1/workflows/{}/hooks/{}", h.workflow_id, h.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, at)],
        Json(views::HookView::from(&h)),
    )
        .into_response())
}

pub async fn list(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(wf): Path<String>,
) -> Result<Response, Problem> {
    let all = app
        .list_hooks(&who.workspace_id, &WorkflowId::from_string(wf))
        .await?;
    let items: Vec<views::HookView> = all.iter().map(views::HookView::from).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let h = app
        .get_hook(
            &who.workspace_id,
            &WorkflowId::from_string(wf),
            &HookId::from_string(id),
        )
        .await?;
    Ok(Json(views::HookView::from(&h)).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    app.delete_hook(
        &who.workspace_id,
        &WorkflowId::from_string(wf),
        &HookId::from_string(id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/hooks/{hook_id}`: the public URL a sender calls. No API key:
/// the request's signature is what lets it in.
pub async fn receive(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let headers = crate::hooks::headers_of(&headers).map_err(Problem::bad_request)?;
    let receipt = app
        .receive_hook(&HookId::from_string(id), headers, &body, chrono::Utc::now())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": receipt, "status": "accepted"})),
    )
        .into_response())
}

/// `POST /v1/workflows/{id}/hooks`: `{"verify": {"scheme", "secret", …},
/// "dedupe", "input", "description"}` (all but `verify` optional).
pub fn hook_fields(body: &Value) -> Result<crate::app::HookFields, AppError> {
    let Value::Object(fields) = body else {
        return Err(invalid(vec![ValidationError::new(
            &At::root(),
            "the body must be a JSON object such as {\"verify\": {\"scheme\": \"github\", \"secret\": \"github-hook\"}}",
        )]));
    };
    let mut errors = unknown_fields(
        fields,
        &["verify", "dedupe", "input", "description"],
        "expected `verify` and optionally `dedupe`, `input` and `description`",
    );
    let at = |k: &str| At::root().key(k);
    let verification = match fields.get("verify") {
        None => {
            errors.push(ValidationError::new(
                &at("verify"),
                "missing required field `verify`: how requests prove they come from the sender, e.g. {\"scheme\": \"standard_webhooks\", \"secret\": \"<secret name>\"} (schemes: standard_webhooks, github, stripe, hmac)",
            ));
            None
        }
        Some(v) => {
            match serde_json::from_value::<crate::domain::Verification>(v.clone()) {
                Ok(ver) => {
                    let secret = ver.secret();
                    if !crate::dsl::is_secret_name(secret) {
                        errors.push(ValidationError::new(
                        &at("verify").key("secret"),
                        format!("`{secret}` is not a valid secret name: use 1-64 letters, digits or `_`, starting with a letter or `_`"),
                    ));
                    }
                    if let crate::domain::Verification::Hmac { header, .. } = &ver {
                        let lower = header.to_ascii_lowercase();
                        if axum::http::HeaderName::from_bytes(lower.as_bytes()).is_err()
                            || !crate::hooks::is_kept_header(&lower)
                        {
                            errors.push(ValidationError::new(
                            &at("verify").key("header"),
                            format!("`{header}` cannot carry a hook's signature: name another header"),
                        ));
                        }
                    }
                    Some(ver)
                }
                Err(e) => {
                    errors.push(ValidationError::new(
                    &at("verify"),
                    format!("{e} (schemes: standard_webhooks, github, stripe with `secret`; hmac with `secret`, `header` and optionally `encoding` (hex or base64) and `prefix`)"),
                ));
                    None
                }
            }
        }
    };
    let text = |k: &str, errors: &mut Vec<ValidationError>| match fields.get(k) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.push(ValidationError::new(&at(k), "expected a string"));
            None
        }
    };
    let dedupe = text("dedupe", &mut errors);
    let description = text("description", &mut errors);
    let input = fields.get("input").filter(|v| !v.is_null()).cloned();
    match verification {
        Some(verification) if errors.is_empty() => Ok(crate::app::HookFields {
            verification,
            dedupe,
            input,
            description,
        }),
        _ => Err(invalid(errors)),
    }
}
