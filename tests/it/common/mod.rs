//! Test harness: the real embedded platform on a random port over a
//! temporary SQLite file, and an HTTP client for it.
#![allow(dead_code)]

pub mod providers;
pub mod server;
pub mod upstream;

use std::time::Duration;

use serde_json::{Value, json};
use weft::platform::{Platform, PlatformConfig};

/// Serves `router` on a random port of 127.0.0.1; returns the base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let app = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

pub struct TestApp {
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
    /// The embedded platform, when the tests started it themselves.
    pub platform: Option<std::sync::Arc<Platform>>,
    _dir: Option<tempfile::TempDir>,
}

pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

/// The embedded platform, allowed to call services on 127.0.0.1 (the tests'
/// own upstream servers).
pub async fn spawn_app() -> TestApp {
    let egress = weft::adapters::http::EgressPolicy::allowing("127.0.0.0/8").expect("policy");
    spawn_app_with(PlatformConfig {
        egress,
        // Tests that count requests set their own (the harness polls).
        rate_limits: weft::domain::RateLimits::generous(),
        ..Default::default()
    })
    .await
}

pub async fn spawn_app_with(mut config: PlatformConfig) -> TestApp {
    config
        .master_key
        .get_or_insert_with(weft::adapters::sqlite::MasterKey::generate);
    let dir = tempfile::tempdir().expect("temp dir");
    let platform = std::sync::Arc::new(
        Platform::open_with(&dir.path().join("weft.db"), config)
            .await
            .expect("open platform"),
    );
    let (_, key) = platform
        .create_workspace("test", None)
        .await
        .expect("workspace");
    let base = serve(platform.router()).await;
    TestApp {
        base,
        key,
        client: test_client(),
        platform: Some(platform),
        _dir: Some(dir),
    }
}

impl TestApp {
    /// A client for a Weft already running elsewhere.
    pub fn external(base: &str, key: &str) -> Self {
        TestApp {
            base: base.trim_end_matches('/').to_owned(),
            key: key.to_owned(),
            client: test_client(),
            platform: None,
            _dir: None,
        }
    }

    /// Another workspace on the same server, with its own key.
    pub async fn other_workspace(&self) -> String {
        let platform = self.platform.as_ref().expect("an embedded platform");
        platform
            .create_workspace("other", None)
            .await
            .expect("workspace")
            .1
    }

    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let text = res.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status >= 400 {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            assert_eq!(
                ct, "application/problem+json",
                "every error is problem+json: {status} {body}"
            );
            assert_eq!(
                body["status"],
                json!(status),
                "problem status matches: {body}"
            );
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, Some(&self.key.clone()), &[])
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body), Some(&self.key.clone()), &[])
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(body), Some(&self.key.clone()), &[])
            .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None, Some(&self.key.clone()), &[])
            .await
    }

    pub async fn create_workflow(&self, def: Value) -> String {
        let r = self.post("/v1/workflows", def).await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().expect("id").to_owned()
    }

    pub async fn start_run(&self, workflow: &str, input: Value) -> String {
        let r = self
            .post(
                &format!("/v1/workflows/{workflow}/runs"),
                json!({ "input": input }),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        r.body["run_id"].as_str().expect("run_id").to_owned()
    }

    /// How long a run may take to reach a state the tests wait for. Not a
    /// performance claim (those are benchmarks): a bound that only a run
    /// that is stuck reaches, generous for debug builds on two loaded cores
    /// with every scenario started at once — and on emulated AWS, where
    /// each step is a Step Functions state and a Lambda invocation through
    /// the emulator, several times that.
    pub fn wait_deadline(&self) -> Duration {
        if self.platform.is_some() {
            Duration::from_secs(60)
        } else {
            Duration::from_secs(300)
        }
    }

    /// Polls the run until `done` holds (at most `wait_deadline`).
    pub async fn wait_run(&self, run: &str, done: impl Fn(&Value) -> bool) -> Value {
        let begun = tokio::time::Instant::now();
        let deadline = begun + self.wait_deadline();
        let (mut polls, mut slowest) = (0u32, Duration::ZERO);
        loop {
            let asked = tokio::time::Instant::now();
            let r = self.get(&format!("/v1/runs/{run}")).await;
            polls += 1;
            slowest = slowest.max(asked.elapsed());
            assert_eq!(r.status, 200, "{}", r.body);
            if done(&r.body) {
                return r.body;
            }
            // A finished run changes no more: waiting on is only slower.
            let finished = matches!(
                r.body["status"].as_str(),
                Some("COMPLETED" | "FAILED" | "CANCELLED")
            );
            assert!(
                !finished && tokio::time::Instant::now() < deadline,
                "run did not reach the expected state ({} after {:?}; {polls} polls, \
                 the slowest {slowest:?}): {}",
                if finished { "it finished" } else { "timed out" },
                begun.elapsed(),
                r.body
            );
            // Against a deployment (the emulated stack answers every poll
            // with several emulated DynamoDB requests), poll less often.
            let every = if self.platform.is_some() { 20 } else { 100 };
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
    }

    pub async fn wait_finished(&self, run: &str) -> Value {
        self.wait_run(run, |b| {
            matches!(
                b["status"].as_str(),
                Some("COMPLETED" | "FAILED" | "CANCELLED")
            )
        })
        .await
    }
}

/// The paths a problem's `errors` name (`$.steps[0].event`, …).
pub fn error_paths(problem: &Value) -> Vec<&str> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["path"].as_str())
        .collect()
}

pub fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["id"] == id))
        .unwrap_or(&Value::Null)
}

/// The tests' client: straight to the servers the tests run (never through
/// a proxy from the environment).
pub fn test_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}
