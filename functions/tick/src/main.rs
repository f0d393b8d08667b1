//! The tick function: invoked every minute by an EventBridge schedule, it
//! sweeps runs whose driver is gone and starts the runs of due schedules
//! (see `weft::aws::Stack::tick`).

use lambda_runtime::{LambdaEvent, service_fn};
use weft::aws::TickEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    weft::aws::init_logs();
    let stack = &weft::aws::Stack::from_env().await?;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<TickEvent>| {
        stack.tick(ev.payload)
    }))
    .await
}
