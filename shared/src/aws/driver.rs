//! The run driver on AWS: each run is one execution of the DAG-driver state
//! machine, named after the run; a run that changes from outside (approval,
//! cancel) is resumed by sending back the task token its execution parked.

use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_sfn::Client;
use aws_sdk_sfn::error::{DisplayErrorContext, ProvideErrorMetadata};
use serde_json::json;

use crate::adapters::dynamo::DynamoStore;
use crate::domain::{RunId, WorkspaceId};
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
    async fn start(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError> {
        let input = json!({"workspace_id": ws, "run_id": run}).to_string();
        match self
            .sfn
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            // Named after the run: a second start of the same run is
            // refused by Step Functions instead of driving it twice.
            .name(run.as_str())
            .input(input)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ExecutionAlreadyExists") => Ok(()),
            Err(e) => Err(sfn_error(e)),
        }
    }

    async fn poke(&self, ws: &WorkspaceId, run: &RunId) -> Result<(), DriverError> {
        resume(&self.store, &self.sfn, ws, run).await
    }
}

/// Sends back the run's parked task token, if one is parked, so its
/// execution plans again. A token that is no longer valid (the wait timed
/// out meanwhile) needs nothing more: the execution is planning already.
pub(super) async fn resume(
    store: &DynamoStore,
    sfn: &Client,
    ws: &WorkspaceId,
    run: &RunId,
) -> Result<(), DriverError> {
    let token = store
        .take_task_token(ws, run)
        .await
        .map_err(|e| DriverError(e.to_string()))?;
    let Some(token) = token else { return Ok(()) };
    match sfn
        .send_task_success()
        .task_token(token)
        .output("{}")
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.code(),
                Some("TaskTimedOut" | "TaskDoesNotExist" | "InvalidToken")
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(sfn_error(e)),
    }
}
