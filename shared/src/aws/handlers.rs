//! The functions' handlers: what each does with its event.

use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument as _;

use super::{FunctionError, Stack, driver};
use crate::adapters::http::HttpExecutor;
use crate::adapters::llm::{LlmConfig, LlmExecutor, Spending};
use crate::domain::{RunId, WorkspaceId};
use crate::orchestrator::stepfunctions::{self, MAX_WAIT_SECS, PlanRequest, StepRef};
use crate::ports::{RunStore, StepExecutor};

/// What a step function is invoked with: one attempt of one step, by
/// reference.
pub type StepPayload = StepRef;

/// What an operator invokes the admin function with.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Creates a workspace and its owner API key (a new random one unless
    /// `api_key` is given).
    CreateWorkspace {
        name: String,
        #[serde(default)]
        api_key: Option<String>,
    },
}

impl Stack {
    /// The plan function: the state machine's Plan, RecordFailure and park.
    pub async fn plan(&self, req: PlanRequest) -> Result<Value, FunctionError> {
        let (ws, run) = req.run();
        let (ws, run) = (ws.clone(), run.clone());
        let span = tracing::info_span!("plan", workspace_id = %ws, run_id = %run);
        async move {
            if let PlanRequest::Park {
                revision,
                task_token,
                ..
            } = req
            {
                self.park(&ws, &run, revision, &task_token).await?;
                return Ok(json!({}));
            }
            let now = chrono::Utc::now();
            let kept = Some(&self.kept_records);
            let out = stepfunctions::handle(self.stores(), &self.settings, kept, req, now)
                .await
                .map_err(FunctionError::from_core)?;
            serde_json::to_value(out).map_err(|e| FunctionError::Internal(e.to_string()))
        }
        .instrument(span)
        .await
    }

    /// Parks the task token of a waiting execution. The run may have
    /// changed since Plan decided to wait (an approval that came in
    /// meanwhile found no token to send): then the token goes back at once.
    async fn park(
        &self,
        ws: &WorkspaceId,
        run: &RunId,
        revision: u64,
        token: &str,
    ) -> Result<(), FunctionError> {
        self.store
            .park_task_token(ws, run, token, MAX_WAIT_SECS + 86_400)
            .await?;
        let moved = match self.store.get_run(ws, run).await? {
            Some(r) => r.revision != revision || r.status.is_terminal(),
            None => true,
        };
        if moved {
            driver::resume(&self.store, &self.sfn, ws, run)
                .await
                .map_err(|e| FunctionError::StoreUnavailable(e.0))?;
        }
        Ok(())
    }

    /// A step function: runs the attempt and records its result.
    pub async fn step(
        &self,
        executor: &dyn StepExecutor,
        call: StepPayload,
    ) -> Result<Value, FunctionError> {
        let span = tracing::info_span!("step", workspace_id = %call.workspace_id, run_id = %call.run_id, step_id = %call.step_key, attempt = call.attempt);
        stepfunctions::run_step(self.stores(), Some(executor), &call)
            .instrument(span)
            .await
            .map_err(FunctionError::from_core)?;
        Ok(json!({"ok": true}))
    }

    pub fn http_executor(&self) -> anyhow::Result<HttpExecutor> {
        Ok(
            HttpExecutor::new(self.settings.egress.clone(), self.secrets.clone())?
                .with_audit(self.store.clone()),
        )
    }

    pub fn llm_executor(&self) -> anyhow::Result<LlmExecutor> {
        LlmExecutor::new(
            self.secrets.clone(),
            LlmConfig::from_env()?,
            Spending::from_stores(&self.store_set()),
        )
    }

    /// The trigger function: starts the run of each verified hook request
    /// the queue hands it. A message whose run could not start (a store
    /// failed) is reported failed, so the queue hands it again (then to
    /// its dead-letter queue); one that can never start is logged and
    /// consumed. A repeat starts nothing twice (the start is claimed).
    pub async fn trigger(
        &self,
        app: &crate::app::App,
        ev: aws_lambda_events::event::sqs::SqsEvent,
    ) -> aws_lambda_events::event::sqs::SqsBatchResponse {
        use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
        let mut failed = Vec::new();
        for m in ev.records {
            let id = m.message_id.clone().unwrap_or_default();
            let receipt: crate::domain::Receipt = match serde_json::from_str(
                m.body.as_deref().unwrap_or_default(),
            ) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "a hook queue message is not a receipt; it is dropped");
                    continue;
                }
            };
            let span = tracing::info_span!("trigger", workspace_id = %receipt.workspace_id, hook_id = %receipt.hook_id, receipt_id = %receipt.id);
            match app.process_receipt(&receipt).instrument(span.clone()).await {
                Ok(crate::app::Processed::Started { run_id, replayed }) => {
                    span.in_scope(|| tracing::info!(run_id = %run_id, replayed, "a hook request started its run"));
                }
                Ok(crate::app::Processed::Dropped(why)) => {
                    span.in_scope(
                        || tracing::warn!(reason = %why, "a hook request started no run"),
                    );
                }
                Err(e) => {
                    span.in_scope(|| tracing::warn!(error = %e, "a hook request's run could not start; the queue hands it again"));
                    let mut f = BatchItemFailure::default();
                    f.item_identifier = id;
                    failed.push(f);
                }
            }
        }
        let mut out = SqsBatchResponse::default();
        out.batch_item_failures = failed;
        out
    }

    /// The admin function (operators only; not behind the API).
    pub async fn admin(&self, req: AdminRequest) -> Result<Value, FunctionError> {
        match req {
            AdminRequest::CreateWorkspace { name, api_key } => {
                let (ws, key) = crate::app::create_workspace(
                    self.store.as_ref(),
                    self.store.as_ref(),
                    &name,
                    api_key,
                )
                .await
                .map_err(FunctionError::from_core)?;
                tracing::info!(workspace_id = %ws, "workspace created");
                Ok(json!({"workspace_id": ws, "api_key": key}))
            }
        }
    }
}
