//! The README's quick start, as a newcomer runs it: `weft dev` on a fresh
//! data directory makes a workspace and a key and prints them, the example
//! workflow runs through the API as shown, and `weft validate` checks files
//! offline.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::common::{TestApp, step};
use serde_json::json;

struct Dev {
    child: Child,
    base: String,
    key: String,
    banner: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `weft dev` as the README does (no key chosen), on a free port.
fn weft_dev(dir: &std::path::Path) -> Dev {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["dev", "--port", "0", "--data-dir"])
        .arg(dir)
        .env_remove("WEFT_DEV_API_KEY")
        .env_remove("WEFT_MASTER_KEY")
        .env("WEFT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weft dev");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut banner = String::new();
    let mut key = None;
    for line in lines.by_ref() {
        let line = line.expect("readable");
        banner.push_str(&line);
        banner.push('\n');
        if let Some(k) = line.strip_prefix("API key (owner): ") {
            key = Some(k.trim().to_owned());
        }
        if line.contains("export WEFT_URL=") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let base = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the banner names the URL")
        .to_owned();
    Dev {
        child,
        base,
        key: key.unwrap_or_else(|| panic!("no key in the banner:\n{banner}")),
        banner,
    }
}

#[tokio::test]
async fn the_quick_start_works_as_written() {
    let dir = tempfile::tempdir().expect("dir");
    let dev = weft_dev(dir.path());
    assert!(
        dev.banner.contains("created a development workspace"),
        "{}",
        dev.banner
    );
    assert!(dev.banner.contains(&format!(
        "export WEFT_URL={} WEFT_KEY={}",
        dev.base, dev.key
    )));
    assert!(dev.key.starts_with("weft_"), "{}", dev.key);
    let app = TestApp::external(&dev.base, &dev.key);

    // store a workflow (version 1)
    let def: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/refund-approval.json"
        ))
        .expect("example"),
    )
    .expect("json");
    let r = app.post("/v1/workflows", def).await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["version"], 1);

    // a small refund runs straight through
    let r = app
        .post(
            "/v1/workflows/refund_approval/runs",
            json!({"input": {"customer": "ada", "amount": 20}}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "PENDING");
    let small = app
        .wait_finished(r.body["run_id"].as_str().expect("run id"))
        .await;
    assert_eq!(small["status"], "COMPLETED", "{small}");
    assert_eq!(
        small["output"],
        json!({"customer": "Ada", "amount": 20, "approved": true, "by": "policy"})
    );

    // a large one waits for a person …
    let big = app
        .start_run("refund_approval", json!({"customer": "bob", "amount": 500}))
        .await;
    let waiting = app.wait_run(&big, |b| b["status"] == "WAITING").await;
    assert_eq!(step(&waiting, "ask_manager")["status"], "waiting");
    // … until the approval step is completed
    let r = app
        .post(
            &format!("/v1/runs/{big}/steps/ask_manager/complete"),
            json!({"output": {"approved": true, "by": "maria"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let done = app.wait_finished(&big).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["output"]["by"], "maria");
    let logs = app.get(&format!("/v1/runs/{big}/logs")).await;
    assert_eq!(logs.status, 200);
    assert!(!logs.body["items"].as_array().expect("items").is_empty());

    // an event starts it too, once per event id
    let event = json!({"name": "refund.requested", "id": "refund-1017",
        "data": {"customer": "cy", "amount": 35}});
    let mut runs = Vec::new();
    for replayed in [false, true] {
        let r = app.post("/v1/events", event.clone()).await;
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(r.body["id"], "refund-1017");
        let started = r.body["runs"].as_array().expect("runs");
        assert_eq!(started.len(), 1, "{}", r.body);
        assert_eq!(started[0]["workflow_id"], "refund_approval");
        assert_eq!(started[0]["replayed"], replayed);
        runs.push(started[0]["run_id"].as_str().expect("run id").to_owned());
    }
    assert_eq!(runs[0], runs[1]);
    let by_event = app.wait_finished(&runs[0]).await;
    assert_eq!(by_event["status"], "COMPLETED", "{by_event}");
    assert_eq!(by_event["output"]["customer"], "Cy");

    // and on a schedule
    let r = app
        .post(
            "/v1/workflows/refund_approval/schedules",
            json!({"spec": "0 9 * * MON-FRI", "timezone": "Europe/Berlin",
                   "input": {"customer": "weekly", "amount": 1}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["next_fire_times"].as_array().map(Vec::len), Some(5));
    assert_eq!(r.body["catch_up"], "latest");

    // A second start on the same directory keeps the workspace and key.
    drop(dev);
    let again = weft_dev(dir.path());
    assert!(
        again.banner.contains("using the development workspace"),
        "{}",
        again.banner
    );
    let app = TestApp::external(&again.base, &again.key);
    assert_eq!(app.get(&format!("/v1/runs/{big}")).await.status, 200);
}

fn validate(file: &std::path::Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .arg("validate")
        .arg(file)
        .output()
        .expect("run weft validate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn weft_validate_checks_definitions_offline() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    for entry in std::fs::read_dir(&examples).expect("examples") {
        let path = entry.expect("entry").path();
        let (ok, out, err) = validate(&path);
        assert!(ok, "{}: {out}{err}", path.display());
        assert!(out.contains("valid ("), "{out}");
    }

    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name": "bad", "steps": [
            {"id": "a", "type": "transform", "inputs": "{{ nope }}"},
            {"id": "b", "type": "teleport"}
        ]}"#,
    )
    .expect("write");
    let (ok, _, err) = validate(&bad);
    assert!(!ok, "a bad definition fails");
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(err.contains("steps[1].type"), "{err}");

    let not_json = dir.path().join("broken.json");
    std::fs::write(&not_json, "{ not json").expect("write");
    let (ok, _, err) = validate(&not_json);
    assert!(!ok);
    assert!(err.contains("is not valid JSON"), "{err}");
    let (ok, _, err) = validate(&dir.path().join("missing.json"));
    assert!(!ok);
    assert!(err.contains("reading"), "{err}");
}
