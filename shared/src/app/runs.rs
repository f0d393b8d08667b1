use chrono::{Duration, Utc};
use serde_json::{Map as JsonMap, Value};
use sha2::{Digest, Sha256};

use super::{App, AppError};
use crate::dag::{self, Records};
use crate::domain::*;
use crate::dsl::{Path, StepKind, ValidationError, Workflow};
use crate::ports::{
    CreateRun, IdempotencyClaim, Page, PageRequest, RunFilter, RunWrite, StoreError,
};

/// How long an Idempotency-Key holds after first use.
pub const IDEMPOTENCY_TTL_HOURS: i64 = 24;
/// How often a write that lost a race is tried again.
const WRITE_ATTEMPTS: usize = 8;
/// Largest run input accepted (the request body limit bounds it too).
const MAX_INPUT_BYTES: usize = 1024 * 1024;

/// A run with its steps, in definition order (map iterations follow their map).
#[derive(Clone, Debug)]
pub struct RunView {
    pub run: RunRecord,
    pub steps: Vec<StepRecord>,
    /// Model calls the run made, summed.
    pub usage: Usage,
}

fn request_error(path: &Path, msg: impl Into<String>) -> AppError {
    AppError::InvalidRequest(vec![ValidationError::new(path, msg)])
}

fn input_errors(schema: &Value, input: &Value) -> Vec<ValidationError> {
    let Ok(validator) = jsonschema::validator_for(schema) else {
        return Vec::new();
    };
    validator
        .iter_errors(input)
        .take(50)
        .map(|e| {
            let mut path = Path::root().key("input");
            for seg in e.instance_path().as_str().split('/').skip(1) {
                let seg = seg.replace("~1", "/").replace("~0", "~");
                path = match seg.parse::<usize>() {
                    Ok(i) => path.index(i),
                    Err(_) => path.key(&seg),
                };
            }
            ValidationError::new(&path, e.to_string())
        })
        .collect()
}

fn idempotency_key(key: &str) -> Result<&str, AppError> {
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(AppError::BadRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters (a UUID is a good choice)"
                .into(),
        ));
    }
    Ok(key)
}

/// Steps in the order a person reads them: definition order, with each map's
/// iterations after the map step.
fn ordered(wf: &Workflow, mut recs: Records, include_unstarted: bool) -> Vec<StepRecord> {
    fn walk(
        steps: &[crate::dsl::Step],
        prefix: &str,
        recs: &mut Records,
        out: &mut Vec<StepRecord>,
        unstarted: bool,
    ) {
        for s in steps {
            let key = format!("{prefix}{}", s.id);
            let rec = match recs.remove(&key) {
                Some(r) => r,
                None if unstarted => StepRecord::new(&key, s.kind.type_name()),
                None => continue,
            };
            let items = rec.items.as_ref().map_or(0, Vec::len);
            out.push(rec);
            if let StepKind::Map(m) = &s.kind {
                for i in 0..items {
                    walk(&m.steps, &format!("{key}.{i}."), recs, out, false);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(recs.len());
    walk(&wf.steps, "", &mut recs, &mut out, include_unstarted);
    out.extend(recs.into_values());
    out
}

impl App {
    async fn definition(&self, run: &RunRecord) -> Result<std::sync::Arc<Workflow>, AppError> {
        self.definitions
            .for_run(self.stores.workflows.as_ref(), run)
            .await
            .map_err(|e| {
                AppError::Internal(format!("loading the definition of run {}: {e}", run.id))
            })
    }

    /// Starts a run. Returns the run and whether this was a replay of an
    /// earlier request with the same Idempotency-Key.
    pub async fn start_run(
        &self,
        ws: &WorkspaceId,
        workflow_id: &WorkflowId,
        body: Value,
        idempotency: Option<&str>,
    ) -> Result<(RunRecord, bool), AppError> {
        let idempotency = idempotency.map(idempotency_key).transpose()?;
        let Value::Object(fields) = &body else {
            return Err(request_error(
                &Path::root(),
                "the body must be a JSON object such as {\"input\": {...}}",
            ));
        };
        let mut errors = Vec::new();
        for k in fields.keys() {
            if !matches!(k.as_str(), "input" | "version" | "budget_usd") {
                errors.push(ValidationError::new(
                    &Path::root().key(k),
                    format!("unknown field `{k}`; expected `input` and optionally `version` and `budget_usd`"),
                ));
            }
        }
        let input = fields
            .get("input")
            .cloned()
            .unwrap_or_else(|| Value::Object(JsonMap::new()));
        let version = match fields.get("version") {
            None | Some(Value::Null) => None,
            Some(v) => match v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
            {
                Some(n) => Some(n),
                None => {
                    errors.push(ValidationError::new(
                        &Path::root().key("version"),
                        "expected a version number (1, 2, ...)",
                    ));
                    None
                }
            },
        };
        if let Err(why) = crate::domain::limits::check_json(
            &input,
            MAX_INPUT_BYTES,
            crate::domain::limits::MAX_VALUE_DEPTH,
        ) {
            errors.push(ValidationError::new(
                &Path::root().key("input"),
                format!("the input {why}"),
            ));
        }
        let budget = crate::dsl::budget_usd(fields.get("budget_usd")).unwrap_or_else(|e| {
            errors.push(ValidationError::new(&Path::root().key("budget_usd"), e));
            None
        });
        if !errors.is_empty() {
            return Err(AppError::InvalidRequest(errors));
        }
        let stored = self.get_workflow(ws, workflow_id, version).await?;
        let wf = self
            .definitions
            .get(
                self.stores.workflows.as_ref(),
                ws,
                workflow_id,
                stored.version,
            )
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
        if let Some(schema) = &wf.input_schema {
            let errors = input_errors(schema, &input);
            if !errors.is_empty() {
                return Err(AppError::InvalidRequest(errors));
            }
        }

        // Made with its id: runs list by id in the order they were made.
        let (id, now) = RunId::generate_at();
        let run = RunRecord {
            workspace_id: ws.clone(),
            id,
            workflow_id: workflow_id.clone(),
            workflow_version: stored.version,
            status: RunStatus::Pending,
            input,
            output: None,
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            wake_at: Some(now),
            budget_usd: budget.or(wf.budget_usd),
            revision: 1,
            lease: self.driver.initial_lease(now),
        };
        let claim = idempotency.map(|key| {
            let mut h = Sha256::new();
            h.update(workflow_id.as_str().as_bytes());
            h.update([0]);
            h.update(body.to_string().as_bytes());
            IdempotencyClaim {
                key: key.to_owned(),
                request_hash: format!("{:x}", h.finalize()),
                expires_at: now + Duration::hours(IDEMPOTENCY_TTL_HOURS),
            }
        });
        match self.stores.runs.create_run(&run, claim.as_ref()).await? {
            CreateRun::Created => {
                if let Err(e) = self.driver.start(ws, &run.id).await {
                    // The run is stored as PENDING; the orchestrator's
                    // recovery starts it later.
                    tracing::warn!(workspace_id = %ws, run_id = %run.id, error = %e, "run stored but not yet started");
                }
                Ok((run, false))
            }
            CreateRun::Existing {
                run_id,
                request_hash,
            } => {
                if claim.is_some_and(|c| c.request_hash != request_hash) {
                    return Err(AppError::IdempotencyMismatch);
                }
                let first = self
                    .stores
                    .runs
                    .get_run(ws, &run_id)
                    .await?
                    .ok_or_else(|| {
                        AppError::Internal(format!(
                            "idempotency key points at missing run {run_id}"
                        ))
                    })?;
                Ok((first, true))
            }
        }
    }

    pub async fn get_run(&self, ws: &WorkspaceId, id: &RunId) -> Result<RunView, AppError> {
        let (run, steps) = self
            .stores
            .runs
            .load_run(ws, id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("run `{id}` not found")))?;
        let recs: Records = steps.into_iter().map(|s| (s.key.clone(), s)).collect();
        let wf = self.definition(&run).await?;
        self.view(&wf, run, recs).await
    }

    /// What the API shows of a run. Only runs whose workflow calls models
    /// read the usage ledger.
    async fn view(
        &self,
        wf: &Workflow,
        run: RunRecord,
        recs: Records,
    ) -> Result<RunView, AppError> {
        let usage = if wf.calls_models() {
            self.stores
                .usage
                .run_usage(&run.workspace_id, &run.id)
                .await?
        } else {
            Usage::default()
        };
        let steps = ordered(wf, recs, !run.status.is_terminal());
        Ok(RunView { run, steps, usage })
    }

    pub async fn list_runs(
        &self,
        ws: &WorkspaceId,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> Result<Page<RunRecord>, AppError> {
        Ok(self.stores.runs.list_runs(ws, filter, page).await?)
    }

    pub async fn run_logs(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        page: &PageRequest,
    ) -> Result<Page<LogEntry>, AppError> {
        if self.stores.runs.get_run(ws, id).await?.is_none() {
            return Err(AppError::NotFound(format!("run `{id}` not found")));
        }
        Ok(self.stores.runs.list_logs(ws, id, page).await?)
    }

    /// Reads a run, lets `change` edit it and its steps, and writes it back
    /// conditionally, trying again if another writer got there first.
    async fn change_run<F>(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        mut change: F,
    ) -> Result<RunView, AppError>
    where
        F: FnMut(
            &Workflow,
            &mut RunRecord,
            &mut Records,
        ) -> Result<(Vec<String>, Vec<LogEntry>), AppError>,
    {
        for _ in 0..WRITE_ATTEMPTS {
            let (mut run, steps) = self
                .stores
                .runs
                .load_run(ws, id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("run `{id}` not found")))?;
            let mut recs: Records = steps.into_iter().map(|s| (s.key.clone(), s)).collect();
            let wf = self.definition(&run).await?;
            let (changed, logs) = change(&wf, &mut run, &mut recs)?;
            run.revision += 1;
            let steps = changed
                .iter()
                .filter_map(|k| recs.get(k).cloned())
                .collect();
            match self
                .stores
                .runs
                .save_run(&RunWrite {
                    run: run.clone(),
                    steps,
                    logs,
                })
                .await
            {
                Ok(()) => {
                    if let Err(e) = self.driver.poke(ws, id).await {
                        tracing::warn!(workspace_id = %ws, run_id = %id, error = %e, "run changed but the orchestrator was not told");
                    }
                    return self.view(&wf, run, recs).await;
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Conflict(format!(
            "run `{id}` is changing quickly; try again"
        )))
    }

    pub async fn cancel_run(&self, ws: &WorkspaceId, id: &RunId) -> Result<RunView, AppError> {
        self.change_run(ws, id, |wf, run, recs| {
            if run.status.is_terminal() {
                return Err(AppError::Conflict(format!(
                    "run `{}` already ended as {}; only active runs can be cancelled",
                    run.id,
                    run.status.as_str()
                )));
            }
            let now = Utc::now();
            let changed = dag::close_open_steps(wf, recs, now, "the run was cancelled");
            run.status = RunStatus::Cancelled;
            run.finished_at = Some(now);
            run.wake_at = None;
            Ok((
                changed,
                vec![LogEntry::new(
                    LogLevel::Warn,
                    None,
                    "run cancelled through the API",
                )],
            ))
        })
        .await
    }

    /// Completes a waiting approval step with the given output.
    pub async fn complete_step(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
        output: Value,
    ) -> Result<RunView, AppError> {
        self.change_run(ws, id, |wf, run, recs| {
            let Some(step) = wf.step_by_key(key) else {
                return Err(AppError::NotFound(format!(
                    "run `{id}` has no step `{key}`"
                )));
            };
            if run.status.is_terminal() {
                return Err(AppError::Conflict(format!(
                    "run `{id}` already ended as {}",
                    run.status.as_str()
                )));
            }
            let status = recs.get(key).map_or(StepStatus::Pending, |r| r.status);
            if status != StepStatus::Waiting {
                return Err(AppError::Conflict(format!(
                    "step `{key}` is {}, not waiting",
                    serde_json::to_value(status)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )));
            }
            if !matches!(step.kind, StepKind::Approval(_)) {
                return Err(AppError::Conflict(format!(
                    "step `{key}` is a {} step; only approval steps can be completed",
                    step.kind.type_name()
                )));
            }
            if let Err(why) = crate::domain::limits::check_json(
                &output,
                crate::api::MAX_BODY_BYTES,
                crate::domain::limits::MAX_VALUE_DEPTH,
            ) {
                return Err(AppError::InvalidRequest(vec![ValidationError::new(
                    &Path::root().key("output"),
                    format!("the output {why}"),
                )]));
            }
            let now = Utc::now();
            if let Some(deadline) = recs.get(key).and_then(|r| r.wake_at)
                && deadline <= now
            {
                return Err(AppError::Conflict(format!(
                    "the approval `{key}` timed out at {}",
                    deadline.to_rfc3339()
                )));
            }
            if let Some(rec) = recs.get_mut(key) {
                dag::finish_attempt(
                    rec,
                    &step.retry,
                    Ok(output.clone()),
                    now,
                    &format!("{id}/{key}"),
                );
            }
            run.wake_at = Some(now);
            Ok((
                vec![key.to_owned()],
                vec![LogEntry::new(
                    LogLevel::Info,
                    Some(key),
                    "completed through the API",
                )],
            ))
        })
        .await
    }
}
