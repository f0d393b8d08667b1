//! The API function: the router `weft dev` serves, under API Gateway.

mod client_ip;

use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    weft::aws::init_logs();
    let stack = weft::aws::Stack::from_env().await?;
    let router = weft::api::router(Arc::new(stack.app()?))
        .layer(axum::middleware::from_fn(client_ip::from_request_context));
    lambda_http::run(router).await
}
