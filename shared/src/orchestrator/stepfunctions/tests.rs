//! Drives runs the way the state machine does — Plan, then what it says —
//! with the real plan logic, store (SQLite) and HTTP executor. What the
//! machines really do (their state transitions per step) is counted from
//! the execution histories on the emulated stack (`infra/local/measure.py`,
//! which fails when the target is missed).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use super::*;
use crate::adapters::http::{EgressPolicy, HttpExecutor};
use crate::adapters::sqlite::{Observed, SqliteStore};
use crate::app::{App, DefinitionCache};
use crate::domain::{RunStatus, StepStatus, WorkflowId};
use crate::ports::{DriverError, PendingResult, RunDriver, StoreSet};
use crate::ports::{RunStore, StepRequest};

/// The state machine itself starts nothing in these tests.
struct Manual;

#[async_trait]
impl RunDriver for Manual {
    async fn start(&self, _: &WorkspaceId, _: &RunId) -> Result<(), DriverError> {
        Ok(())
    }
    async fn poke(&self, _: &WorkspaceId, _: &RunId) -> Result<(), DriverError> {
        Ok(())
    }
}

struct Names;

/// The Standard machine of these tests.
const DRIVER: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:weft-dag-driver";
/// A Standard execution of it (one driving the run throughout).
const STD_EXEC: &str = "arn:aws:states:us-east-1:123456789012:execution:weft-dag-driver:std";

impl FunctionNames for Names {
    fn function_for(&self, step_type: &str) -> Option<String> {
        (step_type == "http").then(|| "weft-step-http".to_owned())
    }

    fn standard_machine(&self) -> Option<&str> {
        Some(DRIVER)
    }
}

struct Harness {
    app: App,
    store: Arc<SqliteStore>,
    http: HttpExecutor,
    /// The plan function's process: big runs' records kept between passes.
    kept: KeptRecords,
}

impl Harness {
    fn new() -> Self {
        let store = Arc::new(SqliteStore::open(Path::new(":memory:")).unwrap());
        let app = App::new(
            StoreSet::from_one(store.clone()),
            Arc::new(Manual),
            Arc::new(DefinitionCache::default()),
        );
        let policy = EgressPolicy::allowing("127.0.0.0/8").unwrap();
        let http = HttpExecutor::new(policy, store.clone()).unwrap();
        Self {
            app,
            store,
            http,
            kept: KeptRecords::default(),
        }
    }

    fn stores(&self) -> Stores<'_> {
        Stores {
            runs: self.store.as_ref(),
            workflows: self.store.as_ref(),
            definitions: &self.app.definitions,
            events: self.store.as_ref(),
        }
    }

    async fn plan(&self, req: PlanRequest) -> PlanResponse {
        handle(self.stores(), &Names, Some(&self.kept), req, Utc::now())
            .await
            .unwrap()
    }

    /// What a step function does: run the attempt, record the result.
    async fn step_function(&self, t: &Target) {
        assert_eq!(t.function, "weft-step-http");
        run_step(self.stores(), Some(&self.http), &t.call)
            .await
            .unwrap();
    }
}

/// A Plan request as a machine sends it (the Express one with the time its
/// execution started), from the Standard execution `STD_EXEC`.
fn planning(
    ws: &WorkspaceId,
    run: &RunId,
    express_started_at: Option<DateTime<Utc>>,
) -> PlanRequest {
    planning_as(ws, run, STD_EXEC, express_started_at)
}

/// A Plan request from a given execution.
fn planning_as(
    ws: &WorkspaceId,
    run: &RunId,
    execution: &str,
    express_started_at: Option<DateTime<Utc>>,
) -> PlanRequest {
    PlanRequest::Plan {
        workspace_id: ws.clone(),
        run_id: run.clone(),
        execution: execution.to_owned(),
        results: Vec::new(),
        express_started_at,
    }
}

async fn echo_server() -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/echo",
        post(|axum::Json(v): axum::Json<Value>| async move { axum::Json(json!({"echo": v})) }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

#[tokio::test]
async fn the_machine_loop_runs_a_workflow_with_a_crash_a_retry_and_an_approval() {
    let h = Harness::new();
    let base = echo_server().await;
    let ws = WorkspaceId::generate();
    let def = json!({"id": "flow", "name": "flow", "steps": [
        {"id": "a", "type": "transform", "expression": "trigger.n * 2"},
        {"id": "b", "type": "http", "method": "POST", "url": format!("{base}/echo"), "body": {"n": "{{ a }}"},
         "retry": {"max_attempts": 2, "initial_interval": "10ms", "jitter": false}},
        {"id": "c", "type": "approval", "depends_on": ["b"], "timeout": "1h"},
        {"id": "d", "type": "transform", "expression": "b.body.echo.n + c.extra"}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("flow"),
            crate::app::StartRun::with_input(json!({"n": 21})),
        )
        .await
        .unwrap();

    let plan = |ws: &WorkspaceId, run: &RunId| planning(ws, run, None);
    // 1: `a` runs inline; `b` is dispatched alone.
    let r = h.plan(plan(&ws, &run.id)).await;
    assert_eq!(r.next, Next::DispatchOne, "{r:?}");
    // RunStep reads the one step from `step`, RecordFailure gets `dispatch`.
    let one = r.step.clone().unwrap();
    assert_eq!(r.dispatch, vec![one.clone()]);
    assert_eq!(one.call.step_key, "b");
    // The reference is all the state carries; the step function renders
    // the request again from the store.
    let call = tick::prepare_call(h.stores(), &ws, &run.id, "b", 1)
        .await
        .unwrap()
        .unwrap();
    let StepRequest::Http(req) = &call.request else {
        panic!("not an http request: {:?}", call.request);
    };
    assert_eq!(req.body, json!({"n": 42}));
    // Its function crashes: the machine's Catch records the failure, then
    // plans.
    let recorded = handle(
        h.stores(),
        &Names,
        None,
        PlanRequest::RecordFailure {
            workspace_id: ws.clone(),
            run_id: run.id.clone(),
            dispatch: r.dispatch.clone(),
            failure: json!({"Error": "Lambda.Unknown", "Cause": "the function ran out of memory"}),
        },
        Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(recorded.next, Next::Plan);
    let r = h.plan(plan(&ws, &run.id)).await;
    // The step's own policy retries it after its interval.
    assert_eq!(r.next, Next::Sleep, "{r:?}");
    let at = DateTime::parse_from_rfc3339(r.wake_at.as_deref().unwrap()).unwrap();
    tokio::time::sleep(
        (at.with_timezone(&Utc) - Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
    .await;
    let r = h.plan(plan(&ws, &run.id)).await;
    assert_eq!(r.next, Next::DispatchOne, "{r:?}");
    let one = r.step.clone().unwrap();
    assert_eq!(one.call.attempt, 2);
    h.step_function(&one).await;
    // Now the approval waits: a task token, timed out at its deadline.
    let r = h.plan(plan(&ws, &run.id)).await;
    assert_eq!(r.next, Next::WaitEvent, "{r:?}");
    assert!((3500..=3600).contains(&r.wait_seconds), "{r:?}");
    h.app
        .complete_step(&ws, &run.id, "c", json!({"extra": 1}))
        .await
        .unwrap();
    let r = h.plan(plan(&ws, &run.id)).await;
    assert_eq!(r.next, Next::Finished, "{r:?}");

    let view = h.app.get_run(&ws, &run.id).await.unwrap();
    assert_eq!(view.run.status, RunStatus::Completed);
    assert_eq!(view.run.output, Some(json!(43)));
    let b = view.steps.iter().find(|s| s.key == "b").unwrap();
    assert_eq!(b.attempts.len(), 2);
    assert_eq!(
        b.attempts[0].error.as_ref().map(|e| e.code.as_str()),
        Some("function_failed")
    );
}

#[tokio::test]
async fn parallel_io_steps_go_to_a_map_and_its_failures_are_recorded() {
    let h = Harness::new();
    let base = echo_server().await;
    let ws = WorkspaceId::generate();
    let def = json!({"id": "fan", "name": "fan", "steps": [
        {"id": "x", "type": "http", "method": "POST", "url": format!("{base}/echo"), "body": {"i": 1}},
        {"id": "y", "type": "http", "method": "POST", "url": format!("{base}/echo"), "body": {"i": 2}}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("fan"),
            crate::app::StartRun::with_input(json!({})),
        )
        .await
        .unwrap();
    let r = h.plan(planning(&ws, &run.id, None)).await;
    assert_eq!(r.next, Next::Dispatch, "{r:?}");
    assert_eq!(r.dispatch.len(), 2);
    // x's function succeeds; y's fails with a permanent typed error.
    let before = h.store.get_run(&ws, &run.id).await.unwrap().unwrap();
    h.step_function(&r.dispatch[0]).await;
    // x's result waits for the next pass: nothing else of the run is
    // written (its revision stays), so functions ending together never
    // contend for the run.
    let after = h.store.get_run(&ws, &run.id).await.unwrap().unwrap();
    assert_eq!(after.revision, before.revision);
    let pending = h.store.pending_results(&ws, &run.id).await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!((pending[0].key.as_str(), pending[0].attempt), ("x", 1));
    assert!(pending[0].result.is_ok());
    let y = &r.dispatch[1];
    // What Lambda puts in the cause of a function error: its payload.
    let message =
        serde_json::to_string(&StepError::permanent("bad_config", "no such thing")).unwrap();
    let cause = json!({"errorType": "StepFailed", "errorMessage": message}).to_string();
    let results = vec![
        json!({"ok": true}),
        json!({"ok": false, "call": y.call, "failure": {"Error": "StepFailed", "Cause": cause}}),
    ];
    let r = h
        .plan(PlanRequest::Plan {
            workspace_id: ws.clone(),
            run_id: run.id.clone(),
            execution: STD_EXEC.into(),
            results,
            express_started_at: None,
        })
        .await;
    assert_eq!(r.next, Next::Finished, "{r:?}");
    // The pass recorded x's result as of when its attempt ended, and
    // cleared what it recorded.
    let x = h.store.get_step(&ws, &run.id, "x").await.unwrap().unwrap();
    assert_eq!(x.status, StepStatus::Succeeded);
    assert_eq!(x.finished_at, Some(pending[0].finished_at));
    assert!(
        h.store
            .pending_results(&ws, &run.id)
            .await
            .unwrap()
            .is_empty()
    );
    let view = h.app.get_run(&ws, &run.id).await.unwrap();
    assert_eq!(view.run.status, RunStatus::Failed);
    assert_eq!(
        view.run.error.as_ref().map(|e| e.code.as_str()),
        Some("bad_config")
    );
}

#[test]
fn payloads_match_the_state_machine() {
    let req: PlanRequest = serde_json::from_value(json!({
        "action": "plan", "workspace_id": "ws_1", "run_id": "run_1", "execution": STD_EXEC
    }))
    .unwrap();
    assert!(matches!(req, PlanRequest::Plan { results, .. } if results.is_empty()));
    let asl: Value = serde_json::from_str(include_str!(
        "../../../../statemachines/dag-driver.asl.json"
    ))
    .unwrap();
    // Every `next` the plan function can answer has a route.
    let routes: Vec<&str> = asl["States"]["Route"]["Choices"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["StringEquals"].as_str())
        .collect();
    for next in [
        Next::DispatchOne,
        Next::Dispatch,
        Next::Sleep,
        Next::WaitEvent,
        Next::Continue,
        Next::Finished,
    ] {
        let name = serde_json::to_value(next).unwrap();
        assert!(
            routes.contains(&name.as_str().unwrap()),
            "{name} has no route"
        );
    }
    assert_eq!(asl["States"]["Route"]["Default"], "Plan");
    // The fields the machine selects from the answer all exist.
    let answer = serde_json::to_value(PlanResponse {
        workspace_id: WorkspaceId::from_string("ws_1"),
        run_id: RunId::from_string("run_1"),
        next: Next::Sleep,
        revision: 3,
        dispatch: Vec::new(),
        step: None,
        wake_at: Some("2026-01-01T00:00:00.000Z".into()),
        wait_seconds: 0,
        hand_off: false,
        machine: None,
        execution_name: None,
    })
    .unwrap();
    for (field, _) in asl["States"]["Plan"]["ResultSelector"].as_object().unwrap() {
        let name = field.trim_end_matches(".$");
        assert!(answer.get(name).is_some(), "the answer lacks `{name}`");
    }
    // What WaitEvent sends is a `park` request (paths filled in as the
    // machine would).
    let mut park = serde_json::Map::new();
    for (field, v) in asl["States"]["WaitEvent"]["Parameters"]["Payload"]
        .as_object()
        .unwrap()
    {
        let (name, value) = match field.strip_suffix(".$") {
            Some(name) if v == "$$.Task.Token" => (name, json!("token-1")),
            Some(name) => (
                name,
                answer[v.as_str().unwrap().trim_start_matches("$.")].clone(),
            ),
            None => (field.as_str(), v.clone()),
        };
        park.insert(name.to_owned(), value);
    }
    let req: PlanRequest = serde_json::from_value(Value::Object(park)).unwrap();
    assert!(
        matches!(req, PlanRequest::Park { revision: 3, ref task_token, .. } if task_token == "token-1"),
        "{req:?}"
    );
}

fn answer(
    next: Next,
    dispatch_timeout_secs: Option<f64>,
    wake_in_secs: Option<i64>,
) -> PlanResponse {
    let dispatch: Vec<Target> = dispatch_timeout_secs
        .map(|t| {
            let call = StepRef {
                workspace_id: WorkspaceId::from_string("ws_1"),
                run_id: RunId::from_string("run_1"),
                step_key: "b".into(),
                attempt: 1,
            };
            vec![Target {
                function: "weft-step-http".into(),
                call,
                timeout_secs: t as u64,
            }]
        })
        .unwrap_or_default();
    PlanResponse {
        workspace_id: WorkspaceId::from_string("ws_1"),
        run_id: RunId::from_string("run_1"),
        next,
        revision: 1,
        step: dispatch.first().cloned(),
        dispatch,
        wake_at: wake_in_secs.map(|s| {
            (Utc::now() + chrono::Duration::seconds(s))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
        wait_seconds: 0,
        hand_off: false,
        machine: None,
        execution_name: None,
    }
}

#[test]
fn the_express_machine_keeps_short_work_and_hands_off_the_rest() {
    let now = Utc::now();
    let ago = |s: i64| now - chrono::Duration::seconds(s);
    let off = |a: &PlanResponse, started| leaves_express(a, started, now);
    // Just started: steps and a short sleep stay; waits and long sleeps go.
    assert!(!off(&answer(Next::DispatchOne, Some(60.0), None), now));
    assert!(!off(&answer(Next::Sleep, None, Some(30)), now));
    assert!(!off(&answer(Next::Finished, None, None), now));
    assert!(!off(&answer(Next::Plan, None, None), now));
    assert!(off(&answer(Next::Sleep, None, Some(90)), now));
    assert!(off(&answer(Next::WaitEvent, None, None), now));
    // A step whose timeout could outlast the budget goes, whenever it is.
    assert!(off(&answer(Next::Dispatch, Some(300.0), None), now));
    // Late in the execution: what could cross its end goes.
    assert!(off(&answer(Next::DispatchOne, Some(60.0), None), ago(200)));
    assert!(!off(&answer(Next::DispatchOne, Some(30.0), None), ago(200)));
    assert!(off(&answer(Next::Sleep, None, Some(30)), ago(220)));
    assert!(off(
        &answer(Next::Plan, None, None),
        ago(EXPRESS_BUDGET_SECS)
    ));
    assert!(!off(
        &answer(Next::Finished, None, None),
        ago(EXPRESS_BUDGET_SECS)
    ));
}

#[tokio::test]
async fn a_run_on_the_express_machine_is_handed_off_when_it_must_wait() {
    let h = Harness::new();
    let base = echo_server().await;
    let ws = WorkspaceId::generate();
    let def = json!({"id": "flow", "name": "flow", "steps": [
        {"id": "b", "type": "http", "method": "POST", "url": format!("{base}/echo"), "body": {"n": 1}},
        {"id": "c", "type": "approval", "depends_on": ["b"], "timeout": "1h"}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("flow"),
            crate::app::StartRun::with_input(json!({})),
        )
        .await
        .unwrap();
    const FAST: &str = "arn:aws:states:us-east-1:123456789012:express:weft-dag-fast:run:0c7e1b2d";
    let express = |ws: &WorkspaceId, run: &RunId| planning_as(ws, run, FAST, Some(Utc::now()));
    let r = h.plan(express(&ws, &run.id)).await;
    assert_eq!((r.next, r.hand_off), (Next::DispatchOne, false), "{r:?}");
    h.step_function(r.step.as_ref().unwrap()).await;
    let r = h.plan(express(&ws, &run.id)).await;
    assert_eq!((r.next, r.hand_off), (Next::WaitEvent, true), "{r:?}");
    // What the Standard machine starts with is this answer: its Route
    // carries it out (WaitEvent reads `revision` and `wait_seconds`).
    assert!((3500..=3600).contains(&r.wait_seconds), "{r:?}");
    let name = r.execution_name.clone().unwrap();
    assert_eq!(name, format!("{}-1", run.id));
    assert_eq!(r.machine.as_deref(), Some(DRIVER));
    // The answer's revision is the run's as written with the hand-off (the
    // park compares it).
    let stored = h.store.get_run(&ws, &run.id).await.unwrap().unwrap();
    assert_eq!(r.revision, stored.revision);
    // The execution it names already holds the run; the Express one no
    // longer does.
    let standard = lease::execution_arn(DRIVER, &name);
    assert!(lease::holds(&stored.lease.unwrap(), &standard));
    let r = h.plan(express(&ws, &run.id)).await;
    assert_eq!(r.next, Next::Finished, "{r:?}");
    // The Standard machine's own Plans never hand off.
    let r = h.plan(planning_as(&ws, &run.id, &standard, None)).await;
    assert_eq!((r.next, r.hand_off), (Next::WaitEvent, false), "{r:?}");
}

#[test]
fn the_fast_machine_is_the_driver_plus_the_hand_off() {
    let std: Value = serde_json::from_str(include_str!(
        "../../../../statemachines/dag-driver.asl.json"
    ))
    .unwrap();
    let fast: Value =
        serde_json::from_str(include_str!("../../../../statemachines/dag-fast.asl.json")).unwrap();
    let (s, f) = (&std["States"], &fast["States"]);
    for state in ["RunStep", "RecordFailure", "RunSteps"] {
        assert_eq!(s[state], f[state], "{state} differs between the machines");
    }
    assert_eq!(s["Sleep"]["TimestampPath"], f["Sleep"]["TimestampPath"]);
    // Plan is the driver's Plan, telling when the execution started and
    // selecting `hand_off`.
    for state in ["Plan", "PlanAfterMap"] {
        let mut plan = f[state].clone();
        let payload = plan["Parameters"]["Payload"].as_object_mut().unwrap();
        assert_eq!(
            payload.remove("express_started_at.$"),
            Some(json!("$$.Execution.StartTime"))
        );
        let selected = plan["ResultSelector"].as_object_mut().unwrap();
        assert_eq!(
            selected.remove("hand_off.$"),
            Some(json!("$.Payload.hand_off"))
        );
        assert_eq!(plan, s[state], "{state} differs between the machines");
    }
    // The fast Route hands off first, and every wait goes; Express
    // executions cannot take task tokens.
    let choices = f["Route"]["Choices"].as_array().unwrap();
    assert_eq!(choices[0]["Variable"], "$.hand_off");
    assert_eq!(choices[0]["Next"], "HandOff");
    let wait = choices
        .iter()
        .find(|c| c["StringEquals"] == "wait_event")
        .unwrap();
    assert_eq!(wait["Next"], "HandOff");
    assert!(!fast.to_string().contains("waitForTaskToken"));
    // The hand-off starts the driver, named after the run, with the answer,
    // and the driver carries an answer out before planning again.
    let hand_off = &f["HandOff"]["Parameters"];
    assert_eq!(hand_off["StateMachineArn.$"], "$.machine");
    assert_eq!(hand_off["Name.$"], "$.execution_name");
    assert_eq!(hand_off["Input.$"], "$");
    let next = &s["ContinueAsNew"]["Parameters"];
    assert_eq!(next["StateMachineArn.$"], "$.machine");
    assert_eq!(next["Name.$"], "$.execution_name");
    assert_eq!(std["StartAt"], "Resume");
    assert_eq!(s["Resume"]["Choices"][0]["Variable"], "$.next");
    assert_eq!(s["Resume"]["Choices"][0]["Next"], "Route");
    assert_eq!(s["Resume"]["Default"], "Plan");
}

/// An echo server that counts the calls it gets.
async fn counting_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::post;
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = n.clone();
    let app = axum::Router::new().route(
        "/count",
        post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                axum::Json(json!({"ok": true}))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, n)
}

/// An at-least-once start drives a run twice over: the second execution
/// finds the run held and stops, so each step runs once.
#[tokio::test]
async fn two_executions_never_drive_one_run() {
    let h = Harness::new();
    let (base, calls) = counting_server().await;
    let ws = WorkspaceId::generate();
    let def = json!({"id": "once", "name": "once", "steps": [
        {"id": "a", "type": "http", "method": "POST", "url": format!("{base}/count")},
        {"id": "b", "type": "http", "method": "POST", "url": format!("{base}/count"), "depends_on": ["a"]}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("once"),
            crate::app::StartRun::with_input(json!({})),
        )
        .await
        .unwrap();
    const A: &str = "arn:aws:states:us-east-1:123456789012:express:weft-dag-fast:x:aaaa";
    const B: &str = "arn:aws:states:us-east-1:123456789012:express:weft-dag-fast:x:bbbb";
    let r = h.plan(planning_as(&ws, &run.id, A, None)).await;
    assert_eq!(r.next, Next::DispatchOne);
    // The duplicate arrives while `a` runs: it stops, handing out nothing.
    let dup = h.plan(planning_as(&ws, &run.id, B, None)).await;
    assert_eq!(dup.next, Next::Finished, "{dup:?}");
    assert!(dup.dispatch.is_empty());
    h.step_function(r.step.as_ref().unwrap()).await;
    let dup = h.plan(planning_as(&ws, &run.id, B, None)).await;
    assert_eq!(dup.next, Next::Finished, "{dup:?}");
    let r = h.plan(planning_as(&ws, &run.id, A, None)).await;
    assert_eq!(r.next, Next::DispatchOne);
    h.step_function(r.step.as_ref().unwrap()).await;
    let r = h.plan(planning_as(&ws, &run.id, A, None)).await;
    assert_eq!(r.next, Next::Finished);
    let view = h.app.get_run(&ws, &run.id).await.unwrap();
    assert_eq!(view.run.status, RunStatus::Completed);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(view.run.lease.is_none(), "a finished run holds no lease");
}

/// A Standard execution whose history is nearly full hands the run to a
/// fresh one at an answer that hands nothing out.
#[tokio::test]
async fn a_long_run_continues_in_a_fresh_execution() {
    let h = Harness::new();
    let ws = WorkspaceId::generate();
    let def = json!({"id": "long", "name": "long", "steps": [
        {"id": "wait", "type": "delay", "duration": "1h"}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("long"),
            crate::app::StartRun::with_input(json!({})),
        )
        .await
        .unwrap();
    let r = h.plan(planning(&ws, &run.id, None)).await;
    assert_eq!(r.next, Next::Sleep);
    tick::update_lease(h.store.as_ref(), &ws, &run.id, |r| {
        r.lease.as_mut().unwrap().events = lease::MAX_EVENTS + 1;
        true
    })
    .await
    .unwrap();
    let r = h.plan(planning(&ws, &run.id, None)).await;
    assert_eq!(r.next, Next::Continue, "{r:?}");
    assert_eq!(r.machine.as_deref(), Some(DRIVER));
    let name = r.execution_name.unwrap();
    let next = lease::execution_arn(DRIVER, &name);
    // The new execution holds the run, with a fresh count; the old one is
    // done with it.
    let r = h.plan(planning(&ws, &run.id, None)).await;
    assert_eq!(r.next, Next::Finished, "{r:?}");
    let r = h.plan(planning_as(&ws, &run.id, &next, None)).await;
    assert_eq!(r.next, Next::Sleep, "{r:?}");
    let stored = h.store.get_run(&ws, &run.id).await.unwrap().unwrap();
    let l = stored.lease.unwrap();
    assert!(lease::holds(&l, &next));
    assert!(l.events < 100, "{l:?}");
}

/// One Plan hands out at most what the machine's Map runs at once; the
/// rest come in later answers.
#[tokio::test]
async fn a_wide_fan_out_is_handed_out_in_waves() {
    let h = Harness::new();
    let base = echo_server().await;
    let ws = WorkspaceId::generate();
    let def = json!({"id": "wide", "name": "wide", "steps": [
        {"id": "m", "type": "map", "items": "{{ range(100) | list }}", "concurrency": 100,
         "step": {"id": "call", "type": "http", "method": "POST", "url": format!("{base}/echo"), "body": {"i": "{{ item }}"}}}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("wide"),
            crate::app::StartRun::with_input(json!({})),
        )
        .await
        .unwrap();
    let mut handed = 0;
    for _ in 0..10 {
        let r = h.plan(planning(&ws, &run.id, None)).await;
        if r.next == Next::Finished {
            break;
        }
        assert!(r.dispatch.len() <= MAX_DISPATCH, "{}", r.dispatch.len());
        // The answer stays small whatever the requests hold.
        assert!(serde_json::to_string(&r).unwrap().len() < 16 * 1024);
        handed += r.dispatch.len();
        for t in &r.dispatch {
            h.step_function(t).await;
        }
    }
    assert_eq!(handed, 100);
    let view = h.app.get_run(&ws, &run.id).await.unwrap();
    assert_eq!(view.run.status, RunStatus::Completed);
}

/// A big run's passes in one process use the records it kept from its last
/// pass (reading only the run and its results), and come to the same end:
/// each step function reads only the records its step's context names.
#[tokio::test]
async fn a_big_runs_records_are_kept_between_passes() {
    let h = Harness::new();
    let base = echo_server().await;
    let ws = WorkspaceId::generate();
    let def = json!({"id": "big", "name": "big", "steps": [
        {"id": "first", "type": "transform", "expression": "trigger.k"},
        {"id": "m", "type": "map", "items": "{{ range(300) | list }}", "concurrency": 300,
         "step": {"id": "call", "type": "http", "method": "POST", "url": format!("{base}/echo"),
                  "body": {"i": "{{ item }}", "k": "{{ first }}"}},
         "output": "{{ call.body.echo.i + call.body.echo.k }}"}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("big"),
            crate::app::StartRun::with_input(json!({"k": 1000})),
        )
        .await
        .unwrap();
    let counting = Observed::new(h.store.clone());
    let stores = Stores {
        runs: &counting,
        workflows: h.store.as_ref(),
        definitions: &h.app.definitions,
        events: h.store.as_ref(),
    };
    let (mut kept_between, mut passes) = (0, 0);
    for _ in 0..20 {
        let req = planning(&ws, &run.id, None);
        let r = handle(stores, &Names, Some(&h.kept), req, Utc::now())
            .await
            .unwrap();
        passes += 1;
        if r.next == Next::Finished {
            break;
        }
        kept_between += usize::from(h.kept.holds(&ws, &run.id));
        for t in &r.dispatch {
            run_step(stores, Some(&h.http), &t.call).await.unwrap();
        }
        // An approval or cancel moves the revision on: the next pass reads
        // the store (a write here stands in for one).
        if kept_between == 2 {
            let mut stored = h.store.get_run(&ws, &run.id).await.unwrap().unwrap();
            stored.revision += 1;
            h.store
                .save_run(&crate::ports::RunWrite {
                    run: stored,
                    steps: vec![],
                    logs: vec![],
                })
                .await
                .unwrap();
        }
    }
    assert!(kept_between >= 4, "kept after {kept_between} passes");
    // Every pass after one that kept the records used them (read no step
    // record), but the one after the revision moved on.
    let whole = counting
        .whole_reads
        .load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(whole, passes - kept_between + 1, "{passes} passes");
    let view = h.app.get_run(&ws, &run.id).await.unwrap();
    assert_eq!(
        view.run.status,
        RunStatus::Completed,
        "{:?}",
        view.run.error
    );
    let want: Vec<i64> = (0..300).map(|i| i + 1000).collect();
    assert_eq!(view.run.output, Some(json!(want)));
    assert!(!h.kept.holds(&ws, &run.id), "a finished run is not kept");
}

/// A step function invoked again for an attempt whose result already waits
/// for the pass (Lambda retried it, or it failed after leaving its result)
/// does not call out again, and the first result stands.
#[tokio::test]
async fn a_step_function_invoked_again_does_not_run_the_attempt_again() {
    let h = Harness::new();
    let (base, calls) = counting_server().await;
    let ws = WorkspaceId::generate();
    let def = json!({"id": "once", "name": "once", "steps": [
        {"id": "call", "type": "http", "method": "POST", "url": format!("{base}/count")}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("once"),
            crate::app::StartRun::with_input(json!({})),
        )
        .await
        .unwrap();
    let r = h.plan(planning(&ws, &run.id, None)).await;
    let one = r.step.clone().unwrap();
    h.step_function(&one).await;
    h.step_function(&one).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    // The state machine's Catch records a failure after the result: dropped.
    handle(
        h.stores(),
        &Names,
        None,
        PlanRequest::RecordFailure {
            workspace_id: ws.clone(),
            run_id: run.id.clone(),
            dispatch: r.dispatch.clone(),
            failure: json!({"Error": "Lambda.Unknown", "Cause": "timed out"}),
        },
        Utc::now(),
    )
    .await
    .unwrap();
    let r = h.plan(planning(&ws, &run.id, None)).await;
    assert_eq!(r.next, Next::Finished, "{r:?}");
    let view = h.app.get_run(&ws, &run.id).await.unwrap();
    assert_eq!(
        view.run.status,
        RunStatus::Completed,
        "{:?}",
        view.run.error
    );
}

/// A pass records at most a write's worth of the results left for it,
/// oldest first (what it then changes waits, so a save stays within the
/// store's limit), and the rest on the next; a result of an attempt later
/// than the records it read stays for the pass that knows that attempt.
#[tokio::test]
async fn a_pass_records_what_fits_one_write_and_leaves_the_rest() {
    let h = Harness::new();
    let base = echo_server().await;
    let ws = WorkspaceId::generate();
    let def = json!({"id": "ten", "name": "ten", "steps": [
        {"id": "m", "type": "map", "items": "{{ range(10) | list }}", "concurrency": 10,
         "step": {"id": "call", "type": "http", "method": "POST", "url": format!("{base}/echo"),
                  "body": {"i": "{{ item }}"}},
         "output": "{{ call.body.echo.i }}"},
        {"id": "after", "type": "transform", "expression": "m | sum"}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("ten"),
            crate::app::StartRun::with_input(json!({})),
        )
        .await
        .unwrap();
    let counting = Observed {
        max_steps: Some(4),
        ..Observed::new(h.store.clone())
    };
    let stores = Stores {
        runs: &counting,
        workflows: h.store.as_ref(),
        definitions: &h.app.definitions,
        events: h.store.as_ref(),
    };
    let plan = || {
        handle(
            stores,
            &Names,
            None,
            planning(&ws, &run.id, None),
            Utc::now(),
        )
    };
    // The first waves start the ten calls, four changed steps a save.
    let mut dispatched = Vec::new();
    while dispatched.len() < 10 {
        let r = plan().await.unwrap();
        dispatched.extend(r.dispatch);
    }
    // A result of an attempt no pass has started yet (another driver's).
    let future = PendingResult {
        key: "m.0.call".into(),
        attempt: 2,
        result: Ok(json!({"status": 200, "body": {"echo": {"i": 0}}})),
        finished_at: Utc::now(),
    };
    h.store.put_result(&ws, &run.id, &future).await.unwrap();
    for t in &dispatched[1..] {
        run_step(stores, Some(&h.http), &t.call).await.unwrap();
    }
    // Nine results wait; a pass records the four that ended first.
    let waiting = h.store.pending_results(&ws, &run.id).await.unwrap();
    let r = plan().await.unwrap();
    assert_ne!(r.next, Next::Finished);
    let left = h.store.pending_results(&ws, &run.id).await.unwrap();
    assert_eq!(left.len(), 6, "{left:?}");
    assert!(left.contains(&future));
    let mut by_end: Vec<_> = waiting.iter().filter(|r| **r != future).collect();
    by_end.sort_by_key(|r| r.finished_at);
    assert!(
        by_end[..4].iter().all(|r| !left.contains(r)),
        "oldest first"
    );
    for _ in 0..10 {
        plan().await.unwrap();
    }
    // Only the later attempt's result is left; `m.0` still runs.
    assert_eq!(
        h.store.pending_results(&ws, &run.id).await.unwrap(),
        vec![future]
    );
    run_step(stores, Some(&h.http), &dispatched[0].call)
        .await
        .unwrap();
    let mut last = plan().await.unwrap();
    for _ in 0..5 {
        if last.next == Next::Finished {
            break;
        }
        last = plan().await.unwrap();
    }
    assert_eq!(last.next, Next::Finished, "{last:?}");
    let largest = counting
        .largest_save
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(largest <= 4, "a save held {largest} changed steps");
    let view = h.app.get_run(&ws, &run.id).await.unwrap();
    assert_eq!(
        view.run.status,
        RunStatus::Completed,
        "{:?}",
        view.run.error
    );
    assert_eq!(view.run.output, Some(json!(45)));
    // The finished step's stale result was cleared with the last pass.
    assert!(
        h.store
            .pending_results(&ws, &run.id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A server answering JSON nested just short of what the executor parses
/// cannot jam the run's inbox (the stored result, wrapped, would nest past
/// what reads back): the attempt fails as too large and the run goes on.
#[tokio::test]
async fn a_deeply_nested_reply_fails_its_attempt_and_not_the_inbox() {
    use axum::routing::get;
    let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
    let app = axum::Router::new().route(
        "/deep",
        get(move || {
            let body = deep.clone();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    let h = Harness::new();
    let ws = WorkspaceId::generate();
    let def = json!({"id": "deep", "name": "deep", "steps": [
        {"id": "x", "type": "http", "method": "GET", "url": format!("{base}/deep")}
    ]});
    h.app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = h
        .app
        .start_run(
            &ws,
            &WorkflowId::from_string("deep"),
            crate::app::StartRun::with_input(json!({})),
        )
        .await
        .unwrap();
    let r = h.plan(planning(&ws, &run.id, None)).await;
    assert_eq!(r.next, Next::DispatchOne, "{r:?}");
    h.step_function(&r.dispatch[0]).await;
    let pending = h.store.pending_results(&ws, &run.id).await.unwrap();
    assert!(
        matches!(&pending[0].result, Err(e) if e.code == "output_too_large"),
        "{pending:?}"
    );
    let r = h.plan(planning(&ws, &run.id, None)).await;
    assert_eq!(r.next, Next::Finished, "{r:?}");
    let x = h.store.get_step(&ws, &run.id, "x").await.unwrap().unwrap();
    assert_eq!(x.status, StepStatus::Failed);
    assert_eq!(
        x.error.as_ref().map(|e| e.code.as_str()),
        Some("output_too_large")
    );
}
