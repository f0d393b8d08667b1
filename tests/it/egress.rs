//! Where outbound calls may go: tenants' http steps are held to the egress
//! policy and never use a proxy from the environment; the model providers
//! the operator configured are trusted by configuration.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{TestApp, providers, server, step, upstream};
use serde_json::json;
use weft::adapters::http::EgressPolicy;

/// A proxy in the environment would resolve host names past the egress
/// guard. The step goes straight to its service; the proxy sees nothing.
/// (The server is a process of its own: the variables touch nothing else.)
#[tokio::test]
async fn environment_proxies_are_not_used() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy_url = format!("http://{}", proxy.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = connections.clone();
    tokio::spawn(async move {
        while let Ok((_socket, _)) = proxy.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|v| (v, proxy_url.as_str()))
    .collect();
    let dir = tempfile::tempdir().expect("dir");
    let server = server::start_with_env(dir.path(), &[], &env);
    let app = TestApp::external(&server.base, server::KEY);
    let up = upstream::spawn().await;
    app.create_workflow(json!({"id": "wf_p", "name": "p", "steps": [
        {"id": "call", "type": "http", "url": "{{ trigger.base }}/echo", "retry": {"max_attempts": 1}}
    ]}))
    .await;
    let run = app.start_run("wf_p", json!({"base": up})).await;
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(step(&done, "call")["output"]["body"]["method"], "GET");
    assert_eq!(connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn operator_providers_are_trusted_and_tenants_kept_off_loopback() {
    // A model provider on loopback, configured by the operator, is
    // reached, while the default policy keeps tenants off loopback.
    let (app, base) = providers::setup_with(true, EgressPolicy::default()).await;
    let done = providers::run_one(
        &app,
        json!({"id": "ask", "type": "llm", "model": "gpt-4o-mini", "prompt": "hello"}),
        json!({}),
    )
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    let done = providers::run_one(
        &app,
        json!({"id": "call", "type": "http", "url": format!("{base}/calls"), "retry": {"max_attempts": 1}}),
        json!({}),
    )
    .await;
    assert_eq!(done["error"]["code"], "egress_denied", "{done}");
}
