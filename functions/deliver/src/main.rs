//! The deliver function: consumes the delivery queue (SQS), sending each
//! outbound webhook delivery it names and handing it back with the wait
//! before its next attempt (see `weft::aws::Stack::deliver`). Reports
//! partial batch failures.

use std::sync::Arc;

use aws_lambda_events::event::sqs::SqsEvent;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    weft::aws::init_logs();
    let stack = &weft::aws::Stack::from_env().await?;
    let app = &Arc::new(stack.app()?);
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<SqsEvent>| async move {
        Ok::<_, std::convert::Infallible>(stack.deliver(app, ev.payload).await)
    }))
    .await
}
