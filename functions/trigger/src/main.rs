//! The trigger function: consumes the hook queue (SQS), starting the run of
//! each verified inbound webhook request the API function kept there (see
//! `weft::aws::Stack::trigger`). Reports partial batch failures.

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    weft::aws::init_logs();
    let stack = &weft::aws::Stack::from_env().await?;
    let app = &stack.app()?;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<SqsEvent>| async move {
        Ok::<_, std::convert::Infallible>(stack.trigger(app, ev.payload).await)
    }))
    .await
}
