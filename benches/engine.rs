//! The engine benchmark: `cargo bench --bench engine`.
//!
//! Embedded Weft with durable state (a SQLite file in a temp directory):
//!   W1  a 10-step chain of no-op transforms, end-to-end latency over 60 runs
//!   W2  one run fanning out to 50 parallel steps, then a join, over 30 runs
//!   W3  500 runs of a 3-step chain submitted through the HTTP API as fast as
//!       possible by 32 concurrent clients: completed runs per second
//! Latency is from the start call to the orchestrator's "finished" event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use weft::domain::RunStatus;
use weft::platform::Platform;

fn chain(n: usize) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            if i == 0 {
                json!({"id": "s0", "type": "transform", "inputs": {"v": "{{ trigger.v }}"}})
            } else {
                json!({"id": format!("s{i}"), "type": "transform", "inputs": {"v": format!("{{{{ s{}.v }}}}", i - 1)}})
            }
        })
        .collect();
    json!({"name": format!("chain{n}"), "steps": steps})
}

fn fan_out(n: usize) -> Value {
    let mut steps: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("p{i}"), "type": "transform", "inputs": {"i": i, "v": "{{ trigger.v }}"}}))
        .collect();
    let deps: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
    steps.push(json!({"id": "join", "type": "transform", "inputs": {"n": n}, "depends_on": deps}));
    json!({"name": "fan", "steps": steps})
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn latencies(
    p: &Platform,
    ws: &weft::domain::WorkspaceId,
    wf: &str,
    runs: usize,
) -> Vec<Duration> {
    let mut events = p.orchestrator.subscribe_finished();
    let wf = weft::domain::WorkflowId::from_string(wf);
    let mut out = Vec::with_capacity(runs);
    for i in 0..runs {
        let t = Instant::now();
        let (run, _) = p
            .app
            .start_run(ws, &wf, json!({"input": {"v": i}}), None)
            .await
            .expect("start");
        loop {
            let ((_, id), status) = events.recv().await.expect("event");
            if id == run.id {
                assert_eq!(status, RunStatus::Completed);
                break;
            }
        }
        out.push(t.elapsed());
    }
    out.sort();
    out
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("dir");
        let platform = Arc::new(Platform::open(&dir.path().join("bench.db")).await.expect("platform"));
        let (ws, key) = platform.create_workspace("bench", None).await.expect("workspace");
        for (id, def) in [("chain10", chain(10)), ("fan50", fan_out(50)), ("chain3", chain(3))] {
            let mut def = def;
            def["id"] = json!(id);
            platform.app.create_workflow(&ws, def).await.expect("workflow");
        }
        let _ = latencies(&platform, &ws, "chain10", 10).await; // warm-up

        let w1 = latencies(&platform, &ws, "chain10", 60).await;
        println!(
            "W1 10-step chain:       median {:.2} ms   p95 {:.2} ms   (60 runs; target: median <= 10 ms)",
            ms(percentile(&w1, 0.5)),
            ms(percentile(&w1, 0.95))
        );
        let w2 = latencies(&platform, &ws, "fan50", 30).await;
        println!(
            "W2 50-way fan-out+join: median {:.2} ms   p95 {:.2} ms   (30 runs; target: median <= 25 ms)",
            ms(percentile(&w2, 0.5)),
            ms(percentile(&w2, 0.95))
        );

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let router = platform.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");
        let mut events = platform.orchestrator.subscribe_finished();
        const RUNS: usize = 500;
        const CLIENTS: usize = 32;
        let t = Instant::now();
        let submitters: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (client, base, key) = (client.clone(), base.clone(), key.clone());
                tokio::spawn(async move {
                    for i in (c..RUNS).step_by(CLIENTS) {
                        let r = client
                            .post(format!("{base}/v1/workflows/chain3/runs"))
                            .bearer_auth(&key)
                            .json(&json!({"input": {"v": i}}))
                            .send()
                            .await
                            .expect("submit");
                        assert_eq!(r.status(), 202);
                    }
                })
            })
            .collect();
        let mut done = 0;
        while done < RUNS {
            let (_, status) = events.recv().await.expect("event");
            assert_eq!(status, RunStatus::Completed);
            done += 1;
        }
        let elapsed = t.elapsed();
        for s in submitters {
            s.await.expect("submitter");
        }
        println!(
            "W3 500 API runs:        {:.0} completed runs/s   ({:.2} s for {RUNS} runs, {CLIENTS} clients; target: >= 2000 runs/s)",
            RUNS as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64()
        );
    });
}
