//! RFC 9457 problem details: every 4xx and 5xx answer is one of these.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::app::AppError;
use crate::dsl::ValidationError;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// Most problems one answer lists (a definition can have thousands).
const MAX_LISTED: usize = 200;

#[derive(Debug)]
pub struct Problem {
    pub status: StatusCode,
    /// Short slug; the `type` member is `/problems/<slug>`, documented in the README.
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub errors: Option<Vec<ValidationError>>,
    pub www_authenticate: bool,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            errors: None,
            www_authenticate: false,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }
}

impl From<AppError> for Problem {
    fn from(e: AppError) -> Self {
        match e {
            AppError::NotFound(m) => Problem::not_found(m),
            AppError::InvalidDefinition(errors) => Problem {
                errors: Some(errors.iter().take(MAX_LISTED).cloned().collect()),
                ..Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-definition",
                    "The workflow definition is invalid",
                    if errors.len() > MAX_LISTED {
                        format!(
                            "{} problem(s) found; the first {MAX_LISTED} are in `errors`",
                            errors.len()
                        )
                    } else {
                        format!("{} problem(s) found; see `errors`", errors.len())
                    },
                )
            },
            AppError::InvalidRequest(errors) => Problem {
                errors: Some(errors.iter().take(MAX_LISTED).cloned().collect()),
                ..Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-request",
                    "The request is invalid",
                    errors
                        .iter()
                        .take(3)
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            },
            AppError::Conflict(m) => Problem::new(StatusCode::CONFLICT, "conflict", "Conflict", m),
            AppError::IdempotencyMismatch => Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused with a different request",
                "this Idempotency-Key was first used with a different request body; use a new key for a new request",
            ),
            AppError::BadRequest(m) => Problem::bad_request(m),
            AppError::Unauthorized => Problem {
                www_authenticate: true,
                ..Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "Unauthorized",
                    AppError::Unauthorized.to_string(),
                )
            },
            AppError::Forbidden(m) => {
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", m)
            }
            AppError::SignatureInvalid(m) => Problem::new(
                StatusCode::UNAUTHORIZED,
                "signature-invalid",
                "Signature invalid",
                format!("the request's signature could not be verified: {m}"),
            ),
            AppError::Internal(m) => {
                tracing::error!(error = %m, "internal error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "Internal server error",
                    "something went wrong on our side; the error was logged",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("/problems/{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let (Some(errors), Value::Object(m)) = (self.errors, &mut body) {
            m.insert("errors".into(), json!(errors));
        }
        let mut res = (self.status, body.to_string()).into_response();
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if self.www_authenticate {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        Problem::from(self).into_response()
    }
}
