//! The scenario suite: each file in tests/scenarios/ is a workflow, an input,
//! actions taken during the run and the expected result. The runner speaks
//! only HTTP, so the same files run against any Weft: the embedded one it
//! starts itself, or another given by WEFT_SCENARIO_URL and
//! WEFT_SCENARIO_KEY together (such as the AWS deployment); one of the two
//! alone is refused. The runner says which target ran.
//!
//! A scenario file is read strictly: a key it does not know (a misspelt
//! expectation, say) fails the scenario instead of being ignored.
//!
//! In a scenario file, `$UPSTREAM` is replaced by the base URL of a real HTTP
//! server the runner starts on 127.0.0.1 (see tests/common/upstream.rs), and
//! `$UNIQUE` by a string unique to this run of the suite; `pad_input: N`
//! adds a `padding` field of N bytes to the input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::common::{TestApp, spawn_app, step};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

/// One scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    /// What the scenario shows (for the reader).
    #[allow(dead_code)]
    description: String,
    workflow: Value,
    #[serde(default)]
    input: Value,
    pad_input: Option<usize>,
    /// The start itself is refused: the answer expected.
    start_error: Option<StartError>,
    /// The run is started by sending this event (`{"name", "id"}`, the
    /// input as its data) rather than by starting the workflow; the event
    /// is sent twice and must start one run.
    event: Option<Event>,
    /// The run is started by a signed request to a hook of the workflow
    /// (Standard Webhooks, the input as its body) with this message id;
    /// the request is sent twice and must start one run.
    hook: Option<HookCall>,
    /// Events sent (`POST /v1/events`, each accepted) before the run
    /// starts.
    #[serde(default)]
    events_before: Vec<Value>,
    #[serde(default)]
    actions: Vec<Action>,
    expect: Option<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Event {
    name: String,
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HookCall {
    message_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartError {
    status: u16,
    contains: Option<String>,
}

/// What is done while the run is under way, in order.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Action {
    WaitFor {
        wait_for: WaitFor,
    },
    Complete {
        complete: String,
        #[serde(default)]
        output: Value,
        #[serde(default = "ok_status")]
        expect_status: u16,
    },
    Cancel {
        cancel: bool,
    },
    UpdateWorkflow {
        update_workflow: Value,
    },
    /// `POST /v1/events` with this body; it must complete the run's
    /// waiting step.
    SendEvent {
        send_event: Value,
    },
}

fn ok_status() -> u16 {
    200
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitFor {
    step: Option<String>,
    status: Option<String>,
    run_status: Option<String>,
}

/// The run's end as expected: every field given is compared.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    status: String,
    /// Present means compared, even when it is `null`.
    #[serde(default, deserialize_with = "present")]
    output: Option<Value>,
    workflow_version: Option<u64>,
    error_contains: Option<String>,
    #[serde(default)]
    steps: BTreeMap<String, String>,
    #[serde(default)]
    step_outputs: BTreeMap<String, Value>,
    #[serde(default)]
    attempts: BTreeMap<String, usize>,
}

/// A field that is there, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Reads a scenario, naming what in it is unknown or misshapen.
fn parse(text: &str) -> Result<Scenario, String> {
    let raw: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    // Actions are matched by shape, so each is checked against the known
    // keys first, for an error that names the unknown one.
    for action in raw["actions"].as_array().into_iter().flatten() {
        let known = [
            "wait_for",
            "complete",
            "output",
            "expect_status",
            "cancel",
            "update_workflow",
            "send_event",
        ];
        for key in action.as_object().into_iter().flat_map(|m| m.keys()) {
            if !known.contains(&key.as_str()) {
                return Err(format!("unknown key `{key}` in action {action}"));
            }
        }
    }
    serde_json::from_value(raw).map_err(|e| e.to_string())
}

/// Where the suite runs: the environment names another Weft with both
/// variables, or neither (the embedded one).
pub(crate) async fn target() -> (TestApp, String) {
    let url = std::env::var("WEFT_SCENARIO_URL").ok();
    let key = std::env::var("WEFT_SCENARIO_KEY").ok();
    match (url, key) {
        (Some(url), Some(key)) => {
            let app = TestApp::external(&url, &key);
            (app, format!("the Weft at {url}"))
        }
        (None, None) => (spawn_app().await, "embedded Weft".to_owned()),
        (url, _) => panic!(
            "WEFT_SCENARIO_URL and WEFT_SCENARIO_KEY go together; only {} is set",
            if url.is_some() {
                "WEFT_SCENARIO_URL"
            } else {
                "WEFT_SCENARIO_KEY"
            }
        ),
    }
}

#[test]
fn scenario_files_are_read_strictly() {
    let base = r#"{"description": "d", "workflow": {}, "input": {}"#;
    let misspelt = format!(r#"{base}, "expect": {{"status": "COMPLETED", "ouput": 1}}}}"#);
    let e = parse(&misspelt).expect_err("a misspelt expectation");
    assert!(e.contains("ouput"), "{e}");
    let action = format!(
        r#"{base}, "actions": [{{"complete": "a", "outptu": 1}}], "expect": {{"status": "COMPLETED"}}}}"#
    );
    let e = parse(&action).expect_err("a misspelt action key");
    assert!(e.contains("outptu"), "{e}");
    let top = format!(r#"{base}, "expcet": {{"status": "COMPLETED"}}}}"#);
    assert!(parse(&top).expect_err("a misspelt key").contains("expcet"));
    let null_output = format!(r#"{base}, "expect": {{"status": "COMPLETED", "output": null}}}}"#);
    let s = parse(&null_output).expect("valid");
    assert_eq!(s.expect.and_then(|e| e.output), Some(Value::Null));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios() {
    let (app, target) = target().await;
    eprintln!("scenario suite against {target}");
    let app = Arc::new(app);
    let upstream = Arc::new(crate::common::upstream::spawn().await);
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
                let scenario = parse(&text).map_err(|e| format!("{name}: {e}"))?;
                run_scenario(&app, scenario)
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
        "{} scenario(s) failed against {target}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("{passed} scenarios passed against {target}");
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

async fn run_scenario(app: &TestApp, s: Scenario) -> Result<(), String> {
    let mut def = s.workflow;
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
    let mut input = s.input;
    if let (Some(n), Some(m)) = (s.pad_input, input.as_object_mut()) {
        m.insert("padding".into(), json!("x".repeat(n)));
    }
    for ev in &s.events_before {
        let sent = app.post("/v1/events", ev.clone()).await;
        check(sent.status == 202, || {
            format!("sending {ev} before the run: {} {}", sent.status, sent.body)
        })?;
    }
    if let Some(ev) = &s.event {
        return run_by_event(app, s.expect, s.actions, &wf, ev, input).await;
    }
    if let Some(h) = &s.hook {
        return run_by_hook(app, s.expect, s.actions, &wf, h, input).await;
    }
    let started = app
        .post(
            &format!("/v1/workflows/{wf}/runs"),
            json!({ "input": input }),
        )
        .await;
    if let Some(expected) = s.start_error {
        check(started.status == expected.status, || {
            format!(
                "start: expected {} got {} {}",
                expected.status, started.status, started.body
            )
        })?;
        let text = started.body.to_string();
        if let Some(needle) = expected.contains {
            check(text.contains(&needle), || {
                format!("start error should mention {needle:?}: {text}")
            })?;
        }
        return Ok(());
    }
    let expect = s
        .expect
        .ok_or("a scenario that starts a run needs `expect`")?;
    check(started.status == 202, || {
        format!("starting the run: {} {}", started.status, started.body)
    })?;
    let run = started.body["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    follow(app, expect, s.actions, &wf, &run).await
}

/// Starts the run by sending the scenario's event, twice: one run starts.
async fn run_by_event(
    app: &TestApp,
    expect: Option<Expect>,
    actions: Vec<Action>,
    wf: &str,
    ev: &Event,
    data: Value,
) -> Result<(), String> {
    let expect = expect.ok_or("a scenario that starts a run needs `expect`")?;
    let body = json!({"name": ev.name, "id": ev.id, "data": data});
    let mut runs = Vec::new();
    for replayed in [false, true] {
        let sent = app.post("/v1/events", body.clone()).await;
        check(sent.status == 202, || {
            format!("sending the event: {} {}", sent.status, sent.body)
        })?;
        let mine: Vec<&Value> = sent.body["runs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["workflow_id"] == wf)
            .collect();
        check(mine.len() == 1 && mine[0]["replayed"] == replayed, || {
            format!(
                "the event should have started one run of {wf} (replayed: {replayed}): {}",
                sent.body
            )
        })?;
        runs.push(mine[0]["run_id"].as_str().unwrap_or_default().to_owned());
    }
    check(runs[0] == runs[1], || {
        format!("the event sent again started another run: {runs:?}")
    })?;
    follow(app, expect, actions, wf, &runs[0]).await
}

/// Starts the run by a signed request to a new hook of the workflow, sent
/// twice: one run starts, with the body as its input.
async fn run_by_hook(
    app: &TestApp,
    expect: Option<Expect>,
    actions: Vec<Action>,
    wf: &str,
    h: &HookCall,
    input: Value,
) -> Result<(), String> {
    let expect = expect.ok_or("a scenario that starts a run needs `expect`")?;
    let secret = format!("hook_{}", wf.trim_start_matches("wf_"));
    let r = app
        .put(
            &format!("/v1/secrets/{secret}"),
            json!({"value": crate::hooks::WHSEC}),
        )
        .await;
    check(r.status < 300, || {
        format!("storing the hook's secret: {} {}", r.status, r.body)
    })?;
    let r = app
        .post(
            &format!("/v1/workflows/{wf}/hooks"),
            json!({"verify": {"scheme": "standard_webhooks", "secret": secret}}),
        )
        .await;
    check(r.status == 201, || {
        format!("creating the hook: {} {}", r.status, r.body)
    })?;
    let path = r.body["path"].as_str().unwrap_or_default().to_owned();
    let body = input.to_string();
    let headers =
        crate::hooks::standard_headers(&h.message_id, chrono::Utc::now().timestamp(), &body);
    for _ in 0..2 {
        let (status, answer) = crate::hooks::post_raw(app, &path, &body, &headers).await;
        check(status == 202, || {
            format!("calling the hook: {status} {answer}")
        })?;
    }
    let runs = crate::hooks::wait_runs(app, wf, 1).await;
    let run = runs[0]["run_id"].as_str().unwrap_or_default().to_owned();
    follow(app, expect, actions, wf, &run).await?;
    let runs = crate::hooks::runs_of(app, wf).await;
    check(runs.len() == 1, || {
        format!("the message sent twice started {} runs", runs.len())
    })
}

/// Takes the scenario's actions on the run and checks how it ends.
async fn follow(
    app: &TestApp,
    expect: Expect,
    actions: Vec<Action>,
    wf: &str,
    run: &str,
) -> Result<(), String> {
    let run = run.to_owned();
    for action in actions {
        match action {
            Action::WaitFor { wait_for: w } => {
                app.wait_run(&run, |b| {
                    w.run_status.as_ref().is_none_or(|rs| b["status"] == **rs)
                        && w.step.as_ref().is_none_or(|id| {
                            w.status
                                .as_ref()
                                .is_none_or(|want| step(b, id)["status"] == **want)
                        })
                })
                .await;
            }
            Action::Complete {
                complete: id,
                output,
                expect_status: want,
            } => {
                let r = app
                    .post(
                        &format!("/v1/runs/{run}/steps/{id}/complete"),
                        json!({ "output": output }),
                    )
                    .await;
                check(r.status == want, || {
                    format!(
                        "completing {id}: expected {want}, got {} {}",
                        r.status, r.body
                    )
                })?;
            }
            Action::Cancel { cancel } => {
                check(cancel, || "`cancel` is `true` or absent".to_owned())?;
                let r = app.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
                check(r.status == 200, || {
                    format!("cancelling: {} {}", r.status, r.body)
                })?;
            }
            Action::SendEvent { send_event } => {
                let r = app.post("/v1/events", send_event.clone()).await;
                let resumed = r.body["resumed"]
                    .as_array()
                    .is_some_and(|rs| rs.iter().any(|x| x["run_id"] == run.as_str()));
                check(r.status == 202 && resumed, || {
                    format!(
                        "sending {send_event} should resume the run: {} {}",
                        r.status, r.body
                    )
                })?;
            }
            Action::UpdateWorkflow {
                update_workflow: mut def,
            } => {
                if let Some(m) = def.as_object_mut() {
                    m.remove("id");
                }
                let r = app.put(&format!("/v1/workflows/{wf}"), def).await;
                check(r.status == 200, || {
                    format!("updating the workflow: {} {}", r.status, r.body)
                })?;
            }
        }
    }

    let done = app.wait_finished(&run).await;
    check(done["status"] == expect.status, || {
        format!(
            "status: expected {} got {}: {done}",
            expect.status, done["status"]
        )
    })?;
    if let Some(out) = &expect.output {
        check(&done["output"] == out, || {
            format!("output: expected {out} got {}", done["output"])
        })?;
    }
    if let Some(v) = expect.workflow_version {
        check(done["workflow_version"] == v, || {
            format!(
                "workflow_version: expected {v} got {}",
                done["workflow_version"]
            )
        })?;
    }
    if let Some(needle) = &expect.error_contains {
        let err = done["error"].to_string();
        check(err.contains(needle), || {
            format!("error should mention {needle:?}: {err}")
        })?;
    }
    for (id, want) in &expect.steps {
        let got = &step(&done, id)["status"];
        check(got == want.as_str(), || {
            format!("step {id}: expected {want} got {got}")
        })?;
    }
    for (id, want) in &expect.step_outputs {
        let got = &step(&done, id)["output"];
        check(got == want, || {
            format!("step {id} output: expected {want} got {got}")
        })?;
    }
    for (id, want) in &expect.attempts {
        let got = step(&done, id)["attempts"].as_array().map_or(0, Vec::len);
        check(got == *want, || {
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
