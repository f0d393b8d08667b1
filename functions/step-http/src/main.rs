//! The http step function: one attempt of an `http` step.

use lambda_runtime::{LambdaEvent, service_fn};
use weft::aws::StepPayload;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    weft::aws::init_logs();
    let stack = &weft::aws::Stack::from_env().await?;
    let executor = &stack.http_executor()?;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<StepPayload>| {
        stack.step(executor, ev.payload)
    }))
    .await
}
