//! One pass of a run driver, shared by the embedded orchestrator and the
//! Step Functions plan function: load the run, apply the DAG core, commit
//! (retrying when another writer won); and recording an I/O step's result.

use anyhow::Context as _;
use chrono::Utc;

use super::lease;
use crate::app::{DefinitionCache, DefinitionError};
use crate::dag::{Cursors, Records};
use crate::domain::*;
pub use crate::engine::Dispatch;
use crate::engine::{InFlight, Limits, RunInfo, advance_from, interrupt_orphans, record_external};
use crate::ports::{
    EventLog, PendingResult, RunStore, RunWrite, StepCall, StepExecutor, StoreError, Tried,
    WRITE_TRIES, WorkflowStore, retry_conflicts,
};

/// Where a driver reads and writes runs.
#[derive(Clone, Copy)]
pub struct Stores<'a> {
    pub runs: &'a dyn RunStore,
    pub workflows: &'a dyn WorkflowStore,
    pub definitions: &'a DefinitionCache,
    /// The events sent lately (what a step that begins waiting reads).
    pub events: &'a dyn EventLog,
}

/// Runs CPU-bound work (a pass of the core, with the run's templates) off
/// the runtime's async threads where it can, so requests and other runs'
/// I/O go on meanwhile.
pub(crate) fn cpu<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Most a waiter stays indexed for a step that waits without a timeout.
const WAIT_WITHOUT_TIMEOUT_DAYS: i64 = 400;

/// Indexes the steps a write puts in wait for an event under the event's
/// name, before the write that says so: a waiter of a write that then loses
/// is found not waiting when an event comes (and dropped); one written
/// after a write could be lost with the process, and the step would miss
/// its event.
async fn index_waiters(
    s: Stores<'_>,
    wf: &crate::dsl::Workflow,
    run: &RunRecord,
    steps: &[StepRecord],
) -> anyhow::Result<()> {
    for st in steps.iter().filter(|st| st.status == StepStatus::Waiting) {
        let Some(crate::dsl::Step {
            kind: crate::dsl::StepKind::WaitForEvent(w),
            ..
        }) = wf.step_by_key(&st.key)
        else {
            continue;
        };
        let waiter = crate::ports::Waiter {
            event: w.event.clone(),
            run_id: run.id.clone(),
            step_key: st.key.clone(),
            expires_at: st
                .wake_at
                .unwrap_or_else(|| Utc::now() + chrono::Duration::days(WAIT_WITHOUT_TIMEOUT_DAYS)),
        };
        s.runs
            .put_waiter(&run.workspace_id, &waiter)
            .await
            .context("indexing a step that waits for an event")?;
    }
    Ok(())
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
    /// Another driver holds the run: this one must stop (nothing written).
    pub superseded: bool,
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
            attempt: d.attempt,
            request: d.request.clone(),
            timeout: d.timeout,
            memory: Default::default(),
        }
    }
}

/// How a driver drives: how it knows which attempts are still in flight,
/// what it may hand out at once, and, where drivers can vanish, the lease
/// it holds the run by.
pub struct Driving<'a> {
    pub in_flight: InFlight<'a>,
    /// Most I/O attempts one pass hands out.
    pub max_dispatch: Option<usize>,
    /// The execution driving, where runs are held by leases (AWS).
    pub holder: Option<Holder<'a>>,
    /// Called with a pass's dispatches before its write is tried (`true`)
    /// and after the write lost (`false`).
    pub claim: &'a (dyn Fn(&[Dispatch], bool) + Sync),
    /// Results of attempts to record in this pass's write (stale ones, of a
    /// run that moved on, are dropped).
    pub results: &'a [StepResult],
    /// Also record the results left in the store for the run
    /// (`RunStore::put_result`: on AWS, step functions leave them there),
    /// read with the run, and clear them once this pass is written.
    pub inbox: bool,
    /// The driver's copy of the run's records, if it keeps one.
    pub cache: Option<&'a dyn RecordCache>,
    /// What the runs a process advances at once may take in memory (where
    /// one process advances many): a pass waits for room for its run's
    /// state (`RunRecord::state_bytes`) before it reads its steps.
    pub memory: Option<&'a crate::memory::Budget>,
}

/// The result of an I/O attempt, handed to the pass that records it (the
/// embedded driver executes attempts itself and is the run's one writer).
#[derive(Clone, Debug)]
pub struct StepResult {
    pub key: String,
    pub attempt: u32,
    pub result: Result<serde_json::Value, StepError>,
    /// The memory the result was charged, given back once it is recorded.
    pub hold: crate::memory::Hold,
}

/// A run's step records as of a revision, with where its maps' open
/// iterations begin (`dag::Cursors`), as a driver keeps them between passes.
pub struct Kept {
    pub revision: u64,
    pub records: Records,
    pub cursors: Cursors,
}

/// Where a driver keeps a run's records between its passes, so a pass reads
/// only the run row when nothing else wrote since (every write moves the
/// run's revision on) and plans its maps from where the last pass left.
pub trait RecordCache: Sync {
    /// What is kept (taken out: the pass owns it).
    fn take(&self) -> Option<Kept>;
    fn keep(&self, kept: Kept);
}

/// The execution holding a run's lease (see `lease`).
pub struct Holder<'a> {
    pub owner: &'a str,
    /// Count the history events this pass uses (Standard executions).
    pub counts_events: bool,
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
        return Err(no_executor(call.step_type()));
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

/// A run and its steps as a pass holds them, with the room it was given
/// in the driver's memory budget.
struct Loaded {
    run: RunRecord,
    recs: Records,
    /// Results left in the store for this pass (`Driving::inbox`).
    inbox: Vec<PendingResult>,
    cursors: Cursors,
    _room: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The run and its steps for a pass: the steps from the driver's cache when
/// it holds them at the stored revision, else from the store (after room
/// for them is found in the driver's budget, if it has one).
async fn load_for_pass(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    driving: &Driving<'_>,
) -> anyhow::Result<Option<Loaded>> {
    let kept = driving.cache.and_then(|c| c.take());
    if kept.is_none() && driving.memory.is_none() {
        if driving.inbox {
            let Some((run, steps, inbox)) = s
                .runs
                .load_run_with_results(ws, id)
                .await
                .context("reading the run")?
            else {
                return Ok(None);
            };
            if run.status.is_terminal() {
                return Ok(None);
            }
            return Ok(Some(Loaded {
                run,
                recs: steps.into_iter().map(|s| (s.key.clone(), s)).collect(),
                inbox,
                cursors: Cursors::default(),
                _room: None,
            }));
        }
        return Ok(load_active(s, ws, id).await?.map(|(run, recs)| Loaded {
            run,
            recs,
            inbox: Vec::new(),
            cursors: Cursors::default(),
            _room: None,
        }));
    }
    let Some(run) = s.runs.get_run(ws, id).await.context("reading the run")? else {
        return Ok(None);
    };
    if run.status.is_terminal() {
        return Ok(None);
    }
    // The run's state, and the results this pass records: each is
    // copied into the run's records and again into the write.
    let room = match driving.memory {
        Some(m) => {
            let recorded: u64 = driving
                .results
                .iter()
                .filter_map(|r| r.result.as_ref().ok())
                .map(crate::memory::mem_size)
                .fold(0, u64::saturating_add);
            let held = run.state_bytes.saturating_add(run.io_bytes);
            m.take(held.saturating_add(recorded.saturating_mul(2)))
                .await
        }
        None => None,
    };
    let inbox = match driving.inbox {
        true => s
            .runs
            .pending_results(ws, id)
            .await
            .context("reading the run's results")?,
        false => Vec::new(),
    };
    if let Some(kept) = kept.filter(|k| k.revision == run.revision) {
        return Ok(Some(Loaded {
            run,
            recs: kept.records,
            inbox,
            cursors: kept.cursors,
            _room: room,
        }));
    }
    // Written since: its steps as stored now (a write between these two
    // reads moves the revision on, and the pass's write then conflicts).
    let steps = s.runs.get_steps(ws, id).await.context("reading the run")?;
    let recs = steps.into_iter().map(|s| (s.key.clone(), s)).collect();
    Ok(Some(Loaded {
        run,
        recs,
        inbox,
        cursors: Cursors::default(),
        _room: room,
    }))
}

/// Advances the run once and commits it (read again and tried again while
/// other writers win). Returns None if the run is gone or already finished.
pub async fn tick(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    driving: &Driving<'_>,
) -> anyhow::Result<Option<Ticked>> {
    retry_conflicts(|| pass(s, ws, id, driving))
        .await?
        .ok_or_else(|| anyhow::anyhow!("other writers kept changing the run ({WRITE_TRIES} tries)"))
}

/// One try of `tick`.
async fn pass(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    driving: &Driving<'_>,
) -> anyhow::Result<Tried<Option<Ticked>>> {
    let Some(Loaded {
        mut run,
        mut recs,
        mut inbox,
        mut cursors,
        _room,
    }) = load_for_pass(s, ws, id, driving).await?
    else {
        return Ok(Tried::Done(None));
    };
    let now = Utc::now();
    if let (Some(h), Some(l)) = (&driving.holder, &run.lease)
        && lease::held_elsewhere(l, h.owner, now)
    {
        return Ok(Tried::Done(Some(Ticked {
            run,
            dispatch: Vec::new(),
            finished: false,
            awaits_event: false,
            superseded: true,
        })));
    }
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
    // Results read from the store that this pass recorded or found stale
    // (cleared once it is written), and whether some were left for later.
    let mut cleared: Vec<&PendingResult> = Vec::new();
    let mut deferred = false;
    let max_steps = s.runs.write_limits().max_steps;
    let mut awaits_event = false;
    let mut progressed = wf.is_none() || !logs.is_empty();
    if let Some(wf) = &wf {
        let mut recorded = Vec::new();
        let mut record = |recs: &mut Records,
                          key: &String,
                          attempt: u32,
                          result: &Result<serde_json::Value, StepError>,
                          at: chrono::DateTime<Utc>| {
            let line = record_external(wf, recs, id.as_str(), key, attempt, result.clone(), at);
            if let Some(line) = &line {
                tracing::info!(step_id = %key, "{}", line.message);
                logs.push(line.clone());
                recorded.push(key.clone());
            }
            line.is_some()
        };
        // The driver's own results end now.
        for r in driving.results {
            record(&mut recs, &r.key, r.attempt, &r.result, now);
        }
        // Those left in the store, oldest first, as of when their attempt
        // ended: at most a write's changed steps (the rest wait for the next
        // pass, at once: oldest first, none waits behind newer ones until
        // its attempt counts as lost), so that one write holds them. A
        // stale one is cleared; one of an attempt later than the records
        // read (another driver started it since) stays.
        inbox.sort_by(|a, b| {
            (a.finished_at, &a.key, a.attempt).cmp(&(b.finished_at, &b.key, b.attempt))
        });
        let most = max_steps.unwrap_or(usize::MAX).max(1);
        let mut taken = 0;
        let mut examined = 0;
        for r in &inbox {
            if taken == most {
                deferred = true;
                break;
            }
            examined += 1;
            let at = r.finished_at.min(now);
            if record(&mut recs, &r.key, r.attempt, &r.result, at) {
                taken += 1;
                cleared.push(r);
            }
        }
        // Stale as of the records now (an earlier attempt's result may have
        // been recorded after a later one was looked at): any but one of
        // the running attempt or of one not started as far as these
        // records know.
        let stale = |r: &PendingResult| {
            let n = r.attempt as usize;
            recs.get(&r.key).is_none_or(|rec| {
                let open = rec.attempts.len() < n
                    || (rec.attempts.len() == n && rec.status == StepStatus::Running);
                rec.status.is_terminal() || !open
            })
        };
        for r in &inbox[..examined] {
            if !cleared.iter().any(|c| std::ptr::eq(*c, r)) && stale(r) {
                cleared.push(r);
            }
        }
        let orphans = interrupt_orphans(
            wf,
            &mut recs,
            id.as_str(),
            now,
            &driving.in_flight,
            &mut logs,
        );
        let info = RunInfo {
            run_id: id.as_str(),
            workflow_id: run.workflow_id.as_str(),
            version: run.workflow_version,
            input: &run.input,
        };
        let limits = Limits {
            max_changes: max_steps.map(|m| {
                m.saturating_sub(recorded.len() + orphans.changed.len())
                    .max(1)
            }),
            max_dispatch: driving.max_dispatch,
        };
        let adv = cpu(|| advance_from(wf, info, &mut recs, now, limits, &mut cursors));
        let before = (run.status, run.wake_at);
        run.status = adv.status;
        // An attempt still in flight is looked at again at its deadline.
        run.wake_at = match (adv.wake_at, orphans.next_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if deferred && !adv.status.is_terminal() {
            run.wake_at = Some(now);
        }
        if adv.status.is_terminal() {
            run.finished_at = Some(now);
            if let Some(o) = &adv.output {
                run.io_bytes = run.io_bytes.saturating_add(crate::memory::mem_size(o));
            }
            run.output = adv.output.clone();
            run.error = adv.error.clone();
        }
        // Each changed step once (a store writes an item once per write).
        let mut keys: std::collections::BTreeSet<String> = orphans.changed.into_iter().collect();
        keys.extend(recorded);
        keys.extend(adv.changed);
        progressed |= !keys.is_empty()
            || !logs.is_empty()
            || !adv.logs.is_empty()
            || before != (run.status, run.wake_at);
        changed = keys.iter().filter_map(|k| recs.get(k).cloned()).collect();
        run.state_bytes = adv.state_bytes;
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
    let mut lease_changed = false;
    if let Some(h) = &driving.holder {
        if run.status.is_terminal() {
            lease_changed = run.lease.take().is_some();
        } else {
            let l = run.lease.get_or_insert_with(|| lease::initial(now));
            let longest = dispatch.iter().map(|d| d.timeout).max();
            lease_changed = lease::take(l, h.owner, lease::due(now, longest, run.wake_at));
            if progressed && l.sweeps > 0 {
                l.sweeps = 0;
                lease_changed = true;
            }
            if h.counts_events {
                l.events = l
                    .events
                    .saturating_add(lease::events_for_pass(dispatch.len()));
            }
        }
    }
    if !progressed && !lease_changed {
        clear_inbox(s, &run, &cleared).await;
        if let Some(c) = driving.cache {
            c.keep(Kept {
                revision: run.revision,
                records: recs,
                cursors,
            });
        }
        return Ok(Tried::Done(Some(Ticked {
            run,
            dispatch: Vec::new(),
            finished: false,
            awaits_event,
            superseded: false,
        })));
    }
    // Steps that begin waiting for an event: indexed, then given one that
    // already came (`lookback`).
    if let Some(wf) = &wf {
        index_waiters(s, wf, &run, &changed).await?;
        if super::lookback::look_back(s, wf, &run, &mut recs, &mut changed, &mut logs, now).await? {
            // The step is done: the run goes on at once.
            awaits_event = false;
            run.wake_at = Some(now);
        }
    }
    run.revision += 1;
    let finished = run.status.is_terminal();
    let write = RunWrite {
        run,
        steps: changed,
        logs,
    };
    (driving.claim)(&dispatch, true);
    match s.runs.save_run(&write).await {
        Ok(()) => {
            clear_inbox(s, &write.run, &cleared).await;
            if let Some(c) = driving.cache.filter(|_| !finished) {
                c.keep(Kept {
                    revision: write.run.revision,
                    records: recs,
                    cursors,
                });
            }
            if finished {
                let r = &write.run;
                let ms = r
                    .started_at
                    .zip(r.finished_at)
                    .map(|(a, b)| (b - a).num_milliseconds());
                tracing::info!(status = r.status.as_str(), duration_ms = ms, "run finished");
            }
            Ok(Tried::Done(Some(Ticked {
                run: write.run,
                dispatch,
                finished,
                awaits_event,
                superseded: false,
            })))
        }
        // Someone else (a cancel, an approval, a step result) wrote
        // first: read again.
        Err(StoreError::Conflict(_)) => {
            (driving.claim)(&dispatch, false);
            Ok(Tried::Conflict)
        }
        Err(e) => {
            (driving.claim)(&dispatch, false);
            Err(e).context("saving the run")
        }
    }
}

/// Removes the results a pass read from the store once it has recorded
/// them (or found them stale). A failure only leaves them for the next pass,
/// which finds them stale.
async fn clear_inbox(s: Stores<'_>, run: &RunRecord, inbox: &[&PendingResult]) {
    if inbox.is_empty() {
        return;
    }
    let read: Vec<(String, u32)> = inbox.iter().map(|r| (r.key.clone(), r.attempt)).collect();
    if let Err(e) = s
        .runs
        .clear_results(&run.workspace_id, &run.id, &read)
        .await
    {
        tracing::warn!(error = %e, "clearing recorded step results");
    }
}

/// Changes the run's lease with `f` (which says whether it changed
/// anything) and writes it; retried when another writer wins. Returns the
/// run as written, or None if it is gone, finished, or `f` changed nothing.
pub async fn update_lease(
    runs: &dyn RunStore,
    ws: &WorkspaceId,
    id: &RunId,
    f: impl Fn(&mut RunRecord) -> bool,
) -> anyhow::Result<Option<RunRecord>> {
    let once = || async {
        let Some(mut run) = runs.get_run(ws, id).await.context("reading the run")? else {
            return Ok(Tried::Done(None));
        };
        if run.status.is_terminal() || !f(&mut run) {
            return Ok(Tried::Done(None));
        }
        run.revision += 1;
        let write = RunWrite {
            run,
            steps: Vec::new(),
            logs: Vec::new(),
        };
        match runs.save_run(&write).await {
            Ok(()) => Ok(Tried::Done(Some(write.run))),
            Err(StoreError::Conflict(_)) => Ok(Tried::Conflict),
            Err(e) => Err(e).context("saving the run's lease"),
        }
    };
    retry_conflicts(once)
        .await?
        .ok_or_else(|| gave_up("its lease"))
}

/// The error of a read-change-write that lost to other writers every time.
fn gave_up(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "other writers kept changing the run while writing {what} ({WRITE_TRIES} tries)"
    )
}

/// The call a step function makes for one dispatched attempt, rebuilt from
/// the store (execution state carries only the reference). None when the
/// attempt is no longer the step's running one (the run moved on).
pub async fn prepare_call(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    key: &str,
    attempt: u32,
) -> anyhow::Result<Option<StepCall>> {
    // The run with this step's record, then the records its context reads
    // (not the whole run: a step of a 10,000-item map reads a few).
    // An attempt whose result already waits for the pass (this function
    // invoked again after it had left it) is not run again.
    let own = [key.to_owned()];
    let (loaded, done) = tokio::join!(
        s.runs.load_run_at(ws, id, &own),
        s.runs.has_result(ws, id, key, attempt)
    );
    let Some((run, steps)) = loaded.context("reading the run")? else {
        return Ok(None);
    };
    let running = steps.first().is_some_and(|r| {
        r.key == key && r.status == StepStatus::Running && r.attempts.len() == attempt as usize
    });
    if run.status.is_terminal() || !running || done.context("reading the run's results")? {
        return Ok(None);
    }
    let wf = s
        .definitions
        .for_run(s.workflows, &run)
        .await
        .context("loading the workflow")?;
    let Some(step) = wf.step_by_key(key) else {
        return Ok(None);
    };
    let read = crate::engine::records_read(&wf, key).unwrap_or_default();
    let recs: Records = match read.is_empty() {
        true => Records::new(),
        false => s
            .runs
            .get_steps_by_keys(ws, id, &read)
            .await
            .context("reading the run's steps")?
            .into_iter()
            .map(|r| (r.key.clone(), r))
            .collect(),
    };
    let info = RunInfo {
        run_id: id.as_str(),
        workflow_id: run.workflow_id.as_str(),
        version: run.workflow_version,
        input: &run.input,
    };
    let ctx = crate::engine::context_for(&wf, info, &recs, key);
    let request = match crate::engine::steps::io_request(step, &ctx) {
        Some(Ok(r)) => r,
        // The same templates rendered when the attempt was handed out; a
        // failure now is recorded as the attempt's.
        Some(Err(e)) => {
            record(s, ws, id, key, attempt, Err(e)).await?;
            return Ok(None);
        }
        None => return Ok(None),
    };
    Ok(Some(StepCall {
        workspace_id: ws.clone(),
        run_id: id.clone(),
        workflow_id: run.workflow_id.clone(),
        budget_usd: run.budget_usd,
        step_key: key.to_owned(),
        attempt,
        request,
        timeout: step.timeout.unwrap_or(crate::engine::DEFAULT_STEP_TIMEOUT),
        memory: Default::default(),
    }))
}

/// Records the result of attempt `attempt` of step `key` where the executor
/// is not the run's driver: leaves it in the store for the run's next pass
/// (`Driving::inbox`), writing nothing else of the run, so attempts that end
/// together never contend for it. A stale result (the run moved on) is
/// dropped by that pass.
pub async fn record(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    key: &str,
    attempt: u32,
    result: Result<serde_json::Value, StepError>,
) -> anyhow::Result<()> {
    // Left as the pass would record it: an output that would not read back
    // (a hostile server's deeply nested reply) must not jam the inbox.
    let (result, _) = crate::dag::checked_result(result);
    let r = PendingResult {
        key: key.to_owned(),
        attempt,
        result,
        finished_at: Utc::now(),
    };
    s.runs
        .put_result(ws, id, &r)
        .await
        .context("saving the step result")
}

/// Ends the run as failed with `error`, closing its open steps (for a run
/// no pass can handle). False if it was gone or had already ended.
pub async fn fail(
    s: Stores<'_>,
    ws: &WorkspaceId,
    id: &RunId,
    error: StepError,
) -> anyhow::Result<bool> {
    let once = || async {
        let Some((mut run, mut recs)) = load_active(s, ws, id).await? else {
            return Ok(Tried::Done(false));
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
        let write = RunWrite {
            run,
            steps,
            logs: vec![line],
        };
        match s.runs.save_run(&write).await {
            Ok(()) => Ok(Tried::Done(true)),
            Err(StoreError::Conflict(_)) => Ok(Tried::Conflict),
            Err(e) => Err(anyhow::Error::from(e).context("saving the failed run")),
        }
    };
    retry_conflicts(once)
        .await?
        .ok_or_else(|| gave_up("its failure"))
}
