//! One pass of a run driver, shared by the embedded orchestrator and the
//! Step Functions plan function: load the run, apply the DAG core, commit
//! (retrying when another writer won); and recording an I/O step's result.

use anyhow::Context as _;
use chrono::Utc;

use crate::app::{DefinitionCache, DefinitionError};
use crate::dag::Records;
use crate::domain::*;
use crate::engine::{Dispatch, RunInfo, advance, interrupt_orphans, record_external};
use crate::ports::{RunStore, RunWrite, StepCall, StepExecutor, StoreError, WorkflowStore};

/// Where a driver reads and writes runs.
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    pub runs: &'a dyn RunStore,
    pub workflows: &'a dyn WorkflowStore,
    pub definitions: &'a DefinitionCache,
}

/// What a pass committed.
pub struct Ticked {
    /// The run as saved (or as found, when nothing changed).
    pub run: RunRecord,
    /// I/O step attempts to start now.
    pub dispatch: Vec<Dispatch>,
    /// True when this pass finished the run.
    pub finished: bool,
    /// The run waits for an outside event (the core's `awaits_event`).
    pub awaits_event: bool,
}

impl Ticked {
    /// The step call for a dispatch of this run.
    pub fn call(&self, d: &Dispatch) -> StepCall {
        StepCall {
            workspace_id: self.run.workspace_id.clone(),
            run_id: self.run.id.clone(),
            workflow_id: self.run.workflow_id.clone(),
            budget_usd: self.run.budget_usd,
            step_key: d.key.clone(),
            step_type: d.step_type.clone(),
            attempt: d.attempt,
            request: d.request.clone(),
            timeout: d.timeout,
        }
    }
}

/// The failure of a step whose type this deployment has no executor for.
pub fn no_executor(step_type: &str) -> StepError {
    StepError::permanent(
        "no_executor",
        format!("this deployment cannot run `{step_type}` steps"),
    )
}

/// Runs one attempt on its executor (None: this deployment has none for the
/// step type), bounded by the step's timeout.
pub async fn attempt(
    executor: Option<&dyn StepExecutor>,
    call: &StepCall,
) -> Result<serde_json::Value, StepError> {
    let Some(e) = executor else {
        return Err(no_executor(&call.step_type));
    };
    match tokio::time::timeout(call.timeout, e.execute(call)).await {
        Ok(r) => r,
        Err(_) => Err(StepError::transient(
            "timeout",
            format!(
                "the attempt took longer than its timeout of {}",
                humantime::format_duration(call.timeout)
            ),
        )),
    }
}

/// The run and its steps, unless it is gone or already finished.
pub async fn load_active(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
) -> anyhow::Result<Option<(RunRecord, Records)>> {
    let Some((run, steps)) = s.runs.load_run(ws, id).await.context("reading the run")? else {
        return Ok(None);
    };
    if run.status.is_terminal() {
        return Ok(None);
    }
    Ok(Some((
        run,
        steps.into_iter().map(|s| (s.key.clone(), s)).collect(),
    )))
}

/// Advances the run once and commits it. `in_flight` tells which running
/// I/O attempts an executor is still working on (others were interrupted);
/// `claim(dispatch, on)` is called before the write is tried (`on`) and after
/// it lost (`!on`). Returns None if the run is gone or already finished.
pub async fn tick(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    in_flight: impl Fn(&str, u32) -> bool,
    claim: impl Fn(&[Dispatch], bool),
) -> anyhow::Result<Option<Ticked>> {
    loop {
        let Some((mut run, mut recs)) = load_active(s, ws, id).await? else {
            return Ok(None);
        };
        let now = Utc::now();
        let mut logs = Vec::new();
        let wf = match s.definitions.for_run(s.workflows, &run).await {
            Ok(wf) => Some(wf),
            Err(DefinitionError::Store(e)) => return Err(e).context("loading the workflow"),
            Err(e) => {
                run.status = RunStatus::Failed;
                run.error = Some(StepError::permanent(
                    "definition_unavailable",
                    e.to_string(),
                ));
                run.finished_at = Some(now);
                run.wake_at = None;
                None
            }
        };
        if run.status == RunStatus::Pending {
            run.started_at = Some(now);
            logs.push(LogEntry::new(
                LogLevel::Info,
                None,
                format!(
                    "run started (workflow {} v{})",
                    run.workflow_id, run.workflow_version
                ),
            ));
        }
        let mut changed = Vec::new();
        let mut dispatch = Vec::new();
        let mut awaits_event = false;
        if let Some(wf) = &wf {
            let mut keys =
                interrupt_orphans(wf, &mut recs, id.as_str(), now, &in_flight, &mut logs);
            let info = RunInfo {
                run_id: id.as_str(),
                workflow_id: run.workflow_id.as_str(),
                version: run.workflow_version,
                input: &run.input,
            };
            let adv = advance(wf, info, &mut recs, now);
            let before = (run.status, run.wake_at);
            run.status = adv.status;
            run.wake_at = adv.wake_at;
            if adv.status.is_terminal() {
                run.finished_at = Some(now);
                run.output = adv.output.clone();
                run.error = adv.error.clone();
            }
            keys.extend(adv.changed);
            if keys.is_empty()
                && logs.is_empty()
                && adv.logs.is_empty()
                && before == (run.status, run.wake_at)
            {
                return Ok(Some(Ticked {
                    run,
                    dispatch: Vec::new(),
                    finished: false,
                    awaits_event: adv.awaits_event,
                }));
            }
            changed = keys.iter().filter_map(|k| recs.get(k).cloned()).collect();
            for l in &adv.logs {
                tracing::debug!(
                    step_id = l.step_id.as_deref().unwrap_or(""),
                    "{}",
                    l.message
                );
            }
            logs.extend(adv.logs);
            dispatch = adv.dispatch;
            awaits_event = adv.awaits_event;
        }
        run.revision += 1;
        let finished = run.status.is_terminal();
        let write = RunWrite {
            run,
            steps: changed,
            logs,
        };
        claim(&dispatch, true);
        match s.runs.save_run(&write).await {
            Ok(()) => {
                if finished {
                    let r = &write.run;
                    let ms = r
                        .started_at
                        .zip(r.finished_at)
                        .map(|(a, b)| (b - a).num_milliseconds());
                    tracing::info!(status = r.status.as_str(), duration_ms = ms, "run finished");
                }
                return Ok(Some(Ticked {
                    run: write.run,
                    dispatch,
                    finished,
                    awaits_event,
                }));
            }
            // Someone else (a cancel, an approval, a step result) wrote
            // first: read again.
            Err(StoreError::Conflict(_)) => {
                claim(&dispatch, false);
                continue;
            }
            Err(e) => {
                claim(&dispatch, false);
                return Err(e).context("saving the run");
            }
        }
    }
}

/// Records the result of attempt `attempt` of step `key` and asks the run to
/// be looked at now. A stale result (the run moved on) is dropped.
pub async fn record(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    key: &str,
    attempt: u32,
    result: Result<serde_json::Value, StepError>,
) -> anyhow::Result<()> {
    loop {
        let Some((mut run, mut recs)) = load_active(s, ws, id).await? else {
            return Ok(());
        };
        let wf = s
            .definitions
            .for_run(s.workflows, &run)
            .await
            .context("loading the workflow")?;
        let now = Utc::now();
        let Some(line) = record_external(
            &wf,
            &mut recs,
            id.as_str(),
            key,
            attempt,
            result.clone(),
            now,
        ) else {
            return Ok(());
        };
        tracing::info!(step_id = %key, "{}", line.message);
        run.revision += 1;
        run.wake_at = Some(now);
        let steps = recs.get(key).cloned().into_iter().collect();
        match s
            .runs
            .save_run(&RunWrite {
                run,
                steps,
                logs: vec![line],
            })
            .await
        {
            Ok(()) => return Ok(()),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e).context("saving the step result"),
        }
    }
}

/// Ends the run as failed with `error`, closing its open steps (for a run
/// no pass can handle). False if it was gone or had already ended.
pub async fn fail(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    error: StepError,
) -> anyhow::Result<bool> {
    loop {
        let Some((mut run, mut recs)) = load_active(s, ws, id).await? else {
            return Ok(false);
        };
        let now = Utc::now();
        let changed = match s.definitions.for_run(s.workflows, &run).await {
            Ok(wf) => crate::dag::close_open_steps(&wf, &mut recs, now, "the run failed"),
            Err(_) => Vec::new(),
        };
        run.status = RunStatus::Failed;
        run.finished_at = Some(now);
        run.wake_at = None;
        run.revision += 1;
        let line = LogEntry::new(
            LogLevel::Error,
            None,
            format!("run failed: {}", error.message),
        );
        run.error = Some(error.clone());
        let steps = changed
            .iter()
            .filter_map(|k| recs.get(k).cloned())
            .collect();
        match s
            .runs
            .save_run(&RunWrite {
                run,
                steps,
                logs: vec![line],
            })
            .await
        {
            Ok(()) => return Ok(true),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e).context("saving the failed run"),
        }
    }
}
