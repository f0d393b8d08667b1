//! The engine benchmark: `cargo bench --bench engine`.
//!
//! Embedded Weft with durable state (a SQLite file in a temp directory):
//!   W1  a 10-step chain of no-op transforms, end-to-end latency over 60 runs
//!   W2  one run fanning out to 50 parallel steps, then a join, over 30 runs
//!   W3  500 runs of a 3-step chain submitted through the HTTP API as fast as
//!       possible by 32 concurrent clients: completed runs per second; then
//!       20,000 (sustained), with the load generator's CPU time (its own
//!       thread, so at most one core)
//!   W4  a 10-step chain of http steps to a local no-op server (each a real
//!       I/O step, recorded before the next starts), over 30 runs
//!   W1, W4 and W3 again in durable mode (`synchronous=FULL`, group commit)
//!   S1  scale: one run mapping N transform items (concurrency 10), for N
//!       from 100 up; time per item, and its ratio to the 100-item run
//!   S2  scale: one run fanning out to N transform steps and a join (up to
//!       999: with the join, the 1,000 steps a workflow may have); time
//!       per step, and its ratio to the 50-step run
//!   S3  scale: one run mapping N http items (concurrency 10) to the no-op
//!       server; time per item, and its ratio to the 100-item run
//! Latency is from the start call to the orchestrator's "finished" event.
//! `WEFT_BENCH_SCALE=0` leaves S1–S3 out; `WEFT_BENCH_MAP_MAX` sets the
//! largest S1 map (default 10000; up to 100000), `WEFT_BENCH_HTTP_MAP_MAX`
//! the largest S3 map (default 1000; up to 10000).

/// The allocator `weft dev` runs with (src/main.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

/// A server that answers every request at once: `{"ok": true}`.
async fn noop_server() -> String {
    use axum::routing::any;
    let app = axum::Router::new().route("/noop", any(|| async { axum::Json(json!({"ok": true})) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn http_chain(n: usize, base: &str) -> Value {
    let steps: Vec<Value> = (0..n)
        .map(|i| {
            let mut s =
                json!({"id": format!("h{i}"), "type": "http", "url": format!("{base}/noop")});
            if i > 0 {
                s["depends_on"] = json!([format!("h{}", i - 1)]);
            }
            s
        })
        .collect();
    json!({"name": format!("http chain {n}"), "steps": steps})
}

fn http_map(n: usize, base: &str) -> Value {
    json!({"name": format!("http map {n}"), "steps": [
        {"id": "m", "type": "map", "items": format!("{{{{ range({n}) | list }}}}"), "concurrency": 10,
         "step": {"id": "h", "type": "http", "url": format!("{base}/noop")}}
    ]})
}

fn map_of(n: usize) -> Value {
    json!({"name": format!("map{n}"), "steps": [
        {"id": "m", "type": "map", "items": format!("{{{{ range({n}) | list }}}}"), "concurrency": 10,
         "step": {"id": "t", "type": "transform", "inputs": {"i": "{{ item }}"}}}
    ]})
}

/// The median time of `runs` runs of `wf` (one after another).
async fn median_run(
    p: &Platform,
    ws: &weft::domain::WorkspaceId,
    wf: &str,
    runs: usize,
) -> Duration {
    let d = latencies(p, ws, wf, runs).await;
    d[d.len() / 2]
}

/// Builds the definition of a scale row's run of size N.
type Build = Box<dyn Fn(usize) -> Value>;

/// Sizes up to the limit an environment variable sets.
fn sizes(all: &[usize], var: &str, default: usize) -> Vec<usize> {
    let max: usize = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    all.iter().copied().filter(|n| *n <= max).collect()
}

/// S1–S3: how the time per item or step grows with a run's size.
async fn scale(p: &Platform, ws: &weft::domain::WorkspaceId, base_url: &str) {
    let url = base_url.to_owned();
    let rows: Vec<(&str, &str, Vec<usize>, Build)> = vec![
        (
            "S1 map",
            "scale_map",
            sizes(&[100, 1_000, 10_000, 100_000], "WEFT_BENCH_MAP_MAX", 10_000),
            Box::new(map_of),
        ),
        (
            "S2 fan-out",
            "scale_fan",
            vec![50, 500, 999],
            Box::new(fan_out),
        ),
        (
            "S3 http map",
            "scale_http",
            sizes(&[100, 1_000, 10_000], "WEFT_BENCH_HTTP_MAP_MAX", 1_000),
            Box::new(move |n| http_map(n, &url)),
        ),
    ];
    for (label, prefix, sizes, build) in rows {
        let mut base = None;
        for n in sizes {
            let id = format!("{prefix}{n}");
            let mut def = build(n);
            def["id"] = json!(id);
            p.app.create_workflow(ws, def).await.expect("workflow");
            let runs = if n <= 1_000 { 5 } else { 1 };
            let t = median_run(p, ws, &id, runs).await;
            let per = t.as_secs_f64() * 1e6 / n as f64;
            let ratio = per / *base.get_or_insert(per);
            println!(
                "{label} of {n:>6}: {:>9.1} ms   {per:>7.1} µs per item   {ratio:>4.2}x the smallest",
                ms(t)
            );
        }
    }
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
            .start_run(ws, &wf, weft::app::StartRun::with_input(json!({"v": i})))
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

/// A platform on a fresh database with the benchmark's workflows.
async fn bench_platform(
    dir: &std::path::Path,
    durability: weft::adapters::sqlite::Durability,
    noop: &str,
) -> (Arc<Platform>, weft::domain::WorkspaceId, String) {
    let config = weft::platform::PlatformConfig {
        egress: weft::adapters::http::EgressPolicy::allowing("127.0.0.0/8").expect("policy"),
        durability,
        // Counted (the limiter runs), never reached.
        rate_limits: weft::domain::RateLimits::generous(),
        ..Default::default()
    };
    let platform = Arc::new(
        Platform::open_with(&dir.join("bench.db"), config)
            .await
            .expect("platform"),
    );
    let (ws, key) = platform
        .create_workspace("bench", None)
        .await
        .expect("workspace");
    for (id, def) in [
        ("chain10", chain(10)),
        ("fan50", fan_out(50)),
        ("chain3", chain(3)),
        ("httpchain10", http_chain(10, noop)),
    ] {
        let mut def = def;
        def["id"] = json!(id);
        platform
            .app
            .create_workflow(&ws, def)
            .await
            .expect("workflow");
    }
    let _ = latencies(&platform, &ws, "chain10", 10).await; // warm-up
    let _ = latencies(&platform, &ws, "httpchain10", 5).await;
    (platform, ws, key)
}

fn report(label: &str, d: &[Duration], target: &str) {
    println!(
        "{label} median {:.2} ms   p95 {:.2} ms   ({} runs; target: {target})",
        ms(percentile(d, 0.5)),
        ms(percentile(d, 0.95)),
        d.len()
    );
}

/// CPU time (user + system) of the calling thread so far, from
/// /proc/thread-self/stat (Linux; in clock ticks of 10 ms).
fn thread_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; `rest` starts at
    // field 3 (the state).
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

/// What a W3 load took: completed runs per second, the wall time, and the
/// CPU time of the load generator.
struct Load {
    rate: f64,
    took: Duration,
    client_cpu: Duration,
}

/// W3: completed runs per second of `runs` runs started through the API by
/// 32 clients. The clients run on a thread of their own (one core at most),
/// so their CPU time is measured apart from the server's.
async fn w3(platform: &Arc<Platform>, key: &str, runs: usize) -> Load {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let router = platform.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let mut events = platform.orchestrator.subscribe_finished();
    const CLIENTS: usize = 32;
    let t = Instant::now();
    let key = key.to_owned();
    let generator = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let cpu0 = thread_cpu();
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client");
            let mut set = tokio::task::JoinSet::new();
            for c in 0..CLIENTS {
                let (client, base, key) = (client.clone(), base.clone(), key.clone());
                set.spawn(async move {
                    for i in (c..runs).step_by(CLIENTS) {
                        let r = client
                            .post(format!("{base}/v1/workflows/chain3/runs"))
                            .bearer_auth(&key)
                            .json(&json!({"input": {"v": i}}))
                            .send()
                            .await
                            .expect("submit");
                        assert_eq!(r.status(), 202);
                    }
                });
            }
            while let Some(r) = set.join_next().await {
                r.expect("submitter");
            }
        });
        thread_cpu() - cpu0
    });
    let mut done = 0;
    while done < runs {
        let (_, status) = events.recv().await.expect("event");
        assert_eq!(status, RunStatus::Completed);
        done += 1;
    }
    let took = t.elapsed();
    let client_cpu = tokio::task::spawn_blocking(move || generator.join().expect("generator"))
        .await
        .expect("join");
    Load {
        rate: runs as f64 / took.as_secs_f64(),
        took,
        client_cpu,
    }
}

fn main() {
    use weft::adapters::sqlite::Durability;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let noop = noop_server().await;
        let dir = tempfile::tempdir().expect("dir");
        let (platform, ws, key) = bench_platform(dir.path(), Durability::Normal, &noop).await;

        let w1 = latencies(&platform, &ws, "chain10", 60).await;
        report("W1 10-step chain:      ", &w1, "median <= 10 ms");
        let w2 = latencies(&platform, &ws, "fan50", 30).await;
        report("W2 50-way fan-out+join:", &w2, "median <= 25 ms");
        let w4 = latencies(&platform, &ws, "httpchain10", 30).await;
        report("W4 10 http steps chain:", &w4, "median <= 10 ms");
        let w = w3(&platform, &key, 500).await;
        let rate = w.rate;
        println!(
            "W3 500 API runs:        {rate:.0} completed runs/s   ({:.2} s, 32 clients; target: >= 2000 runs/s)",
            w.took.as_secs_f64()
        );
        let s = w3(&platform, &key, 20_000).await;
        println!(
            "W3 sustained 20,000:    {:.0} completed runs/s   ({:.2} s; load generator {:.2} s CPU = {:.0}% of one core; target: >= 8000 runs/s)",
            s.rate,
            s.took.as_secs_f64(),
            s.client_cpu.as_secs_f64(),
            100.0 * s.client_cpu.as_secs_f64() / s.took.as_secs_f64()
        );

        // The same with every commit synced to the disk (durable mode).
        let dir_full = tempfile::tempdir().expect("dir");
        let (full, ws_full, key_full) = bench_platform(dir_full.path(), Durability::Full, &noop).await;
        let d1 = latencies(&full, &ws_full, "chain10", 60).await;
        report("W1 durable:            ", &d1, "none; compare W1");
        let d4 = latencies(&full, &ws_full, "httpchain10", 30).await;
        report("W4 durable:            ", &d4, "none; compare W4");
        let d3 = w3(&full, &key_full, 500).await;
        println!(
            "W3 durable:             {:.0} completed runs/s   ({:.2} s; {:.2}x W3; target: within 1.5x)",
            d3.rate,
            d3.took.as_secs_f64(),
            rate / d3.rate
        );
        drop(full);

        if std::env::var("WEFT_BENCH_SCALE").as_deref() != Ok("0") {
            scale(&platform, &ws, &noop).await;
        }
    });
}
