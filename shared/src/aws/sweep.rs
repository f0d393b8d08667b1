//! The tick function's sweep: every minute (an EventBridge schedule) it
//! reads the index of active runs for those whose lease ran out — their
//! driver is gone: an execution that stopped or timed out, a start that
//! failed, a task token that was lost — and resumes each exactly once.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::driver::{self, Resumed};
use super::{FunctionError, Stack};
use crate::domain::{RunId, StepError, WorkspaceId};
use crate::orchestrator::{lease, tick};
use crate::ports::StalledRuns;

/// Most runs one sweep looks at (the next minute's takes the rest).
const SWEEP_BATCH: usize = 200;

/// What the tick function is invoked with: the schedule's event, of which
/// only its time is used (the sweep's clock).
#[derive(Debug, Default, Deserialize)]
pub struct TickEvent {
    #[serde(default)]
    pub time: Option<DateTime<Utc>>,
}

/// What the sweep did with one stalled run.
#[derive(Debug, PartialEq)]
enum Swept {
    /// Its parked token went back to a waiting execution.
    Woken,
    /// A new execution was started for it.
    Resumed,
    /// It was resumed too often without progress and is failed.
    Failed,
    /// Someone else moved it first.
    Skipped,
}

impl Stack {
    /// One sweep of stalled runs.
    pub async fn sweep(&self, ev: TickEvent) -> Result<Value, FunctionError> {
        let now = ev.time.unwrap_or_else(Utc::now);
        let stalled = self.store.stalled_runs(now, SWEEP_BATCH).await?;
        let mut counts = [0usize; 4];
        let mut errors = 0;
        for (ws, run) in &stalled {
            let span = tracing::info_span!("sweep", workspace_id = %ws, run_id = %run);
            match self.resume_stalled(ws, run, now).instrument(span).await {
                Ok(s) => {
                    tracing::info!(workspace_id = %ws, run_id = %run, outcome = ?s, "stalled run");
                    counts[s as usize] += 1;
                }
                Err(e) => {
                    errors += 1;
                    tracing::error!(workspace_id = %ws, run_id = %run, error = %format!("{e:#}"), "resuming a stalled run failed");
                }
            }
        }
        Ok(json!({
            "stalled": stalled.len(),
            "woken": counts[Swept::Woken as usize],
            "resumed": counts[Swept::Resumed as usize],
            "failed": counts[Swept::Failed as usize],
            "skipped": counts[Swept::Skipped as usize],
            "errors": errors,
        }))
    }

    async fn resume_stalled(
        &self,
        ws: &WorkspaceId,
        run: &RunId,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Swept> {
        // A parked token first: the execution may be alive and waiting (an
        // approval whose token could not be sent). It plans, and renews.
        if let Ok(Resumed::Sent) = driver::resume(&self.store, &self.sfn, ws, run).await {
            return Ok(Swept::Woken);
        }
        let machine = self
            .settings
            .driver_arn
            .clone()
            .ok_or_else(|| anyhow::anyhow!("WEFT_DRIVER_ARN is not set"))?;
        let name = Mutex::new(None);
        let give_up = Mutex::new(false);
        // Conditional on the run's revision: of sweeps that race, one wins.
        let written = tick::update_lease(self.store.as_ref(), ws, run, |r| {
            if !lease::stalled(r, now) {
                return false;
            }
            let run_id = r.id.to_string();
            let Some(l) = r.lease.as_mut() else {
                return false;
            };
            if l.sweeps >= lease::MAX_SWEEPS {
                if let Ok(mut g) = give_up.lock() {
                    *g = true;
                }
                return false;
            }
            l.sweeps += 1;
            let n = lease::hand_over(l, &machine, &run_id, now, now);
            if let Ok(mut slot) = name.lock() {
                *slot = Some(n);
            }
            true
        })
        .await?;
        if give_up.into_inner().unwrap_or(false) {
            let error = StepError::permanent(
                "driver_lost",
                format!(
                    "the run's driver stopped {} times without the run making progress",
                    lease::MAX_SWEEPS
                ),
            );
            tick::fail(self.stores(), ws, run, error).await?;
            return Ok(Swept::Failed);
        }
        let (Some(_), Some(name)) = (written, name.into_inner().ok().flatten()) else {
            return Ok(Swept::Skipped);
        };
        let input = json!({"workspace_id": ws, "run_id": run}).to_string();
        match self
            .sfn
            .start_execution()
            .state_machine_arn(&machine)
            .name(&name)
            .input(input)
            .send()
            .await
        {
            Ok(_) => Ok(Swept::Resumed),
            Err(e)
                if aws_sdk_sfn::error::ProvideErrorMetadata::code(&e)
                    == Some("ExecutionAlreadyExists") =>
            {
                Ok(Swept::Resumed)
            }
            // The lease given to the execution runs out again, and the next
            // sweep tries with a new one.
            Err(e) => Err(anyhow::anyhow!(
                "starting execution {name}: {}",
                aws_sdk_sfn::error::DisplayErrorContext(&e)
            )),
        }
    }
}
