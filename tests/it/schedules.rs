//! Schedules: kept per workflow through the API, fired by the tick (here
//! called with a chosen clock), each fire time starting its run once.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::common::{TestApp, spawn_app};
use weft::ports::ScheduleStore as _;

fn times(view: &Value) -> Vec<DateTime<Utc>> {
    view["next_fire_times"]
        .as_array()
        .expect("next_fire_times")
        .iter()
        .map(|t| t.as_str().unwrap().parse().unwrap())
        .collect()
}

async fn tick(app: &TestApp, now: DateTime<Utc>) -> weft::app::FireReport {
    let platform = app.platform.as_ref().expect("embedded");
    platform.app.fire_schedules(now).await
}

async fn runs_of(app: &TestApp, wf: &str) -> Vec<Value> {
    let r = app
        .get(&format!("/v1/runs?workflow_id={wf}&limit=200"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

fn echo(id: &str) -> Value {
    json!({"id": id, "name": id, "steps": [
        {"id": "t", "type": "transform", "value": "{{ trigger.n }}"}
    ]})
}

#[tokio::test]
async fn a_schedule_shows_its_fire_times_and_each_starts_one_run() {
    let app = spawn_app().await;
    app.create_workflow(echo("report")).await;
    let r = app
        .post(
            "/v1/workflows/report/schedules",
            json!({"spec": "*/5 * * * *", "timezone": "Europe/Berlin", "input": {"n": 7}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let sid = r.body["id"].as_str().unwrap().to_owned();
    assert!(sid.starts_with("sch_"));
    assert_eq!(r.body["catch_up"], "latest");
    assert_eq!(r.body["overlap"], "allow");
    let next = times(&r.body);
    assert_eq!(next.len(), 5);
    for w in next.windows(2) {
        assert_eq!(w[1] - w[0], Duration::minutes(5));
    }
    assert!(next[0] > Utc::now() && next[0] <= Utc::now() + Duration::minutes(5));

    // Due: one run per fire time, however many ticks see it (a doubled
    // tick, or two at once).
    let at = next[0] + Duration::seconds(1);
    let (a, b) = tokio::join!(tick(&app, at), tick(&app, at));
    assert!(a.started + b.started >= 1, "{a:?} {b:?}");
    tick(&app, at).await;
    let runs = runs_of(&app, "report").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = runs[0]["run_id"].as_str().unwrap().to_owned();
    let done = app.wait_finished(&run).await;
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert_eq!(done["output"], 7);
    let shown = app
        .get(&format!("/v1/workflows/report/schedules/{sid}"))
        .await;
    assert_eq!(shown.body["last_run_id"], run.as_str());
    assert_eq!(times(&shown.body)[0], next[1]);

    // The next fire time, once.
    let at = next[1] + Duration::seconds(1);
    tick(&app, at).await;
    tick(&app, at).await;
    assert_eq!(runs_of(&app, "report").await.len(), 2);

    // Paused: no fire times, nothing starts; resumed: from now on.
    let r = app
        .call(
            "PATCH",
            &format!("/v1/workflows/report/schedules/{sid}"),
            Some(json!({"paused": true})),
            Some(&app_key(&app)),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["next_fire_times"], json!([]));
    tick(&app, next[4] + Duration::seconds(1)).await;
    assert_eq!(runs_of(&app, "report").await.len(), 2);
    let r = app
        .call(
            "PATCH",
            &format!("/v1/workflows/report/schedules/{sid}"),
            Some(json!({"paused": false, "spec": "rate(1 hour)"})),
            Some(&app_key(&app)),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let hourly = times(&r.body);
    assert_eq!(hourly[1] - hourly[0], Duration::hours(1));

    // Listed, and gone once deleted.
    let listed = app.get("/v1/workflows/report/schedules").await;
    assert_eq!(listed.body["items"].as_array().unwrap().len(), 1);
    let r = app
        .delete(&format!("/v1/workflows/report/schedules/{sid}"))
        .await;
    assert_eq!(r.status, 204);
    let r = app
        .get(&format!("/v1/workflows/report/schedules/{sid}"))
        .await;
    assert_eq!(r.status, 404);
}

fn app_key(app: &TestApp) -> String {
    app.key.clone()
}

#[tokio::test]
async fn missed_fire_times_and_overlaps_follow_their_policies() {
    let app = spawn_app().await;
    app.create_workflow(echo("catchup")).await;
    app.create_workflow(json!({"id": "slow", "name": "slow", "steps": [
        {"id": "ok", "type": "approval", "timeout": "1d"}
    ]}))
    .await;
    let make = |wf: &str, body: Value| {
        let (app, wf) = (&app, wf.to_owned());
        async move {
            let r = app
                .post(&format!("/v1/workflows/{wf}/schedules"), body)
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
            times(&r.body)
        }
    };
    // Three fire times missed: `all` starts each.
    let next = make(
        "catchup",
        json!({"spec": "0 * * * *", "catch_up": "all", "input": {"n": 1}}),
    )
    .await;
    tick(&app, next[2] + Duration::minutes(10)).await;
    assert_eq!(runs_of(&app, "catchup").await.len(), 3);
    // Its workflow archived, the schedule stops at its next fire time.
    assert_eq!(app.delete("/v1/workflows/catchup").await.status, 204);
    tick(&app, next[3] + Duration::minutes(10)).await;
    assert_eq!(runs_of(&app, "catchup").await.len(), 3);
    let platform = app.platform.as_ref().expect("embedded");
    let left = platform
        .store
        .due_schedules(next[4] + Duration::days(400), 100)
        .await
        .unwrap();
    assert!(
        left.iter().all(|s| s.workflow_id.as_str() != "catchup"),
        "a paused schedule is not due: {left:?}"
    );

    // `skip`: a fire time while the last run waits starts nothing.
    let next = make("slow", json!({"spec": "0 * * * *", "overlap": "skip"})).await;
    tick(&app, next[0] + Duration::seconds(5)).await;
    let first = runs_of(&app, "slow").await;
    assert_eq!(first.len(), 1);
    let run = first[0]["run_id"].as_str().unwrap().to_owned();
    app.wait_run(&run, |b| b["status"] == "WAITING").await;
    tick(&app, next[1] + Duration::seconds(5)).await;
    assert_eq!(runs_of(&app, "slow").await.len(), 1, "skipped");
    // Once it has ended, the next one starts.
    let r = app.post(&format!("/v1/runs/{run}/cancel"), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    tick(&app, next[2] + Duration::seconds(5)).await;
    assert_eq!(runs_of(&app, "slow").await.len(), 2);
}

#[tokio::test]
async fn bad_schedules_are_refused_with_their_paths() {
    let app = spawn_app().await;
    app.create_workflow(json!({"id": "typed", "name": "typed",
        "input_schema": {"type": "object", "required": ["n"]},
        "steps": [{"id": "t", "type": "transform", "value": 1}]}))
        .await;
    for (body, path) in [
        (json!({}), "$.spec"),
        (json!({"spec": "61 * * * *"}), "$.spec"),
        (json!({"spec": "* * * * * *"}), "$.spec"),
        (json!({"spec": "rate(5 weeks)"}), "$.spec"),
        (json!({"spec": 5}), "$.spec"),
        (
            json!({"spec": "@daily", "timezone": "Mars/Base"}),
            "$.timezone",
        ),
        (
            json!({"spec": "@daily", "catch_up": "sometimes"}),
            "$.catch_up",
        ),
        (json!({"spec": "@daily", "overlap": 1}), "$.overlap"),
        (json!({"spec": "@daily", "paused": "yes"}), "$.paused"),
        (json!({"spec": "@daily", "every": 1}), "$.every"),
        (json!({"spec": "@daily", "input": {"m": 1}}), "$.input"),
        (
            json!({"spec": "@daily", "input": {"n": 1, "s": "x".repeat(70_000)}}),
            "$.input",
        ),
    ] {
        let r = app
            .post("/v1/workflows/typed/schedules", body.clone())
            .await;
        assert_eq!(r.status, 422, "{body}: {}", r.body);
        let paths = crate::common::error_paths(&r.body);
        assert!(paths.contains(&path), "{body}: {}", r.body);
    }
    let r = app
        .post("/v1/workflows/nope/schedules", json!({"spec": "@daily"}))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    for _ in 0..20 {
        let r = app
            .post(
                "/v1/workflows/typed/schedules",
                json!({"spec": "@daily", "input": {"n": 1}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let r = app
        .post(
            "/v1/workflows/typed/schedules",
            json!({"spec": "@daily", "input": {"n": 1}}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Another workspace sees none of them.
    let other = app.other_workspace().await;
    let listed = app
        .call(
            "GET",
            "/v1/workflows/typed/schedules",
            None,
            Some(&other),
            &[],
        )
        .await;
    assert_eq!(listed.status, 404, "{}", listed.body);
    let sid = app.get("/v1/workflows/typed/schedules").await.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let theirs = app
        .call(
            "DELETE",
            &format!("/v1/workflows/typed/schedules/{sid}"),
            None,
            Some(&other),
            &[],
        )
        .await;
    assert_eq!(theirs.status, 404, "{}", theirs.body);
}
