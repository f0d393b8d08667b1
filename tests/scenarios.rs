//! The scenario suite: each file in tests/scenarios/ is a workflow, an input,
//! actions taken during the run and the expected result. The runner speaks
//! only HTTP, so the same files run against any Weft: the embedded one it
//! starts itself, or another given by WEFT_SCENARIO_URL and
//! WEFT_SCENARIO_KEY (such as the AWS deployment).
//!
//! In a scenario file, `$UPSTREAM` is replaced by the base URL of a real HTTP
//! server the runner starts on 127.0.0.1 (see tests/common/upstream.rs), and
//! `$UNIQUE` by a string unique to this run of the suite; `pad_input: N`
//! adds a `padding` field of N bytes to the input.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{TestApp, spawn_app, step};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios() {
    let app = Arc::new(
        match (
            std::env::var("WEFT_SCENARIO_URL"),
            std::env::var("WEFT_SCENARIO_KEY"),
        ) {
            (Ok(url), Ok(key)) => TestApp::external(&url, &key),
            _ => spawn_app().await,
        },
    );
    let upstream = Arc::new(common::upstream::spawn().await);
    let unique = Arc::new(format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenario dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the scenario suite is missing files");
    let tasks: Vec<_> = files
        .into_iter()
        .map(|f| {
            let (app, upstream, unique) = (app.clone(), upstream.clone(), unique.clone());
            tokio::spawn(async move {
                let name = f
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let text = std::fs::read_to_string(&f)
                    .map_err(|e| format!("{name}: {e}"))?
                    .replace("$UPSTREAM", &upstream)
                    .replace("$UNIQUE", &unique);
                let scenario: Value =
                    serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
                run_scenario(&app, &scenario)
                    .await
                    .map_err(|e| format!("{name}: {e}"))
            })
        })
        .collect();
    let mut failures = Vec::new();
    let mut passed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => passed += 1,
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(format!("scenario panicked: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{passed} scenarios passed");
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

async fn run_scenario(app: &TestApp, s: &Value) -> Result<(), String> {
    let mut def = s["workflow"].clone();
    // The server names the workflow, so a suite can run twice against the
    // same deployment.
    if let Some(m) = def.as_object_mut() {
        m.remove("id");
    }
    let created = app.post("/v1/workflows", def).await;
    check(created.status == 201, || {
        format!("creating the workflow: {} {}", created.status, created.body)
    })?;
    let wf = created.body["id"].as_str().unwrap_or_default().to_owned();

    // `pad_input`: a `padding` field of that many bytes is added to the
    // input (large inputs without a large file).
    let mut input = s["input"].clone();
    if let (Some(n), Some(m)) = (s["pad_input"].as_u64(), input.as_object_mut()) {
        m.insert("padding".into(), json!("x".repeat(n as usize)));
    }
    let started = app
        .post(
            &format!("/v1/workflows/{wf}/runs"),
            json!({ "input": input }),
        )
        .await;
    if let Some(expected) = s.get("start_error") {
        check(
            started.status as u64 == expected["status"].as_u64().unwrap_or(0),
            || {
                format!(
                    "start: expected {} got {} {}",
                    expected["status"], started.status, started.body
                )
            },
        )?;
        let text = started.body.to_string();
        if let Some(needle) = expected["contains"].as_str() {
            check(text.contains(needle), || {
                format!("start error should mention {needle:?}: {text}")
            })?;
        }
        return Ok(());
    }
    check(started.status == 202, || {
        format!("starting the run: {} {}", started.status, started.body)
    })?;
    let run = started.body["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    for action in s["actions"].as_array().cloned().unwrap_or_default() {
        if let Some(w) = action.get("wait_for") {
            let (st, status, run_status) = (
                w["step"].as_str(),
                w["status"].as_str(),
                w["run_status"].as_str(),
            );
            app.wait_run(&run, |b| {
                run_status.is_none_or(|rs| b["status"] == rs)
                    && st.is_none_or(|id| status.is_none_or(|want| step(b, id)["status"] == want))
            })
            .await;
        } else if let Some(id) = action.get("complete").and_then(Value::as_str) {
            let r = app
                .post(
                    &format!("/v1/runs/{run}/steps/{id}/complete"),
                    json!({"output": action["output"]}),
                )
                .await;
            let want = action["expect_status"].as_u64().unwrap_or(200);
            check(r.status as u64 == want, || {
                format!(
                    "completing {id}: expected {want}, got {} {}",
                    r.status, r.body
                )
            })?;
        } else if action.get("cancel").is_some() {
            let r = app.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
            check(r.status == 200, || {
                format!("cancelling: {} {}", r.status, r.body)
            })?;
        } else if let Some(def) = action.get("update_workflow") {
            let mut def = def.clone();
            if let Some(m) = def.as_object_mut() {
                m.remove("id");
            }
            let r = app.put(&format!("/v1/workflows/{wf}"), def).await;
            check(r.status == 200, || {
                format!("updating the workflow: {} {}", r.status, r.body)
            })?;
        } else {
            return Err(format!("unknown action {action}"));
        }
    }

    let done = app.wait_finished(&run).await;
    let expect = &s["expect"];
    check(done["status"] == expect["status"], || {
        format!(
            "status: expected {} got {}: {done}",
            expect["status"], done["status"]
        )
    })?;
    if let Some(out) = expect.get("output") {
        check(&done["output"] == out, || {
            format!("output: expected {out} got {}", done["output"])
        })?;
    }
    if let Some(v) = expect.get("workflow_version") {
        check(&done["workflow_version"] == v, || {
            format!(
                "workflow_version: expected {v} got {}",
                done["workflow_version"]
            )
        })?;
    }
    if let Some(needle) = expect["error_contains"].as_str() {
        let err = done["error"].to_string();
        check(err.contains(needle), || {
            format!("error should mention {needle:?}: {err}")
        })?;
    }
    for (id, want) in expect["steps"].as_object().cloned().unwrap_or_default() {
        let got = &step(&done, &id)["status"];
        check(got == &want, || {
            format!("step {id}: expected {want} got {got}")
        })?;
    }
    for (id, want) in expect["step_outputs"]
        .as_object()
        .cloned()
        .unwrap_or_default()
    {
        let got = &step(&done, &id)["output"];
        check(got == &want, || {
            format!("step {id} output: expected {want} got {got}")
        })?;
    }
    for (id, want) in expect["attempts"].as_object().cloned().unwrap_or_default() {
        let got = step(&done, &id)["attempts"].as_array().map_or(0, Vec::len);
        check(Some(got as u64) == want.as_u64(), || {
            format!("step {id}: expected {want} attempts, got {got}")
        })?;
    }
    // Logs exist for every run.
    let logs = app.get(&format!("/v1/runs/{run}/logs")).await;
    check(
        logs.status == 200 && logs.body["items"].as_array().is_some_and(|l| !l.is_empty()),
        || format!("logs: {}", logs.body),
    )?;
    Ok(())
}
