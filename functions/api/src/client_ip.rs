//! The caller's address as API Gateway saw it (`requestContext.http.
//! sourceIp`), for the audit log: a client can write X-Forwarded-For, not
//! this.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use lambda_http::request::RequestContext;

pub async fn from_request_context(mut req: Request, next: Next) -> Response {
    let ip = match req.extensions().get::<RequestContext>() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.http.source_ip.clone(),
        _ => None,
    };
    if let Some(ip) = ip {
        req.extensions_mut().insert(weft::api::ClientIp(ip));
    }
    next.run(req).await
}
