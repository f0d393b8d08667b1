use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::{Auth, JsonBody, Params};
use super::problem::Problem;
use super::{commands, views};
use crate::app::App;

pub async fn get_settings(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
) -> Result<Response, Problem> {
    let s = app.get_settings(&who.workspace_id).await?;
    Ok(Json(json!(s)).into_response())
}

pub async fn put_settings(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let s = app
        .put_settings(&who.workspace_id, commands::settings(&body)?)
        .await?;
    Ok(Json(json!(s)).into_response())
}

pub async fn report(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    params: Params,
) -> Result<Response, Problem> {
    let range = commands::usage_range(&params)?;
    let report = app.usage_report(&who.workspace_id, range).await?;
    Ok(Json(views::UsageReportView::from(&report)).into_response())
}
