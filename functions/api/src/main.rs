//! The API function: the router `weft dev` serves, under API Gateway.

use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    weft::aws::init_logs();
    let stack = weft::aws::Stack::from_env().await?;
    lambda_http::run(weft::api::router(Arc::new(stack.app()?))).await
}
