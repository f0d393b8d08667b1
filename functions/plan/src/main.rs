//! The plan function: the state machine's Plan, RecordFailure and park
//! tasks (see statemachines/dag-driver.asl.json).

use lambda_runtime::{LambdaEvent, service_fn};
use weft::orchestrator::stepfunctions::PlanRequest;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    weft::aws::init_logs();
    let stack = &weft::aws::Stack::from_env().await?;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<PlanRequest>| {
        stack.plan(ev.payload)
    }))
    .await
}
