//! The step executor port: how steps that do I/O (HTTP now; LLM and
//! connectors later) are run. The embedded orchestrator calls executors in
//! process; on AWS each step type is a Lambda function behind the same call.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StepRequest;
use crate::domain::{RunId, StepError, Usd, WorkflowId, WorkspaceId};

/// One attempt of one step, with its templates already rendered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepCall {
    pub workspace_id: WorkspaceId,
    pub run_id: RunId,
    pub workflow_id: WorkflowId,
    /// The run's spending cap for model calls, in USD.
    #[serde(default)]
    pub budget_usd: Option<Usd>,
    pub step_key: String,
    pub attempt: u32,
    /// The step type (`step_type`) and its rendered request (`request`).
    #[serde(flatten)]
    pub request: StepRequest,
    #[serde(with = "humantime_serde_secs")]
    pub timeout: Duration,
    /// Where the executor charges the memory its result will take before
    /// it reads and parses it (see `memory::Hold`); not sent anywhere.
    #[serde(skip)]
    pub memory: crate::memory::Hold,
}

impl StepCall {
    /// The step type, as definitions name it.
    pub fn step_type(&self) -> &'static str {
        self.request.step_type()
    }
}

mod humantime_serde_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[async_trait]
pub trait StepExecutor: Send + Sync {
    /// Runs the attempt. Errors say whether a retry could help.
    async fn execute(&self, call: &StepCall) -> Result<Value, StepError>;
}
