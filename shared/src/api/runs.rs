use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::extract::{Auth, JsonBody, OptionalJsonBody, Params};
use super::problem::Problem;
use super::{commands, views};
use crate::app::{App, AppError};
use crate::domain::{RunId, RunStatus, WorkflowId};
use crate::ports::RunFilter;

pub async fn start(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Problem> {
    let wf = WorkflowId::from_string(id);
    if !who.may_see(&wf) {
        return Err(AppError::NotFound(format!("workflow `{wf}` not found")).into());
    }
    let cmd = commands::start_run(&body, &headers)?;
    let (run, replayed) = app.start_run(&who.workspace_id, &wf, cmd).await?;
    let mut res = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/runs/{}", run.id))],
        Json(views::RunAccepted::from(&run)),
    )
        .into_response();
    if replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(res)
}

pub async fn list(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&["limit", "cursor", "status", "workflow_id"])?;
    let status = params
        .get("status")
        .map(|s| RunStatus::parse(s).ok_or_else(|| Problem::bad_request(format!("unknown status `{s}`; expected PENDING, RUNNING, WAITING, COMPLETED, FAILED or CANCELLED"))))
        .transpose()?;
    let mut workflow_id = params.get("workflow_id").map(WorkflowId::from_string);
    if let Some(only) = &who.workflows {
        match &workflow_id {
            Some(wf) if !who.may_see(wf) => {
                return Err(AppError::NotFound(format!("workflow `{wf}` not found")).into());
            }
            Some(_) => {}
            None if only.len() == 1 => workflow_id = only.first().cloned(),
            None => {
                return Err(Problem::bad_request(
                    "this key is limited to several workflows: pass `workflow_id` to list the runs of one",
                ));
            }
        }
    }
    let filter = RunFilter {
        status,
        workflow_id,
    };
    let page = app
        .list_runs(&who.workspace_id, &filter, &params.page()?)
        .await?;
    Ok(Json(views::PageView::of(&page, views::RunSummaryView::from)).into_response())
}

/// The run as the API shows it: the first steps with their outputs, as far
/// as one answer holds them.
async fn shown(app: &App, mut view: crate::app::RunView) -> Result<Response, Problem> {
    let budget = views::VIEW_BYTES
        .saturating_sub(views::size_of(&view.run.input))
        .saturating_sub(view.run.output.as_ref().map_or(0, views::size_of));
    app.with_outputs(&mut view, 0..views::VIEW_STEPS, budget)
        .await?;
    Ok(Json(views::RunDetailView::from(&view)).into_response())
}

pub async fn get(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id = RunId::from_string(id);
    app.run_in_scope(&who, &id).await?;
    let view = app.get_run(&who.workspace_id, &id).await?;
    shown(&app, view).await
}

/// The run's steps in order, a page at a time.
pub async fn steps(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&["limit", "cursor"])?;
    let page = params.page()?;
    let id = RunId::from_string(id);
    app.run_in_scope(&who, &id).await?;
    let mut view = app.get_run(&who.workspace_id, &id).await?;
    let start = match &page.cursor {
        None => 0,
        Some(c) => c
            .position()
            .parse::<usize>()
            .map_err(|_| Problem::bad_request("`cursor` is not a cursor of this listing"))?,
    };
    let end = (start.saturating_add(page.limit as usize)).min(view.steps.len());
    let start = start.min(end);
    app.with_outputs(&mut view, start..end, views::VIEW_BYTES)
        .await?;
    let mut budget = views::VIEW_BYTES;
    let items: Vec<views::StepView> = view.steps[start..end]
        .iter()
        .map(|s| views::step_within(s, &mut budget))
        .collect();
    let next_cursor = (end < view.steps.len())
        .then(|| crate::ports::Cursor::from_position(&end.to_string()).encode());
    Ok(Json(views::PageView { items, next_cursor }).into_response())
}

/// One step of a run, whole (its key: `id`, or `map.3.id` inside a map).
pub async fn step(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path((id, key)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let id = RunId::from_string(id);
    app.run_in_scope(&who, &id).await?;
    let (s, _room) = app.get_step(&who.workspace_id, &id, &key).await?;
    Ok(Json(views::StepView::from(&s)).into_response())
}

pub async fn logs(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&["limit", "cursor"])?;
    let id = RunId::from_string(id);
    app.run_in_scope(&who, &id).await?;
    let page = app
        .run_logs(&who.workspace_id, &id, &params.page()?)
        .await?;
    Ok(Json(views::PageView::of(&page, views::LogView::from)).into_response())
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let view = app
        .cancel_run(&who.workspace_id, &RunId::from_string(id))
        .await?;
    shown(&app, view).await
}

pub async fn complete_step(
    State(app): State<Arc<App>>,
    Auth(who): Auth,
    Path((id, step)): Path<(String, String)>,
    OptionalJsonBody(body): OptionalJsonBody,
) -> Result<Response, Problem> {
    let output = commands::complete_step(body)?;
    let view = app
        .complete_step(&who.workspace_id, &RunId::from_string(id), &step, output)
        .await?;
    shown(&app, view).await
}
