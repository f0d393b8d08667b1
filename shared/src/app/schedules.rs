//! Schedules: kept per workflow (`/v1/workflows/{id}/schedules`), fired by
//! the tick (`fire_schedules`: in-process in `weft dev`, the tick function
//! every minute on AWS). Each fire time starts its run exactly once: the
//! run is claimed under the schedule and the fire time, so a repeated or
//! concurrent tick, or one after a crash half-way, starts nothing twice.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::runs::Claim;
use super::{App, AppError, StartRun};
use crate::domain::{CatchUp, Overlap, RunId, Schedule, ScheduleId, WorkflowId, WorkspaceId};
use crate::dsl::{Path, ValidationError};
use crate::ports::StoreError;
use crate::schedules::{Timing, plan};

/// Most schedules a workflow may have.
pub const MAX_SCHEDULES_PER_WORKFLOW: usize = 20;
/// Most schedules a workspace may have (each is tick work every time it
/// fires, shared by every tenant).
pub const MAX_SCHEDULES_PER_WORKSPACE: usize = 200;
/// Most due schedules one tick reads at a time (each with its input:
/// `MAX_SCHEDULE_INPUT_BYTES` bounds what a batch holds).
const DUE_BATCH: usize = 20;
/// Largest input a schedule keeps (its runs' input), as JSON.
pub const MAX_SCHEDULE_INPUT_BYTES: usize = 64 * 1024;
/// How long a schedule whose firing failed waits before it is tried again.
const RETRY_AFTER_SECS: i64 = 300;
/// Most batches one tick handles (the next tick takes the rest).
const MAX_BATCHES: usize = 50;

/// The fields of a schedule a request sets (all optional in a change;
/// `spec` required to create one).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScheduleFields {
    pub spec: Option<String>,
    pub timezone: Option<String>,
    pub input: Option<Value>,
    pub paused: Option<bool>,
    pub catch_up: Option<CatchUp>,
    pub overlap: Option<Overlap>,
}

/// What one tick did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FireReport {
    pub due: usize,
    pub started: usize,
    pub errors: usize,
}

fn timing_error(e: String) -> ValidationError {
    let field = if e.contains("time zone") {
        "timezone"
    } else {
        "spec"
    };
    ValidationError::new(&Path::root().key(field), e)
}

/// A schedule's timing, read off the async threads (a sparse pattern
/// takes croner milliseconds to check).
fn timing_of(s: &Schedule) -> Result<Timing, AppError> {
    crate::orchestrator::tick::cpu(|| Timing::parse(&s.spec, &s.timezone, s.created_at))
        .map_err(|e| AppError::InvalidRequest(vec![timing_error(e)]))
}

/// Sets the next fire time from `now` (none while paused).
fn reschedule(s: &mut Schedule, timing: &Timing, now: DateTime<Utc>) {
    s.next_fire_at = (!s.paused).then(|| timing.next_after(now)).flatten();
    s.buffered_fire_at = s.buffered_fire_at.filter(|_| !s.paused);
    s.due_at = s.next_fire_at;
}

impl App {
    /// Refuses an input the workflow's latest version would refuse.
    async fn check_input(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        input: &Value,
    ) -> Result<(), AppError> {
        let stored = self.get_workflow(ws, wf, None).await?;
        let def = self
            .definitions
            .get(self.stores.workflows.as_ref(), ws, wf, stored.version)
            .await
            .map_err(|e| AppError::Internal(e.to_string()))?;
        if let Some(schema) = &def.input_schema {
            let errors = super::runs::input_errors(schema, input);
            if !errors.is_empty() {
                return Err(AppError::InvalidRequest(errors));
            }
        }
        Ok(())
    }

    pub async fn create_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        f: ScheduleFields,
    ) -> Result<Schedule, AppError> {
        let input = f
            .input
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        // Both told at once: when it fires, and what it would start.
        let now = Utc::now();
        let timing = crate::orchestrator::tick::cpu(|| {
            Timing::parse(
                f.spec.as_deref().unwrap_or_default(),
                f.timezone.as_deref().unwrap_or("UTC"),
                now,
            )
        });
        let mut errors = match &timing {
            Err(e) => vec![timing_error(e.clone())],
            Ok(_) => Vec::new(),
        };
        match self.check_input(ws, wf, &input).await {
            Ok(()) => {}
            Err(AppError::InvalidRequest(more)) => errors.extend(more),
            Err(e) => return Err(e),
        }
        let timing = match timing {
            Ok(t) if errors.is_empty() => t,
            _ => return Err(AppError::InvalidRequest(errors)),
        };
        let existing = self.stores.schedules.list_schedules(ws, wf).await?;
        if existing.len() >= MAX_SCHEDULES_PER_WORKFLOW {
            return Err(AppError::BadRequest(format!(
                "workflow `{wf}` has {MAX_SCHEDULES_PER_WORKFLOW} schedules, the most it may have"
            )));
        }
        let mut s = Schedule {
            workspace_id: ws.clone(),
            id: ScheduleId::generate(),
            workflow_id: wf.clone(),
            spec: f.spec.unwrap_or_default(),
            timezone: f.timezone.unwrap_or_else(|| "UTC".into()),
            input,
            paused: f.paused.unwrap_or(false),
            catch_up: f.catch_up.unwrap_or_default(),
            overlap: f.overlap.unwrap_or_default(),
            next_fire_at: None,
            last_fire_at: None,
            last_run_id: None,
            buffered_fire_at: None,
            due_at: None,
            created_at: now,
            updated_at: now,
            revision: 1,
        };
        reschedule(&mut s, &timing, now);
        if !self
            .stores
            .schedules
            .create_schedule(&s, MAX_SCHEDULES_PER_WORKSPACE)
            .await?
        {
            return Err(AppError::BadRequest(format!(
                "the workspace has {MAX_SCHEDULES_PER_WORKSPACE} schedules, the most it may have"
            )));
        }
        Ok(s)
    }

    pub async fn get_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
    ) -> Result<Schedule, AppError> {
        self.stores
            .schedules
            .get_schedule(ws, wf, id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("schedule `{id}` not found")))
    }

    pub async fn list_schedules(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
    ) -> Result<Vec<Schedule>, AppError> {
        self.get_workflow(ws, wf, None).await?;
        Ok(self.stores.schedules.list_schedules(ws, wf).await?)
    }

    /// Changes the fields given; a change of when it fires, or resuming
    /// it, counts fire times from now.
    pub async fn update_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
        f: ScheduleFields,
    ) -> Result<Schedule, AppError> {
        let mut s = self.get_schedule(ws, wf, id).await?;
        let now = Utc::now();
        let retime = f.spec.is_some() || f.timezone.is_some() || f.paused.is_some();
        if let Some(spec) = f.spec {
            s.spec = spec;
            // A rate counts from when it was set.
            s.created_at = now;
        }
        if let Some(tz) = f.timezone {
            s.timezone = tz;
        }
        if let Some(input) = f.input {
            self.check_input(ws, wf, &input).await?;
            s.input = input;
        }
        if let Some(p) = f.paused {
            s.paused = p;
        }
        if let Some(c) = f.catch_up {
            s.catch_up = c;
        }
        if let Some(o) = f.overlap {
            s.overlap = o;
        }
        let timing = timing_of(&s)?;
        if retime {
            reschedule(&mut s, &timing, now);
        }
        s.revision += 1;
        s.updated_at = now;
        match self.stores.schedules.save_schedule(&s).await {
            Err(StoreError::Conflict(_)) => Err(AppError::Conflict(format!(
                "schedule `{id}` changed meanwhile; read it and try again"
            ))),
            other => Ok(other.map(|()| s)?),
        }
    }

    pub async fn delete_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
    ) -> Result<(), AppError> {
        match self.stores.schedules.delete_schedule(ws, wf, id).await? {
            true => Ok(()),
            false => Err(AppError::NotFound(format!("schedule `{id}` not found"))),
        }
    }

    /// One tick: every schedule due at `now` starts the runs its fire
    /// times call for, once each.
    pub async fn fire_schedules(&self, now: DateTime<Utc>) -> FireReport {
        let mut report = FireReport::default();
        for _ in 0..MAX_BATCHES {
            let due = match self.stores.schedules.due_schedules(now, DUE_BATCH).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "reading due schedules");
                    report.errors += 1;
                    return report;
                }
            };
            let last_batch = due.len() < DUE_BATCH;
            let mut moved = 0;
            for s in due {
                report.due += 1;
                match self.fire(&s, now).await {
                    Ok((started, saved)) => {
                        report.started += started;
                        moved += usize::from(saved);
                    }
                    Err(e) => {
                        report.errors += 1;
                        tracing::error!(workspace_id = %s.workspace_id, schedule_id = %s.id, error = %e, "firing a schedule");
                        // Tried again later, not first in every batch (its
                        // fire times stay: runs it started are claimed).
                        let mut later = s.clone();
                        later.revision += 1;
                        later.updated_at = now;
                        later.due_at = Some(now + chrono::Duration::seconds(RETRY_AFTER_SECS));
                        if let Ok(true) = self.save_fired(&later).await {
                            moved += 1;
                        }
                    }
                }
            }
            // A batch of which none moved on would be read again as it is.
            if last_batch || moved == 0 {
                break;
            }
        }
        report
    }

    /// Fires one due schedule: the runs started, and whether the schedule
    /// was saved (false: another tick moved it first).
    async fn fire(&self, s: &Schedule, now: DateTime<Utc>) -> Result<(usize, bool), AppError> {
        let (ws, wf) = (&s.workspace_id, &s.workflow_id);
        let timing = match timing_of(s) {
            Ok(t) => t,
            Err(e) => {
                // Stored valid, so only a changed rule gets here: it stops.
                let mut off = s.clone();
                off.paused = true;
                off.revision += 1;
                off.updated_at = now;
                off.due_at = None;
                off.next_fire_at = None;
                self.save_fired(&off).await?;
                return Err(e);
            }
        };
        let previous_active = match &s.last_run_id {
            Some(run) => self
                .stores
                .runs
                .get_run_head(ws, run)
                .await?
                .is_some_and(|r| !r.status.is_terminal()),
            None => false,
        };
        let (fire, mut next) = plan(s, &timing, now, previous_active);
        if fire.cancel_previous
            && let Some(prev) = &s.last_run_id
        {
            match self.cancel_run(ws, prev).await {
                Ok(_) | Err(AppError::Conflict(_) | AppError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let mut started = 0;
        for at in &fire.start {
            match self.start_scheduled(s, *at).await {
                Ok(run) => {
                    started += 1;
                    next.last_fire_at = Some(*at);
                    next.last_run_id = Some(run);
                }
                // The workflow is gone (archived): the schedule stops.
                Err(e @ AppError::NotFound(_)) => {
                    tracing::warn!(workspace_id = %ws, schedule_id = %s.id, workflow_id = %wf, error = %e, "a schedule's workflow is gone; the schedule is paused");
                    next.paused = true;
                    next.next_fire_at = None;
                    next.buffered_fire_at = None;
                    next.due_at = None;
                    break;
                }
                // The workflow refuses the input (its schema changed): said,
                // and the schedule goes on.
                Err(e @ AppError::InvalidRequest(_)) => {
                    tracing::warn!(workspace_id = %ws, schedule_id = %s.id, workflow_id = %wf, error = %e, "a scheduled run could not start");
                }
                Err(e) => return Err(e),
            }
        }
        Ok((started, self.save_fired(&next).await?))
    }

    async fn start_scheduled(&self, s: &Schedule, at: DateTime<Utc>) -> Result<RunId, AppError> {
        let fire_time = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut h = Sha256::new();
        h.update(s.id.as_str().as_bytes());
        h.update([0]);
        h.update(fire_time.as_bytes());
        // A space cannot be in a client's Idempotency-Key: the schedule's own.
        let claim = Claim {
            key: format!("schedule {} {fire_time}", s.id),
            request_hash: format!("{:x}", h.finalize()),
        };
        let cmd = StartRun::with_input(s.input.clone());
        let (run, _) = self
            .start_run_claimed(&s.workspace_id, &s.workflow_id, cmd, Some(claim))
            .await?;
        Ok(run.id)
    }

    /// False when another tick saved the schedule first.
    async fn save_fired(&self, s: &Schedule) -> Result<bool, AppError> {
        match self.stores.schedules.save_schedule(s).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}
