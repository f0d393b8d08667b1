//! A debug line for every AWS call a function makes (target `aws_calls`:
//! `{"call": "dynamodb:PutItem", "function": "weft-api"}`), so a check can
//! hold each call against the function's IAM policy in template.yaml
//! (`infra/local/iam_check.py`; emulated AWS does not enforce IAM). Off
//! unless `WEFT_LOG` asks for it (`info,aws_calls=debug`).

use aws_sdk_dynamodb::config::ConfigBag;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

/// Logs each call of one client, under its IAM service prefix.
#[derive(Debug)]
pub struct CallLog {
    /// The service's prefix in IAM actions (`dynamodb`, `s3`, `states`, …).
    pub service: &'static str,
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "CallLog"
    }

    // The operation's metadata is in the bag once the client has applied
    // its configuration: from serialization on, not at `before_execution`.
    fn read_before_serialization(
        &self,
        _ctx: &BeforeSerializationInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if tracing::enabled!(target: "aws_calls", tracing::Level::DEBUG)
            && let Some(m) = cfg.load::<Metadata>()
        {
            let function = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
            tracing::debug!(
                target: "aws_calls",
                call = %format!("{}:{}", self.service, m.name()),
                function = %function,
                "aws call"
            );
        }
        Ok(())
    }
}
