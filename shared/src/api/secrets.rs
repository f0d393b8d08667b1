use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::{Auth, JsonBody};
use super::problem::Problem;
use super::{commands, views};
use crate::app::App;

pub async fn put(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let value = commands::secret_value(&body)?;
    let meta = app.put_secret(&who.workspace_id, &name, value).await?;
    Ok(Json(views::SecretView::from(&meta)).into_response())
}

pub async fn list(State(app): State<Arc<App>>, Auth(who): Auth) -> Result<Response, Problem> {
    let items = app.list_secrets(&who.workspace_id).await?;
    let items: Vec<views::SecretView> = items.iter().map(views::SecretView::from).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    app.delete_secret(&who.workspace_id, &name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
