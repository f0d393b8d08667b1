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
use crate::domain::{ScheduleId, WorkflowId};

pub async fn create(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(wf): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let fields = commands::schedule_fields(&body, true)?;
    let s = app
        .create_schedule(&who.workspace_id, &WorkflowId::from_string(wf), fields)
        .await?;
    let at = format!("/v1/workflows/{}/schedules/{}", s.workflow_id, s.id);
    Ok((
        StatusCode::CREATED,
        [(axum::http::header::LOCATION, at)],
        Json(views::ScheduleView::from(&s)),
    )
        .into_response())
}

pub async fn list(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(wf): Path<String>,
) -> Result<Response, Problem> {
    let all = app
        .list_schedules(&who.workspace_id, &WorkflowId::from_string(wf))
        .await?;
    let items: Vec<views::ScheduleView> = all.iter().map(views::ScheduleView::from).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let s = app
        .get_schedule(
            &who.workspace_id,
            &WorkflowId::from_string(wf),
            &ScheduleId::from_string(id),
        )
        .await?;
    Ok(Json(views::ScheduleView::from(&s)).into_response())
}

pub async fn update(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path((wf, id)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let fields = commands::schedule_fields(&body, false)?;
    let s = app
        .update_schedule(
            &who.workspace_id,
            &WorkflowId::from_string(wf),
            &ScheduleId::from_string(id),
            fields,
        )
        .await?;
    Ok(Json(views::ScheduleView::from(&s)).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path((wf, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    app.delete_schedule(
        &who.workspace_id,
        &WorkflowId::from_string(wf),
        &ScheduleId::from_string(id),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
