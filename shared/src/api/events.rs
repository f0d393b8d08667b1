use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::extract::{Auth, JsonBody};
use super::problem::Problem;
use super::{commands, views};
use crate::app::App;

/// `POST /v1/events`: starts the runs of the workflows it triggers.
pub async fn send(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let ev = commands::send_event(&body)?;
    let outcome = app.send_event(&who.workspace_id, ev).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(views::EventAccepted::from(&outcome)),
    )
        .into_response())
}
