use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::{Auth, JsonBody, Params};
use super::problem::Problem;
use super::views;
use crate::app::App;
use crate::domain::WorkflowId;

pub async fn create(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    JsonBody(def): JsonBody,
) -> Result<Response, Problem> {
    let v = app.create_workflow_as(&who, def).await?;
    let location = format!("/v1/workflows/{}", v.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(views::WorkflowView::from(&v)),
    )
        .into_response())
}

pub async fn list(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&["limit", "cursor"])?;
    let page = app
        .list_workflows(&who.workspace_id, &params.page()?)
        .await?;
    Ok(Json(views::PageView::of(&page, views::WorkflowSummaryView::from)).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&["version"])?;
    let version = params
        .get("version")
        .map(|v| {
            v.parse::<u32>()
                .map_err(|_| Problem::bad_request("`version` must be a version number (1, 2, ...)"))
        })
        .transpose()?;
    let v = app
        .get_workflow(&who.workspace_id, &WorkflowId::from_string(id), version)
        .await?;
    Ok(Json(views::WorkflowView::from(&v)).into_response())
}

pub async fn update(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
    JsonBody(def): JsonBody,
) -> Result<Response, Problem> {
    let v = app
        .update_workflow(&who, &WorkflowId::from_string(id), def)
        .await?;
    Ok(Json(views::WorkflowView::from(&v)).into_response())
}

pub async fn archive(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    app.archive_workflow(&who, &WorkflowId::from_string(id))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
