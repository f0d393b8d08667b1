//! The admin function: operator tasks such as creating a workspace and its
//! owner key (`{"action": "create_workspace", "name": "Acme"}`).

use lambda_runtime::{LambdaEvent, service_fn};
use weft::aws::AdminRequest;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    weft::aws::init_logs();
    let stack = &weft::aws::Stack::from_env().await?;
    lambda_runtime::run(service_fn(move |ev: LambdaEvent<AdminRequest>| {
        stack.admin(ev.payload)
    }))
    .await
}
