//! The run driver on AWS: each run is one execution of the DAG-driver state
//! machine, named after the run; a run that changes from outside (approval,
//! cancel) is resumed by sending back the task token its execution parked.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sfn::Client;
use aws_sdk_sfn::error::{DisplayErrorContext, ProvideErrorMetadata};
use serde_json::json;

use chrono::{DateTime, Utc};

use crate::adapters::dynamo::DynamoStore;
use crate::domain::{Lease, RunId, WorkspaceId};
use crate::orchestrator::{lease, tick};
use crate::ports::{DriverError, RunDriver};

pub struct StepFunctionsDriver {
    sfn: Client,
    state_machine_arn: String,
    store: Arc<DynamoStore>,
}

impl StepFunctionsDriver {
    pub fn new(sfn: Client, state_machine_arn: String, store: Arc<DynamoStore>) -> Self {
        Self {
            sfn,
            state_machine_arn,
            store,
        }
    }
}

fn sfn_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: aws_sdk_sfn::error::SdkError<E, R>,
) -> DriverError {
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => DriverError(format!("Step Functions: {code}: {msg}")),
        _ => DriverError(format!("Step Functions: {}", DisplayErrorContext(&e))),
    }
}

#[async_trait]
impl RunDriver for StepFunctionsDriver {
    fn initial_lease(&self, now: DateTime<Utc>) -> Option<Lease> {
        Some(lease::initial(now))
    }

    async fn start(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError> {
        let input = json!({"workspace_id": ws, "run_id": run}).to_string();
        match self
            .sfn
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(run.as_str())
            .input(input)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ExecutionAlreadyExists") => Ok(()),
            // The run is stored with a lease no one holds: the sweeper
            // starts it when the lease runs out.
            Err(e) => Err(sfn_error(e)),
        }
    }

    async fn poke(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError> {
        match resume(&self.store, &self.sfn, ws, run).await {
            Ok(Resumed::Sent | Resumed::NotParked) => Ok(()),
            // The waiting execution is gone, or could not be reached: the
            // change is stored, and the run's lease is ended so the sweeper
            // picks it up within a minute.
            outcome => {
                if let Err(e) = &outcome {
                    tracing::warn!(error = %e, "sending a task token back failed; the sweeper will");
                }
                expire_lease(self.store.as_ref(), ws, run)
                    .await
                    .map_err(|e| DriverError(e.to_string()))
            }
        }
    }
}

/// Ends the run's lease now (the sweeper resumes it on its next round).
pub(super) async fn expire_lease(
    store: &DynamoStore,
    ws: &WorkspaceId,
    run: &RunId,
) -> anyhow::Result<()> {
    let now = Utc::now();
    tick::update_lease(store, ws, run, |r| match r.lease.as_mut() {
        Some(l) if l.until > now => {
            l.until = now;
            true
        }
        _ => false,
    })
    .await?;
    Ok(())
}

/// What sending back a parked task token did.
pub(super) enum Resumed {
    /// No token is parked: the execution is not waiting on one.
    NotParked,
    /// The waiting execution goes on.
    Sent,
    /// The token is dead (the execution stopped, or its wait timed out).
    Dead,
}

/// Sends back the run's parked task token, if one is parked, so its
/// execution plans again; removes the token only once it is sent (or
/// dead), so a failed send can be made again.
pub(super) async fn resume(
    store: &DynamoStore,
    sfn: &Client,
    ws: &WorkspaceId,
    run: &RunId,
) -> Result<Resumed, DriverError> {
    let token = store
        .task_token(ws, run)
        .await
        .map_err(|e| DriverError(e.to_string()))?;
    let Some(token) = token else {
        return Ok(Resumed::NotParked);
    };
    let outcome = match sfn
        .send_task_success()
        .task_token(&token)
        .output("{}")
        .send()
        .await
    {
        Ok(_) => Resumed::Sent,
        Err(e)
            if matches!(
                e.code(),
                Some("TaskTimedOut" | "TaskDoesNotExist" | "InvalidToken")
            ) =>
        {
            Resumed::Dead
        }
        Err(e) => return Err(sfn_error(e)),
    };
    store
        .clear_task_token(ws, run, &token)
        .await
        .map_err(|e| DriverError(e.to_string()))?;
    Ok(outcome)
}
