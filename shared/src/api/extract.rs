//! Request extractors whose failures are problem+json, not axum's plain text.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::Value;

use super::problem::Problem;
use crate::app::{App, AppError, Principal};
use crate::ports::{Cursor, DEFAULT_LIMIT, MAX_LIMIT, PageRequest};

/// The caller, authenticated and checked by the route's guard
/// (`access::guard`).
pub struct Auth(pub Principal);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, Problem> {
        match parts.extensions.get::<Principal>() {
            Some(p) => Ok(Auth(p.clone())),
            // A route that reads the caller without a guard: a bug.
            None => {
                Err(AppError::Internal("a route reads its caller but has no guard".into()).into())
            }
        }
    }
}

/// The request's body as JSON, `None` when it is empty. Any content type
/// is read as JSON, so `curl -d '{...}'` works without a header.
async fn read_json<S: Send + Sync>(req: Request, state: &S) -> Result<Option<Value>, Problem> {
    let bytes = Bytes::from_request(req, state).await.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
                format!(
                    "the request body is larger than the limit of {} bytes",
                    super::MAX_BODY_BYTES
                ),
            )
        }
        other => Problem::bad_request(format!("the request body could not be read: {other}")),
    })?;
    parse_optional(&bytes)
}

/// A JSON body.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        match read_json(req, state).await? {
            Some(v) => Ok(JsonBody(v)),
            None => Err(Problem::bad_request(
                "the request body is empty; send a JSON object",
            )),
        }
    }
}

/// A JSON body that may be left out: `None` for an empty body.
pub struct OptionalJsonBody(pub Option<Value>);

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Ok(OptionalJsonBody(read_json(req, state).await?))
    }
}

fn parse_optional(bytes: &[u8]) -> Result<Option<Value>, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(bytes)
        .map(Some)
        .map_err(|e| Problem::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// Query parameters, checked against the names an endpoint knows.
pub struct Params(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let Query(map) = Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|e| Problem::bad_request(format!("invalid query string: {e}")))?;
        Ok(Params(map))
    }
}

impl Params {
    pub fn only(&self, known: &[&str]) -> Result<(), Problem> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) if known.is_empty() => Err(Problem::bad_request(format!(
                "unknown query parameter `{k}`; this endpoint takes none"
            ))),
            Some(k) => Err(Problem::bad_request(format!(
                "unknown query parameter `{k}`; this endpoint accepts {}",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub fn page(&self) -> Result<PageRequest, Problem> {
        let limit = match self.get("limit") {
            None => DEFAULT_LIMIT,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    Problem::bad_request(format!(
                        "`limit` must be a whole number from 1 to {MAX_LIMIT}"
                    ))
                })?,
        };
        let cursor = self
            .get("cursor")
            .map(|c| Cursor::decode(c).filter(|c| !c.position().is_empty()).ok_or_else(|| Problem::bad_request("`cursor` is not a cursor this server issued; pass `next_cursor` from a previous page")))
            .transpose()?;
        Ok(PageRequest { limit, cursor })
    }
}
