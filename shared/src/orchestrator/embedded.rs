//! The in-process orchestrator: a thin loop around `engine::advance`.
//!
//! Each run is driven by at most one task at a time. A wake-up (run created,
//! approval completed, timer due) either starts that task or, if it is busy,
//! asks it to go round once more. Every step result is committed before the
//! run moves on, so after a crash `resume_all` picks every unfinished run up
//! from its stored state: steps that succeeded are never executed again and
//! timers keep their stored due times.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::fair::FairSlots;
use super::kept::{self, KeptRuns};
use super::recovery::Recovery;
use super::tick;
use crate::app::DefinitionCache;
use crate::domain::*;
use crate::engine::InFlight;
use crate::ports::{
    ActiveRunIndex, DriverError, EventLog, RunDriver, RunStore, StepCall, StepExecutor, StoreError,
    WorkflowStore,
};

/// Runs advanced at the same time.
const PARALLEL_RUNS: usize = 64;
/// Of which one workspace may hold at most this many (`fair`).
const RUNS_PER_WORKSPACE: usize = 32;
/// I/O attempts executed at the same time, across runs (each run has its
/// own cap in the core); the rest wait their turn.
const PARALLEL_ATTEMPTS: usize = 512;
/// Of which one workspace may hold at most this many.
const ATTEMPTS_PER_WORKSPACE: usize = 256;

/// What results waiting to be recorded may take in memory, in all.
const RESULTS_MEMORY: u64 = 1 << 30;
/// What runs being advanced at once may take in memory, in all (by their
/// state as of their last pass; a run may hold `MAX_RUN_STATE_BYTES`).
const PASS_MEMORY: u64 = 2 << 30;

use super::recovery::RunKey;
use crate::memory::{Budget, share_of_machine};

pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    runs: Arc<dyn RunStore>,
    workflows: Arc<dyn WorkflowStore>,
    events: Arc<dyn EventLog>,
    definitions: Arc<DefinitionCache>,
    /// Runs being driven; `true` means "go round again when done".
    active: Mutex<HashMap<RunKey, bool>>,
    /// The earliest timer already set for each run.
    timers: Mutex<HashMap<RunKey, DateTime<Utc>>>,
    run_slots: FairSlots,
    attempt_slots: Arc<FairSlots>,
    /// Executors of I/O steps, by step type.
    executors: HashMap<String, Arc<dyn StepExecutor>>,
    /// Attempts of I/O steps being executed now, or whose result waits in
    /// `results` for the run's next pass: (run, step key, attempt).
    in_flight: Mutex<HashSet<(RunKey, String, u32)>>,
    /// Results of attempts, by run, for the run's next pass to record: the
    /// pass is the run's one writer, so results never race it, and it
    /// records all that came in since the last one in one write.
    results: Mutex<HashMap<RunKey, Vec<tick::StepResult>>>,
    /// The step records of runs being driven, as of the revision the last
    /// pass wrote (`tick::RecordCache`): a pass with nothing written in
    /// between reads only the run row. Dropped once a run has nothing in
    /// flight and nothing left to do now, or finishes; bounded in all
    /// (`kept`).
    records: Mutex<KeptRuns>,
    /// For each run with attempts handed out, what stops them: a pass that
    /// finds the run ended (cancelled, failed) stops its attempts still
    /// queued or executing, so they neither call out nor hold slots.
    stops: Mutex<HashMap<RunKey, CancellationToken>>,
    /// What results not yet recorded may take in memory, in all: an
    /// attempt charges its response before reading and parsing it.
    results_memory: Arc<Budget>,
    /// What the runs being advanced may take in memory, in all.
    pass_memory: Arc<Budget>,
    finished: tokio::sync::broadcast::Sender<(RunKey, RunStatus)>,
    /// The start-up recovery journal, while runs resumed are taking their
    /// first pass.
    recovery: OnceLock<Arc<Recovery>>,
    me: Weak<Inner>,
}

impl Embedded {
    pub fn new(
        runs: Arc<dyn RunStore>,
        workflows: Arc<dyn WorkflowStore>,
        events: Arc<dyn EventLog>,
        definitions: Arc<DefinitionCache>,
        executors: HashMap<String, Arc<dyn StepExecutor>>,
    ) -> Self {
        let inner = Arc::new_cyclic(|me| Inner {
            runs,
            workflows,
            events,
            definitions,
            active: Mutex::new(HashMap::new()),
            timers: Mutex::new(HashMap::new()),
            run_slots: FairSlots::new(PARALLEL_RUNS, RUNS_PER_WORKSPACE),
            attempt_slots: Arc::new(FairSlots::new(PARALLEL_ATTEMPTS, ATTEMPTS_PER_WORKSPACE)),
            executors,
            in_flight: Mutex::new(HashSet::new()),
            results: Mutex::new(HashMap::new()),
            records: Mutex::new(KeptRuns::new(share_of_machine(kept::BUDGET_BYTES))),
            stops: Mutex::new(HashMap::new()),
            results_memory: Budget::new(share_of_machine(RESULTS_MEMORY)),
            pass_memory: Budget::new(share_of_machine(PASS_MEMORY)),
            finished: tokio::sync::broadcast::channel(4096).0,
            recovery: OnceLock::new(),
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

    /// Picks up every unfinished run after a restart, keeping the journal
    /// beside the database at `db` (see `recovery`): a run that stopped
    /// the process while it was advanced alone is failed instead, and runs
    /// that were advanced together when it stopped are resumed one at a
    /// time first. Returns how many runs were unfinished; the resuming goes
    /// on in the background.
    pub async fn recover(
        &self,
        index: &dyn ActiveRunIndex,
        db: &Path,
    ) -> Result<usize, StoreError> {
        let recovery = Arc::new(Recovery::beside(db));
        let prior = recovery.prior();
        let active: HashSet<RunKey> = index.active_runs().await?.into_iter().collect();
        let n = active.len();
        let _ = self.inner.recovery.set(recovery.clone());
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let culprit = prior.culprit.filter(|c| active.contains(c));
            if let Some(c) = &culprit {
                inner.fail_culprit(c).await;
            }
            let suspects: Vec<RunKey> = prior
                .suspects
                .into_iter()
                .filter(|k| active.contains(k) && Some(k) != culprit.as_ref())
                .collect();
            for (i, s) in suspects.iter().enumerate() {
                recovery.alone(s, &suspects[i + 1..]);
                inner.wake(s.clone());
                recovery.alone_passed().await;
            }
            let rest: Vec<RunKey> = active
                .into_iter()
                .filter(|k| Some(k) != culprit.as_ref() && !suspects.contains(k))
                .collect();
            recovery.together(&rest);
            for k in rest {
                inner.wake(k);
            }
        });
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

    fn ended(&self, ws: &WorkspaceId, run: &RunId) {
        self.inner.stop_attempts(&(ws.clone(), run.clone()));
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
            let wake_at = match self.run_slots.acquire(&key.0).await {
                Some(_slot) => self.contained_tick(&key).await,
                None => return,
            };
            if let Some(r) = self.recovery.get() {
                r.passed(&key);
            }
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
                    drop(active);
                    if !self.has_in_flight(&key) {
                        self.forget_records(&key);
                        self.forget_stop(&key);
                    }
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

    /// A pass in a task of its own: a bug that panics in it ends the run as
    /// failed (retrying would panic again) instead of leaving it hanging.
    async fn contained_tick(
        self: &Arc<Self>,
        key: &RunKey,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        let (me, k) = (self.clone(), key.clone());
        match tokio::spawn(async move { me.tick(&k).await }).await {
            Ok(r) => r,
            Err(e) if e.is_panic() => {
                tracing::error!("a pass of the run panicked; failing the run");
                self.forget_records(key);
                let error = StepError::permanent(
                    "internal_error",
                    "the engine failed on this run (a bug, logged by the server)",
                );
                // Until the run is failed, its attempts still executing
                // stay in flight (a later pass must not run them again).
                let failed = tick::fail(self.stores(), &key.0, &key.1, error).await?;
                if let Ok(mut f) = self.in_flight.lock() {
                    f.retain(|(r, _, _)| r != key);
                }
                if failed {
                    let _ = self.finished.send((key.clone(), RunStatus::Failed));
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Fails the run that stopped the process the last two times it was
    /// advanced, instead of resuming it into a third.
    async fn fail_culprit(&self, key: &RunKey) {
        tracing::error!(
            workspace_id = %key.0,
            run_id = %key.1,
            "the server stopped while advancing this run, also when it was resumed alone; failing it"
        );
        let error = StepError::permanent(
            "internal_error",
            "the server stopped while advancing this run, twice; it was not resumed again",
        );
        match tick::fail(self.stores(), &key.0, &key.1, error).await {
            Ok(true) => {
                let _ = self.finished.send((key.clone(), RunStatus::Failed));
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "failing the run failed"),
        }
    }

    fn stores(&self) -> tick::Stores<'_> {
        tick::Stores {
            runs: self.runs.as_ref(),
            workflows: self.workflows.as_ref(),
            definitions: &self.definitions,
            events: self.events.as_ref(),
        }
    }

    /// Advances the run once, commits it and starts its I/O steps. Returns
    /// when the run wants to be looked at again.
    async fn tick(&self, key: &RunKey) -> anyhow::Result<Option<DateTime<Utc>>> {
        let in_flight = |k: &str, a: u32| self.is_in_flight(key, k, a);
        // Claimed before the write, so no pass in between takes them for
        // attempts a dead process left behind.
        let claim = |d: &[tick::Dispatch], on: bool| {
            let attempts = d.iter().map(|d| (d.key.as_str(), d.attempt));
            self.set_in_flight(key, attempts, on)
        };
        let results = self.take_results(key);
        let cache = RunRecords { inner: self, key };
        let driving = tick::Driving {
            in_flight: InFlight::Known(&in_flight),
            max_dispatch: None,
            holder: None,
            claim: &claim,
            results: &results,
            inbox: false,
            cache: Some(&cache),
            memory: Some(&self.pass_memory),
        };
        let ticked = tick::tick(self.stores(), &key.0, &key.1, &driving).await;
        match &ticked {
            // Not written: the next pass records them.
            Err(_) => self.put_back_results(key, results),
            // Recorded, or dropped as stale: no longer in flight.
            Ok(_) => {
                let done = results.iter().map(|r| (r.key.as_str(), r.attempt));
                self.set_in_flight(key, done, false);
            }
        }
        let Some(t) = ticked? else {
            // Gone or ended (by a cancel, or a failure written elsewhere).
            self.forget_records(key);
            self.stop_attempts(key);
            return Ok(None);
        };
        if t.finished {
            self.forget_records(key);
            self.stop_attempts(key);
            let _ = self.finished.send((key.clone(), t.run.status));
        }
        for d in &t.dispatch {
            self.execute(key.clone(), t.call(d));
        }
        Ok(t.run.wake_at)
    }

    fn take_results(&self, run: &RunKey) -> Vec<tick::StepResult> {
        self.results
            .lock()
            .ok()
            .and_then(|mut r| r.remove(run))
            .unwrap_or_default()
    }

    fn put_back_results(&self, run: &RunKey, mut taken: Vec<tick::StepResult>) {
        if taken.is_empty() {
            return;
        }
        if let Ok(mut r) = self.results.lock() {
            let pending = r.entry(run.clone()).or_default();
            taken.append(pending);
            *pending = taken;
        }
    }

    fn has_in_flight(&self, run: &RunKey) -> bool {
        self.in_flight
            .lock()
            .map(|f| f.iter().any(|(r, _, _)| r == run))
            .unwrap_or(false)
    }

    fn forget_records(&self, run: &RunKey) {
        if let Ok(mut c) = self.records.lock() {
            c.forget(run);
        }
    }

    /// What stops the run's attempts (made on its first dispatch).
    fn stop_for(&self, run: &RunKey) -> CancellationToken {
        match self.stops.lock() {
            Ok(mut s) => s.entry(run.clone()).or_default().clone(),
            Err(_) => CancellationToken::new(),
        }
    }

    /// The run ended: its attempts queued or executing stop.
    fn stop_attempts(&self, run: &RunKey) {
        if let Some(t) = self.stops.lock().ok().and_then(|mut s| s.remove(run)) {
            t.cancel();
        }
    }

    fn forget_stop(&self, run: &RunKey) {
        if let Ok(mut s) = self.stops.lock() {
            s.remove(run);
        }
    }

    fn is_in_flight(&self, run: &RunKey, step: &str, attempt: u32) -> bool {
        self.in_flight
            .lock()
            .map(|f| f.contains(&(run.clone(), step.to_owned(), attempt)))
            .unwrap_or(false)
    }

    /// Marks attempts (step key, attempt number) as executing, or done.
    fn set_in_flight<'a>(
        &self,
        run: &RunKey,
        attempts: impl IntoIterator<Item = (&'a str, u32)>,
        on: bool,
    ) {
        if let Ok(mut f) = self.in_flight.lock() {
            for (key, attempt) in attempts {
                let entry = (run.clone(), key.to_owned(), attempt);
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
    fn execute(&self, run: RunKey, mut call: StepCall) {
        let Some(me) = self.me.upgrade() else { return };
        let hold = self.results_memory.hold();
        call.memory = hold.clone();
        let executor = self.executors.get(call.step_type()).cloned();
        let span = tracing::info_span!("step", workspace_id = %run.0, run_id = %run.1, step_id = %call.step_key);
        tokio::spawn(
            async move {
                // In a task of its own: an executor that panics fails the
                // attempt instead of leaving it in flight for ever.
                let attempt_call = call.clone();
                let slots = me.attempt_slots.clone();
                let ws = run.0.clone();
                let stop = me.stop_for(&run);
                let result = match tokio::spawn(async move {
                    // Biased: an attempt whose run ended while it waited for
                    // a slot gives the slot back even if one was handed to
                    // it in the same instant.
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => Err(StepError::permanent(
                            "run_ended",
                            "the run ended before the attempt finished",
                        )),
                        r = async {
                            let _turn = slots.acquire(&ws).await;
                            tick::attempt(executor.as_deref(), &attempt_call).await
                        } => r,
                    }
                })
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(StepError::permanent(
                        "internal_error",
                        "the step's executor failed (a bug, logged by the server)",
                    )),
                };
                // The run's next pass records it (and only then is the
                // attempt no longer in flight).
                if let Ok(mut r) = me.results.lock() {
                    r.entry(run.clone()).or_default().push(tick::StepResult {
                        key: call.step_key.clone(),
                        attempt: call.attempt,
                        result,
                        hold,
                    });
                }
                me.wake(run);
            }
            .instrument(span),
        );
    }
}

/// One run's entry in the orchestrator's record cache.
struct RunRecords<'a> {
    inner: &'a Inner,
    key: &'a RunKey,
}

impl tick::RecordCache for RunRecords<'_> {
    fn take(&self) -> Option<tick::Kept> {
        self.inner.records.lock().ok()?.take(self.key)
    }

    fn keep(&self, kept: tick::Kept) {
        if let Ok(mut c) = self.inner.records.lock() {
            c.keep(self.key, kept);
        }
    }
}
