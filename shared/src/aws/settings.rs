//! The functions' settings, from the environment template.yaml sets.

use std::collections::HashMap;

use anyhow::Context as _;

use crate::adapters::http::EgressPolicy;
use crate::orchestrator::stepfunctions::FunctionNames;

#[derive(Clone, Debug)]
pub struct AwsSettings {
    /// `WEFT_TABLE`: the DynamoDB table.
    pub table: String,
    /// `WEFT_BUCKET`: where records too large for DynamoDB go.
    pub bucket: Option<String>,
    /// `WEFT_SECRET_PREFIX`: the stack's path in Secrets Manager.
    pub secret_prefix: String,
    /// `WEFT_STATE_MACHINE_ARN`: the DAG driver (the API function starts it).
    pub state_machine_arn: Option<String>,
    /// `WEFT_DRIVER_ARN`: the Standard DAG driver, where runs are handed
    /// off, continued and resumed.
    pub driver_arn: Option<String>,
    /// `WEFT_STEP_FUNCTIONS`: `type=function,...`, the function that runs
    /// each I/O step type (the plan function names them to the machine).
    pub step_functions: HashMap<String, String>,
    /// `WEFT_EGRESS_ALLOW`: internal ranges step functions may reach.
    pub egress: EgressPolicy,
    /// `WEFT_HOOK_QUEUE_URL`: where verified hook requests wait for the
    /// trigger function (the API function sends to it).
    pub hook_queue_url: Option<String>,
    /// `WEFT_DELIVERY_QUEUE_URL`: where webhook deliveries wait for the
    /// deliver function (unset: the tick sends them itself).
    pub delivery_queue_url: Option<String>,
    /// `WEFT_METRICS_NAMESPACE`: the CloudWatch namespace of the metrics
    /// functions print (Embedded Metric Format); unset: none are printed.
    pub metrics_namespace: Option<String>,
    /// `WEFT_AWS_ENDPOINT`: one endpoint for every AWS service (emulated
    /// AWS); unset on AWS itself.
    pub endpoint: Option<String>,
    /// `WEFT_RATE_LIMITS`: requests a second and burst per workspace and
    /// per key (`workspace=200/400,key=100/200`, the default).
    pub rate_limits: crate::domain::RateLimits,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl AwsSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let mut step_functions = HashMap::new();
        for pair in var("WEFT_STEP_FUNCTIONS").unwrap_or_default().split(',') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (ty, function) = pair.split_once('=').with_context(|| {
                format!("WEFT_STEP_FUNCTIONS: `{pair}` is not `step_type=function`")
            })?;
            step_functions.insert(ty.trim().to_owned(), function.trim().to_owned());
        }
        Ok(Self {
            table: var("WEFT_TABLE").context("WEFT_TABLE is not set")?,
            bucket: var("WEFT_BUCKET"),
            secret_prefix: var("WEFT_SECRET_PREFIX").unwrap_or_else(|| "weft/".into()),
            state_machine_arn: var("WEFT_STATE_MACHINE_ARN"),
            driver_arn: var("WEFT_DRIVER_ARN"),
            step_functions,
            egress: EgressPolicy::allowing(&var("WEFT_EGRESS_ALLOW").unwrap_or_default())
                .map_err(|e| anyhow::anyhow!("WEFT_EGRESS_ALLOW: {e}"))?,
            hook_queue_url: var("WEFT_HOOK_QUEUE_URL"),
            delivery_queue_url: var("WEFT_DELIVERY_QUEUE_URL"),
            metrics_namespace: var("WEFT_METRICS_NAMESPACE"),
            endpoint: var("WEFT_AWS_ENDPOINT"),
            rate_limits: match var("WEFT_RATE_LIMITS") {
                Some(v) => crate::domain::RateLimits::parse(&v)
                    .map_err(|e| anyhow::anyhow!("WEFT_RATE_LIMITS: {e}"))?,
                None => crate::domain::RateLimits::default(),
            },
        })
    }

    /// The SDK's configuration: the standard chain (the function's role on
    /// AWS), pointed at `endpoint` when one is set.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        // An emulator over plain HTTP needs no roots: it gets the client
        // AWS gets, so a measured start is what a start on AWS does.
        let trust = match &self.endpoint {
            Some(e) if e.starts_with("https://") => super::Trust::System,
            _ => super::Trust::AmazonRoots,
        };
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(super::https_client(trust));
        if let Some(e) = &self.endpoint {
            loader = loader.endpoint_url(e);
        }
        loader.load().await
    }
}

impl FunctionNames for AwsSettings {
    fn function_for(&self, step_type: &str) -> Option<String> {
        self.step_functions.get(step_type).cloned()
    }

    fn standard_machine(&self) -> Option<&str> {
        self.driver_arn.as_deref()
    }
}
