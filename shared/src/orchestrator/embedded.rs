//! The in-process orchestrator: a thin loop around `engine::advance`.
//!
//! Each run is driven by at most one task at a time. A wake-up (run created,
//! approval completed, timer due) either starts that task or, if it is busy,
//! asks it to go round once more. Every step result is committed before the
//! run moves on, so after a crash `resume_all` picks every unfinished run up
//! from its stored state: steps that succeeded are never executed again and
//! timers keep their stored due times.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::app::DefinitionCache;
use crate::dag::Records;
use crate::domain::*;
use crate::engine::{Dispatch, RunInfo, advance, interrupt_orphans, record_external};
use crate::ports::{
    ActiveRunIndex, DriverError, RunDriver, RunStore, RunWrite, StepCall, StepExecutor, StoreError,
    WorkflowStore,
};

/// Runs advanced at the same time.
const PARALLEL_RUNS: usize = 64;

type RunKey = (WorkspaceId, RunId);

pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    runs: Arc<dyn RunStore>,
    workflows: Arc<dyn WorkflowStore>,
    definitions: Arc<DefinitionCache>,
    /// Runs being driven; `true` means "go round again when done".
    active: Mutex<HashMap<RunKey, bool>>,
    /// The earliest timer already set for each run.
    timers: Mutex<HashMap<RunKey, DateTime<Utc>>>,
    permits: Semaphore,
    /// Executors of I/O steps, by step type.
    executors: HashMap<String, Arc<dyn StepExecutor>>,
    /// Attempts of I/O steps being executed now: (run, step key, attempt).
    in_flight: Mutex<HashSet<(RunKey, String, u32)>>,
    finished: tokio::sync::broadcast::Sender<(RunKey, RunStatus)>,
    me: Weak<Inner>,
}

impl Embedded {
    pub fn new(
        runs: Arc<dyn RunStore>,
        workflows: Arc<dyn WorkflowStore>,
        definitions: Arc<DefinitionCache>,
        executors: HashMap<String, Arc<dyn StepExecutor>>,
    ) -> Self {
        let inner = Arc::new_cyclic(|me| Inner {
            runs,
            workflows,
            definitions,
            active: Mutex::new(HashMap::new()),
            timers: Mutex::new(HashMap::new()),
            permits: Semaphore::new(PARALLEL_RUNS),
            executors,
            in_flight: Mutex::new(HashSet::new()),
            finished: tokio::sync::broadcast::channel(4096).0,
            me: me.clone(),
        });
        Self { inner }
    }

    /// Picks up every unfinished run, as after a restart.
    pub async fn resume_all(&self, index: &dyn ActiveRunIndex) -> Result<usize, StoreError> {
        let runs = index.active_runs().await?;
        let n = runs.len();
        for (ws, run) in runs {
            self.inner.wake((ws, run));
        }
        Ok(n)
    }

    /// Announces each run this orchestrator finishes (completed or failed).
    pub fn subscribe_finished(
        &self,
    ) -> tokio::sync::broadcast::Receiver<((WorkspaceId, RunId), RunStatus)> {
        self.inner.finished.subscribe()
    }
}

#[async_trait]
impl RunDriver for Embedded {
    async fn start(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError> {
        self.inner.wake((ws.clone(), run.clone()));
        Ok(())
    }

    async fn poke(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError> {
        self.inner.wake((ws.clone(), run.clone()));
        Ok(())
    }
}

impl Inner {
    fn wake(&self, key: RunKey) {
        let Ok(mut active) = self.active.lock() else {
            return;
        };
        if let Some(again) = active.get_mut(&key) {
            *again = true;
            return;
        }
        active.insert(key.clone(), false);
        drop(active);
        let Some(me) = self.me.upgrade() else { return };
        let span = tracing::info_span!("run", workspace_id = %key.0, run_id = %key.1);
        tokio::spawn(async move { me.drive(key).await }.instrument(span));
    }

    async fn drive(self: Arc<Self>, key: RunKey) {
        loop {
            let wake_at = match self.permits.acquire().await {
                Ok(_permit) => self.tick(&key).await,
                Err(_) => return,
            };
            match wake_at {
                Ok(Some(at)) => self.set_timer(&key, at),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "advancing the run failed; retrying in 5s");
                    self.set_timer(&key, Utc::now() + chrono::Duration::seconds(5));
                }
            }
            let Ok(mut active) = self.active.lock() else {
                return;
            };
            match active.get_mut(&key) {
                Some(again) if *again => *again = false,
                _ => {
                    active.remove(&key);
                    return;
                }
            }
        }
    }

    fn set_timer(&self, key: &RunKey, at: DateTime<Utc>) {
        let now = Utc::now();
        if at <= now {
            if let Ok(mut active) = self.active.lock()
                && let Some(again) = active.get_mut(key)
            {
                *again = true;
            }
            return;
        }
        if let Ok(mut timers) = self.timers.lock() {
            match timers.get(key) {
                Some(existing) if *existing <= at => return,
                _ => timers.insert(key.clone(), at),
            };
        }
        let Some(me) = self.me.upgrade() else { return };
        let key = key.clone();
        let wait = (at - now).to_std().unwrap_or_default();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Ok(mut timers) = me.timers.lock()
                && timers.get(&key) == Some(&at)
            {
                timers.remove(&key);
            }
            me.wake(key);
        });
    }

    /// Loads the run, advances it and commits the result. Returns when the
    /// run wants to be looked at again.
    async fn tick(&self, key: &RunKey) -> anyhow::Result<Option<DateTime<Utc>>> {
        let id = &key.1;
        use anyhow::Context as _;
        loop {
            let Some((mut run, mut recs)) = self.load_active(key).await? else {
                return Ok(None);
            };
            let now = Utc::now();
            let mut logs = Vec::new();
            let wf = match self.definition(&run).await {
                Ok(wf) => Some(wf),
                Err(crate::app::DefinitionError::Store(e)) => {
                    return Err(e).context("loading the workflow");
                }
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
            if let Some(wf) = &wf {
                let mut keys = interrupt_orphans(
                    wf,
                    &mut recs,
                    id.as_str(),
                    now,
                    |k, a| self.is_in_flight(key, k, a),
                    &mut logs,
                );
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
                    return Ok(run.wake_at);
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
            }
            run.revision += 1;
            let terminal = run.status.is_terminal();
            let write = RunWrite {
                run,
                steps: changed,
                logs,
            };
            // Claimed before the write, so no tick in between takes them for
            // attempts a dead process left behind.
            self.set_in_flight(key, &dispatch, true);
            match self.runs.save_run(&write).await {
                Ok(()) => {
                    if terminal {
                        let r = &write.run;
                        let ms = r
                            .started_at
                            .zip(r.finished_at)
                            .map(|(a, b)| (b - a).num_milliseconds());
                        tracing::info!(
                            status = r.status.as_str(),
                            duration_ms = ms,
                            "run finished"
                        );
                        let _ = self.finished.send((key.clone(), r.status));
                    }
                    for d in dispatch {
                        self.execute(key.clone(), &write.run, d);
                    }
                    return Ok(write.run.wake_at);
                }
                // Someone else (a cancel, an approval, a step result) wrote
                // first: read again.
                Err(StoreError::Conflict(_)) => {
                    self.set_in_flight(key, &dispatch, false);
                    continue;
                }
                Err(e) => {
                    self.set_in_flight(key, &dispatch, false);
                    return Err(e).context("saving the run");
                }
            }
        }
    }

    async fn definition(
        &self,
        run: &RunRecord,
    ) -> Result<Arc<crate::dsl::Workflow>, crate::app::DefinitionError> {
        self.definitions.for_run(self.workflows.as_ref(), run).await
    }

    /// The run and its steps, unless it is gone or already finished.
    async fn load_active(&self, (ws, id): &RunKey) -> anyhow::Result<Option<(RunRecord, Records)>> {
        use anyhow::Context as _;
        let Some((run, steps)) = self
            .runs
            .load_run(ws, id)
            .await
            .context("reading the run")?
        else {
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

    fn is_in_flight(&self, run: &RunKey, step: &str, attempt: u32) -> bool {
        self.in_flight
            .lock()
            .map(|f| f.contains(&(run.clone(), step.to_owned(), attempt)))
            .unwrap_or(false)
    }

    fn set_in_flight(&self, run: &RunKey, dispatch: &[Dispatch], on: bool) {
        if dispatch.is_empty() {
            return;
        }
        if let Ok(mut f) = self.in_flight.lock() {
            for d in dispatch {
                let entry = (run.clone(), d.key.clone(), d.attempt);
                if on {
                    f.insert(entry);
                } else {
                    f.remove(&entry);
                }
            }
        }
    }

    /// Runs one attempt of an I/O step on its executor, records the result
    /// and wakes the run.
    fn execute(&self, run: RunKey, rec: &RunRecord, d: Dispatch) {
        let Some(me) = self.me.upgrade() else { return };
        let (workflow_id, budget_usd) = (rec.workflow_id.clone(), rec.budget_usd);
        let executor = self.executors.get(&d.step_type).cloned();
        let span =
            tracing::info_span!("step", workspace_id = %run.0, run_id = %run.1, step_id = %d.key);
        tokio::spawn(
            async move {
                let call = StepCall {
                    workspace_id: run.0.clone(),
                    run_id: run.1.clone(),
                    workflow_id,
                    budget_usd,
                    step_key: d.key.clone(),
                    step_type: d.step_type.clone(),
                    attempt: d.attempt,
                    request: d.request.clone(),
                    timeout: d.timeout,
                };
                let result = match executor {
                    None => Err(StepError::permanent(
                        "no_executor",
                        format!("this server cannot run `{}` steps", d.step_type),
                    )),
                    Some(e) => match tokio::time::timeout(d.timeout, e.execute(&call)).await {
                        Ok(r) => r,
                        Err(_) => Err(StepError::transient(
                            "timeout",
                            format!("the attempt took longer than its timeout of {}", humantime::format_duration(d.timeout)),
                        )),
                    },
                };
                if let Err(e) = me.record(&run, &d, result).await {
                    tracing::error!(error = %e, "recording a step result failed; the attempt will be retried");
                }
                me.set_in_flight(&run, std::slice::from_ref(&d), false);
                me.wake(run);
            }
            .instrument(span),
        );
    }

    async fn record(
        &self,
        run_key: &RunKey,
        d: &Dispatch,
        result: Result<serde_json::Value, StepError>,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let id = &run_key.1;
        loop {
            let Some((mut run, mut recs)) = self.load_active(run_key).await? else {
                return Ok(());
            };
            let wf = self
                .definition(&run)
                .await
                .context("loading the workflow")?;
            let now = Utc::now();
            let Some(line) = record_external(
                &wf,
                &mut recs,
                id.as_str(),
                &d.key,
                d.attempt,
                result.clone(),
                now,
            ) else {
                return Ok(());
            };
            tracing::info!(step_id = %d.key, "{}", line.message);
            run.revision += 1;
            run.wake_at = Some(now);
            let steps = recs.get(&d.key).cloned().into_iter().collect();
            match self
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
}
