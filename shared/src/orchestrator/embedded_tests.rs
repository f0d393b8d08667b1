//! The embedded orchestrator when something inside it fails: a bug that
//! panics ends the run as failed instead of leaving it hanging, and an
//! approval completed after its deadline is refused.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::Embedded;
use crate::adapters::sqlite::{Observed, SqliteStore};
use crate::app::{App, AppError, DefinitionCache, create_workspace};
use crate::domain::*;
use crate::ports::*;

struct Panics;

#[async_trait]
impl StepExecutor for Panics {
    async fn execute(&self, _: &StepCall) -> Result<Value, StepError> {
        panic!("an executor bug")
    }
}

async fn finished(app: &App, ws: &WorkspaceId, run: &RunId) -> Value {
    for _ in 0..500 {
        let v = app.get_run(ws, run).await.unwrap();
        if v.run.status.is_terminal() {
            return json!({"status": v.run.status.as_str(), "error": v.run.error});
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the run hangs")
}

async fn setup(
    runs: Arc<dyn RunStore>,
    store: Arc<SqliteStore>,
    executors: HashMap<String, Arc<dyn StepExecutor>>,
    steps: Value,
) -> (App, WorkspaceId, RunId) {
    let defs = Arc::new(DefinitionCache::default());
    let orch = Arc::new(Embedded::new(
        runs.clone(),
        store.clone(),
        store.clone(),
        defs.clone(),
        executors,
    ));
    let mut set = StoreSet::from_one(store.clone());
    set.runs = runs;
    let app = App::new(set, orch, defs);
    let (ws, _) = create_workspace(store.as_ref(), store.as_ref(), "t", None)
        .await
        .unwrap();
    let wf = app
        .create_workflow(&ws, json!({"name": "t", "steps": steps}))
        .await
        .unwrap();
    let (run, _) = app
        .start_run(&ws, &wf.id, crate::app::StartRun::with_input(json!({})))
        .await
        .unwrap();
    (app, ws, run.id)
}

#[tokio::test]
async fn an_executor_that_panics_fails_its_step() {
    let store = Arc::new(SqliteStore::open(Path::new(":memory:")).unwrap());
    let executors = HashMap::from([("http".to_owned(), Arc::new(Panics) as Arc<dyn StepExecutor>)]);
    let (app, ws, run) = setup(
        store.clone(),
        store,
        executors,
        json!([{"id": "call", "type": "http", "url": "http://example.com/"}]),
    )
    .await;
    let done = finished(&app, &ws, &run).await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["error"]["code"], "internal_error", "{done}");
}

#[tokio::test]
async fn a_pass_that_panics_fails_the_run() {
    let store = Arc::new(SqliteStore::open(Path::new(":memory:")).unwrap());
    let runs = Arc::new(Observed::new(store.clone()));
    runs.panic_on_save.store(true, Ordering::SeqCst);
    let (app, ws, run) = setup(
        runs,
        store,
        HashMap::new(),
        json!([{"id": "wait", "type": "delay", "duration": "1h"}]),
    )
    .await;
    let done = finished(&app, &ws, &run).await;
    assert_eq!(done["status"], "FAILED");
    assert_eq!(done["error"]["code"], "internal_error", "{done}");
}

/// Starts nothing: the test drives the run itself.
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

/// A store, an app whose runs nothing drives, and a run of `def` started
/// in a new workspace: the test drives it with `pass`.
struct Manually {
    store: Arc<SqliteStore>,
    defs: Arc<DefinitionCache>,
    app: App,
    ws: WorkspaceId,
    run: RunId,
}

async fn manually(def: Value) -> Manually {
    let store = Arc::new(SqliteStore::open(Path::new(":memory:")).unwrap());
    let defs = Arc::new(DefinitionCache::default());
    let app = App::new(
        StoreSet::from_one(store.clone()),
        Arc::new(Manual),
        defs.clone(),
    );
    let (ws, _) = create_workspace(store.as_ref(), store.as_ref(), "t", None)
        .await
        .unwrap();
    let wf = app.create_workflow(&ws, def).await.unwrap();
    let (run, _) = app
        .start_run(&ws, &wf.id, crate::app::StartRun::with_input(json!({})))
        .await
        .unwrap();
    Manually {
        store,
        defs,
        app,
        ws,
        run: run.id,
    }
}

impl Manually {
    /// One pass of the run, held to `memory` if given.
    async fn pass(
        &self,
        memory: Option<&crate::memory::Budget>,
    ) -> anyhow::Result<Option<super::tick::Ticked>> {
        let stores = super::tick::Stores {
            runs: self.store.as_ref(),
            workflows: self.store.as_ref(),
            definitions: &self.defs,
            events: self.store.as_ref(),
        };
        let driving = super::tick::Driving {
            in_flight: crate::engine::InFlight::Known(&|_, _| false),
            max_dispatch: None,
            holder: None,
            claim: &|_, _| {},
            results: &[],
            inbox: false,
            cache: None,
            memory,
        };
        super::tick::tick(stores, &self.ws, &self.run, &driving).await
    }
}

#[tokio::test]
async fn an_approval_past_its_deadline_is_refused() {
    let m = manually(
        json!({"name": "t", "steps": [{"id": "ok", "type": "approval", "timeout": "1s"}]}),
    )
    .await;
    let (app, ws) = (&m.app, &m.ws);
    let run = m.run.clone();
    let t = m.pass(None).await.unwrap().unwrap();
    assert_eq!(t.run.status, RunStatus::Waiting);
    // The deadline passes; the driver has not looked at the run yet (a
    // late timer, a busy machine).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    match app
        .complete_step(ws, &run, "ok", json!({"approved": true}))
        .await
    {
        Err(AppError::Conflict(m)) => assert!(m.contains("timed out"), "{m}"),
        other => panic!(
            "a late approval was accepted: {:?}",
            other.map(|v| v.run.status)
        ),
    }
}

#[tokio::test]
async fn a_pass_waits_for_room_for_its_runs_state_before_reading_it() {
    let m = manually(json!({"name": "t", "steps": [
        {"id": "big", "type": "transform", "expression": "range(5000) | list"},
        {"id": "ok", "type": "approval", "depends_on": ["big"]}
    ]}))
    .await;
    let (app, ws, store) = (&m.app, &m.ws, &m.store);
    let budget = crate::memory::Budget::new(64 << 20);
    let t = m.pass(Some(&budget)).await.unwrap().unwrap();
    assert_eq!(t.run.status, RunStatus::Waiting);
    // What the run holds is stored with it, known before its steps are read.
    let stored = store.get_run(ws, &m.run).await.unwrap().unwrap();
    assert!(stored.state_bytes > 5000 * 64, "{}", stored.state_bytes);
    assert_eq!(budget.available(), 64 << 20, "the pass gave its room back");
    app.complete_step(ws, &m.run, "ok", json!({}))
        .await
        .unwrap();
    // Other passes hold all but a little of the budget: this one waits...
    let others = budget.take((64 << 20) - 100 * 1024).await.unwrap();
    let pass = m.pass(Some(&budget));
    tokio::pin!(pass);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut pass)
            .await
            .is_err(),
        "the pass went ahead without room"
    );
    // ...and goes on once they are done.
    drop(others);
    let t = pass.await.unwrap().unwrap();
    assert_eq!(t.run.status, RunStatus::Completed);
}

#[tokio::test]
async fn reading_a_large_step_waits_for_room_in_the_read_budget() {
    let m = manually(json!({"name": "t", "steps": [
        {"id": "big", "type": "transform", "expression": "range(20000) | list"},
        {"id": "ok", "type": "approval", "depends_on": ["big"]}
    ]}))
    .await;
    let (app, ws, run) = (&m.app, &m.ws, &m.run);
    m.pass(None).await.unwrap();
    // Other answers hold all but a little of the budget: this read waits
    // (before it reads the step)...
    let all = app.reads.available();
    let others = app.reads.take(all - 64 * 1024).await.unwrap();
    let read = app.get_step(ws, run, "big");
    tokio::pin!(read);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut read)
            .await
            .is_err(),
        "the read went ahead without room"
    );
    // ...and goes on once they are done, holding its room until dropped.
    drop(others);
    let (step, room) = read.await.unwrap();
    assert_eq!(
        step.output
            .as_ref()
            .and_then(|o| o.as_array())
            .map(Vec::len),
        Some(20000)
    );
    assert!(room.is_some());
    assert!(app.reads.available() < all);
    drop(room);
    assert_eq!(app.reads.available(), all);
}
