use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;

use super::{App, AppError, Principal, StartRun};
use crate::dag::{self, Records};
use crate::domain::*;
use crate::dsl::{Path, StepKind, ValidationError, Workflow};
use crate::ports::{
    CreateRun, IdempotencyClaim, Page, PageRequest, RunFilter, RunWrite, StoreError, Tried,
    retry_conflicts,
};

/// How long an Idempotency-Key holds after first use.
pub const IDEMPOTENCY_TTL_HOURS: i64 = 24;

/// What delivering an event to a waiting step did.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Delivery {
    /// The step completed with the event.
    Resumed,
    /// Its `match` does not hold for this event.
    NoMatch,
    /// Its `match` could not be evaluated.
    Failed(String),
    /// Not waiting yet: its waiter stays.
    NotYet,
    /// The step or run is no longer waiting: its waiter goes.
    Gone,
}

/// What a run is claimed under (an Idempotency-Key, an event's id): a
/// start that finds the claim held returns the run that holds it.
pub(super) struct Claim {
    pub key: String,
    /// What the claim's request is checked against.
    pub request_hash: String,
}

/// A run with its steps, in definition order (map iterations follow their
/// map). The steps are read without their outputs; `App::with_outputs`
/// reads those of the steps shown.
#[derive(Clone, Debug)]
pub struct RunView {
    pub run: RunRecord,
    pub steps: Vec<StepRecord>,
    /// Model calls the run made, summed.
    pub usage: Usage,
    /// The room what it holds takes in the process's read budget
    /// (`App::reads`), given back when the view is dropped.
    pub rooms: Vec<std::sync::Arc<OwnedSemaphorePermit>>,
}

/// Most characters of one schema error's message (the validator quotes the
/// offending value, which may be large).
const MAX_SCHEMA_MESSAGE: usize = 300;

pub(super) fn input_errors(schema: &Value, input: &Value) -> Vec<ValidationError> {
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
            let mut msg = e.to_string();
            if let Some((i, _)) = msg.char_indices().nth(MAX_SCHEMA_MESSAGE) {
                msg.truncate(i);
                msg.push('…');
            }
            ValidationError::new(&path, msg)
        })
        .collect()
}

/// Steps in the order a person reads them: definition order, with each map's
/// iterations after the map step, by index. (Read from the records' keys,
/// so records read without their items order the same.)
fn ordered(wf: &Workflow, mut recs: Records, include_unstarted: bool) -> Vec<StepRecord> {
    /// The iteration indices recorded under the map at `key`, in order.
    fn iterations(recs: &Records, key: &str) -> Vec<usize> {
        let prefix = format!("{key}.");
        let mut found: Vec<usize> = recs
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter_map(|(k, _)| k[prefix.len()..].split('.').next()?.parse().ok())
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }
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
            out.push(rec);
            if let StepKind::Map(m) = &s.kind {
                for i in iterations(recs, &key) {
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
        cmd: StartRun,
    ) -> Result<(RunRecord, bool), AppError> {
        let claim = cmd.idempotency.as_ref().map(|key| Claim {
            key: key.as_str().to_owned(),
            request_hash: cmd.request_hash(workflow_id),
        });
        self.start_run_claimed(ws, workflow_id, cmd, claim).await
    }

    /// Starts a run, claimed under `claim` if given: a start with a claim
    /// that is held returns the run that claimed it (if its request hash is
    /// the same; else `IdempotencyMismatch`).
    pub(super) async fn start_run_claimed(
        &self,
        ws: &WorkspaceId,
        workflow_id: &WorkflowId,
        cmd: StartRun,
        claim: Option<Claim>,
    ) -> Result<(RunRecord, bool), AppError> {
        let stored = self.get_workflow(ws, workflow_id, cmd.version).await?;
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
            let errors = input_errors(schema, &cmd.input);
            if !errors.is_empty() {
                return Err(AppError::InvalidRequest(errors));
            }
        }

        // Made with its id: runs list by id in the order they were made.
        let (id, now) = RunId::generate_at();
        let claim = claim.map(|c| IdempotencyClaim {
            key: c.key,
            request_hash: c.request_hash,
            expires_at: now + Duration::hours(IDEMPOTENCY_TTL_HOURS),
        });
        let run = RunRecord {
            workspace_id: ws.clone(),
            id,
            workflow_id: workflow_id.clone(),
            workflow_version: stored.version,
            status: RunStatus::Pending,
            input: cmd.input,
            output: None,
            error: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            wake_at: Some(now),
            budget_usd: cmd.budget_usd.or(wf.budget_usd),
            revision: 1,
            lease: self.driver.initial_lease(now),
            state_bytes: 0,
            io_bytes: cmd.input_memory,
        };
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

    /// A run with every step in order (their outputs not read: see
    /// `with_outputs`).
    /// For a key limited to workflows: the run is "not found" unless it is
    /// of one of them (the same answer as for a run that does not exist).
    pub async fn run_in_scope(&self, who: &Principal, id: &RunId) -> Result<(), AppError> {
        if who.workflows.is_none() {
            return Ok(());
        }
        match self.stores.runs.get_run_head(&who.workspace_id, id).await? {
            Some(head) if who.may_see(&head.workflow_id) => Ok(()),
            _ => Err(AppError::NotFound(format!("run `{id}` not found"))),
        }
    }

    pub async fn get_run(&self, ws: &WorkspaceId, id: &RunId) -> Result<RunView, AppError> {
        let missing = || AppError::NotFound(format!("run `{id}` not found"));
        // Its input and output are read once there is room for them.
        let head = self
            .stores
            .runs
            .get_run_head(ws, id)
            .await?
            .ok_or_else(missing)?;
        let room = self.reads.take(head.io_bytes.saturating_mul(2)).await;
        let run = self
            .stores
            .runs
            .get_run(ws, id)
            .await?
            .ok_or_else(missing)?;
        let mut view = self.view(run).await?;
        view.rooms.extend(room.map(std::sync::Arc::new));
        Ok(view)
    }

    /// What the API shows of a run: its steps read without their outputs,
    /// so the read costs what the run has in steps, not in outputs. Only
    /// runs whose workflow calls models read the usage ledger.
    async fn view(&self, run: RunRecord) -> Result<RunView, AppError> {
        let wf = self.definition(&run).await?;
        let heads = self
            .stores
            .runs
            .get_step_heads(&run.workspace_id, &run.id)
            .await?;
        let usage = if wf.calls_models() {
            self.stores
                .usage
                .run_usage(&run.workspace_id, &run.id)
                .await?
        } else {
            Usage::default()
        };
        let recs: Records = heads.into_iter().map(|s| (s.key.clone(), s)).collect();
        let steps = ordered(&wf, recs, !run.status.is_terminal());
        Ok(RunView {
            run,
            steps,
            usage,
            rooms: Vec::new(),
        })
    }

    /// Reads the outputs of the view's steps in `range` that fit in
    /// `budget` bytes (as held in memory), in order; the rest stay out
    /// (`output_omitted`). The room they take in the process's read budget
    /// is held with the view.
    pub async fn with_outputs(
        &self,
        view: &mut RunView,
        range: std::ops::Range<usize>,
        mut budget: usize,
    ) -> Result<(), AppError> {
        let end = range.end.min(view.steps.len());
        let start = range.start.min(end);
        let mut wanted = Vec::new();
        for (i, s) in view.steps[start..end].iter().enumerate() {
            let size = usize::try_from(s.size).unwrap_or(usize::MAX);
            if s.status == StepStatus::Succeeded && size <= budget {
                budget -= size;
                wanted.push((start + i, s.key.clone()));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = wanted.iter().map(|(_, k)| k.clone()).collect();
        // Read, then copied into the answer: twice what they take.
        let held: u64 = wanted
            .iter()
            .map(|(i, _)| view.steps[*i].size)
            .fold(0, u64::saturating_add);
        let room = self.reads.take(held.saturating_mul(2)).await;
        let mut found: std::collections::HashMap<String, StepRecord> = self
            .stores
            .runs
            .get_steps_by_keys(&view.run.workspace_id, &view.run.id, &keys)
            .await?
            .into_iter()
            .map(|s| (s.key.clone(), s))
            .collect();
        for (i, key) in wanted {
            if let Some(full) = found.remove(&key) {
                view.steps[i].output = full.output;
            }
        }
        view.rooms.extend(room.map(std::sync::Arc::new));
        Ok(())
    }

    /// One step of a run, whole, with the room it takes in the process's
    /// read budget (found before it is read; hold it until the answer is
    /// built).
    pub async fn get_step(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
    ) -> Result<(StepRecord, Option<OwnedSemaphorePermit>), AppError> {
        if self.stores.runs.get_run_head(ws, id).await?.is_none() {
            return Err(AppError::NotFound(format!("run `{id}` not found")));
        }
        let missing = || AppError::NotFound(format!("run `{id}` has no step `{key}`"));
        let head = self
            .stores
            .runs
            .get_step_head(ws, id, key)
            .await?
            .ok_or_else(missing)?;
        // Read, then copied into the answer: twice what it takes.
        let room = self.reads.take(head.size.saturating_mul(2)).await;
        let step = self
            .stores
            .runs
            .get_step(ws, id, key)
            .await?
            .ok_or_else(missing)?;
        Ok((step, room))
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
        if self.stores.runs.get_run_head(ws, id).await?.is_none() {
            return Err(AppError::NotFound(format!("run `{id}` not found")));
        }
        Ok(self.stores.runs.list_logs(ws, id, page).await?)
    }

    /// Reads the run's row and one step (if `key` names one), lets `change`
    /// edit them, and writes back the row with the step, trying again if
    /// another writer got there first. Only what it changes is read, so it
    /// wins its turn against passes of a run however large.
    async fn change_run<F>(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: Option<&str>,
        change: F,
    ) -> Result<RunRecord, AppError>
    where
        F: Fn(
            &Workflow,
            &mut RunRecord,
            Option<&mut StepRecord>,
        ) -> Result<Vec<LogEntry>, AppError>,
    {
        let once = || async {
            let mut run = self
                .stores
                .runs
                .get_run(ws, id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("run `{id}` not found")))?;
            let wf = self.definition(&run).await?;
            let mut step = match key {
                Some(k) => self.stores.runs.get_step(ws, id, k).await?,
                None => None,
            };
            let logs = change(&wf, &mut run, step.as_mut())?;
            run.revision += 1;
            let write = RunWrite {
                run,
                steps: step.into_iter().collect(),
                logs,
            };
            match self.stores.runs.save_run(&write).await {
                Ok(()) => Ok(Tried::Done(write.run)),
                Err(StoreError::Conflict(_)) => Ok(Tried::Conflict),
                Err(e) => Err(AppError::from(e)),
            }
        };
        retry_conflicts(once)
            .await?
            .ok_or_else(|| AppError::Conflict(format!("run `{id}` is changing quickly; try again")))
    }

    /// Completes a step of `run` waiting for `event` (its `match` holding)
    /// with the event as its output.
    pub(super) async fn deliver_event(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
        event: &Value,
        received: DateTime<Utc>,
    ) -> Result<Delivery, AppError> {
        let outcome = std::sync::Mutex::new(Delivery::Resumed);
        let set = |d: Delivery| {
            if let Ok(mut o) = outcome.lock() {
                *o = d;
            }
            // Nothing is written for any outcome but `Resumed`.
            Err(AppError::Conflict(String::new()))
        };
        let name = event["name"].as_str().unwrap_or_default();
        let changed = self
            .change_run(ws, id, Some(key), |wf, run, rec| {
                let Some(crate::dsl::Step {
                    kind: StepKind::WaitForEvent(w),
                    retry,
                    ..
                }) = wf.step_by_key(key)
                else {
                    return set(Delivery::Gone);
                };
                if run.status.is_terminal() || w.event != name {
                    return set(Delivery::Gone);
                }
                // No record yet: the pass that puts it in wait is being
                // written (its waiter is written first).
                let Some(rec) = rec else {
                    return set(Delivery::NotYet);
                };
                match rec.status {
                    StepStatus::Waiting => {}
                    s if s.is_terminal() => return set(Delivery::Gone),
                    // Not waiting yet (its pass is being written).
                    _ => return set(Delivery::NotYet),
                }
                let now = Utc::now();
                if rec.wake_at.is_some_and(|t| t <= now) {
                    return set(Delivery::Gone);
                }
                // An event from before the step's window (a repeat of one
                // that came before it began waiting) is not its.
                if !crate::orchestrator::lookback::counts(w, rec, run, received) {
                    return set(Delivery::NoMatch);
                }
                // On the request's path: a small budget for each step.
                let matched = crate::orchestrator::tick::cpu(|| {
                    let _budget = crate::template::scope_sized(
                        crate::template::BUDGET_BYTES / 8,
                        std::time::Duration::from_millis(250),
                    );
                    crate::orchestrator::lookback::event_matches(w, event, run)
                });
                match matched {
                    Ok(true) => {}
                    Ok(false) => return set(Delivery::NoMatch),
                    Err(e) => return set(Delivery::Failed(e)),
                }
                dag::finish_attempt(rec, retry, Ok(event.clone()), now, &format!("{id}/{key}"));
                run.wake_at = Some(now);
                Ok(vec![LogEntry::new(
                    LogLevel::Info,
                    Some(key),
                    format!(
                        "event `{name}` ({}) arrived",
                        event["id"].as_str().unwrap_or_default()
                    ),
                )])
            })
            .await;
        let outcome = outcome
            .into_inner()
            .unwrap_or(Delivery::Failed("poisoned".into()));
        match (changed, outcome) {
            (Ok(_), _) => {
                self.poke(ws, id).await;
                Ok(Delivery::Resumed)
            }
            (Err(AppError::NotFound(_)), _) => Ok(Delivery::Gone),
            (
                Err(_),
                o @ (Delivery::Gone | Delivery::NotYet | Delivery::NoMatch | Delivery::Failed(_)),
            ) => Ok(o),
            (Err(e), Delivery::Resumed) => Err(e),
        }
    }

    fn poke(&self, ws: &WorkspaceId, id: &RunId) -> impl Future<Output = ()> + '_ {
        let (ws, id) = (ws.clone(), id.clone());
        async move {
            if let Err(e) = self.driver.poke(&ws, &id).await {
                tracing::warn!(workspace_id = %ws, run_id = %id, error = %e, "run changed but the orchestrator was not told");
            }
        }
    }

    pub async fn cancel_run(&self, ws: &WorkspaceId, id: &RunId) -> Result<RunView, AppError> {
        let now = Utc::now();
        let run = self
            .change_run(ws, id, None, |_, run, _| {
                if run.status.is_terminal() {
                    return Err(AppError::Conflict(format!(
                        "run `{}` already ended as {}; only active runs can be cancelled",
                        run.id,
                        run.status.as_str()
                    )));
                }
                run.status = RunStatus::Cancelled;
                run.finished_at = Some(now);
                run.wake_at = None;
                Ok(vec![LogEntry::new(
                    LogLevel::Warn,
                    None,
                    "run cancelled through the API",
                )])
            })
            .await?;
        self.driver.ended(ws, id);
        // No pass writes an ended run: its open steps are closed in a write
        // of their own, which races nothing.
        if let Err(e) = self.close_open_steps(&run, now).await {
            tracing::warn!(workspace_id = %ws, run_id = %id, error = %e, "run cancelled; closing its open steps failed");
        }
        self.poke(ws, id).await;
        self.get_run(ws, id).await
    }

    /// Marks the open steps of an ended run cancelled (read as heads; only
    /// the open ones read whole and written).
    async fn close_open_steps(
        &self,
        ended: &RunRecord,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let (ws, id) = (&ended.workspace_id, &ended.id);
        let once = || async {
            let Some(mut run) = self.stores.runs.get_run(ws, id).await? else {
                return Ok(Tried::Done(()));
            };
            let wf = self.definition(&run).await?;
            let heads = self.stores.runs.get_step_heads(ws, id).await?;
            let open: Vec<String> = heads
                .iter()
                .filter(|h| !h.status.is_terminal())
                .map(|h| h.key.clone())
                .collect();
            let mut recs: Records = self
                .stores
                .runs
                .get_steps_by_keys(ws, id, &open)
                .await?
                .into_iter()
                .map(|s| (s.key.clone(), s))
                .collect();
            // Steps never started have no record yet; the top-level ones
            // get one (as cancelled) so the view says so. (Records it adds
            // for steps that do have one, not read here, are left out.)
            let started: std::collections::HashSet<&str> =
                heads.iter().map(|h| h.key.as_str()).collect();
            let reason = "the run was cancelled";
            let steps: Vec<StepRecord> = dag::close_open_steps(&wf, &mut recs, now, reason)
                .iter()
                .filter(|k| open.contains(k) || !started.contains(k.as_str()))
                .filter_map(|k| recs.remove(k))
                .collect();
            if steps.is_empty() {
                return Ok(Tried::Done(()));
            }
            run.revision += 1;
            let write = RunWrite {
                run,
                steps,
                logs: Vec::new(),
            };
            match self.stores.runs.save_run(&write).await {
                Ok(()) => Ok(Tried::Done(())),
                Err(StoreError::Conflict(_)) => Ok(Tried::Conflict),
                Err(e) => Err(AppError::from(e)),
            }
        };
        retry_conflicts(once)
            .await?
            .ok_or_else(|| AppError::Conflict(format!("run `{id}` is changing quickly")))
    }

    /// Completes a waiting approval step with the given output.
    pub async fn complete_step(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
        output: Value,
    ) -> Result<RunView, AppError> {
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
        self.change_run(ws, id, Some(key), |wf, run, rec| {
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
            let status = rec.as_ref().map_or(StepStatus::Pending, |r| r.status);
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
            let now = Utc::now();
            let Some(rec) = rec else {
                return Err(AppError::Internal(format!("step `{key}` has no record")));
            };
            if let Some(deadline) = rec.wake_at
                && deadline <= now
            {
                return Err(AppError::Conflict(format!(
                    "the approval `{key}` timed out at {}",
                    deadline.to_rfc3339()
                )));
            }
            dag::finish_attempt(
                rec,
                &step.retry,
                Ok(output.clone()),
                now,
                &format!("{id}/{key}"),
            );
            run.wake_at = Some(now);
            Ok(vec![LogEntry::new(
                LogLevel::Info,
                Some(key),
                "completed through the API",
            )])
        })
        .await?;
        self.poke(ws, id).await;
        self.get_run(ws, id).await
    }
}
