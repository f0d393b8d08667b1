//! The store contract: behaviour every store adapter must show, run against
//! each adapter (SQLite now, DynamoDB with the AWS deployment). It checks
//! what DynamoDB enforces too: conditional writes, isolation by workspace,
//! pagination that visits every item once.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::*;
use crate::domain::*;

/// The store ports under test.
pub use super::StoreSet as Stores;

pub async fn run_all(s: Stores) {
    workspaces_and_keys(&s).await;
    audit_lists_newest_first_with_filters(&s).await;
    workflows_are_versioned_and_isolated(&s).await;
    workflow_pages_visit_each_once(&s).await;
    workflows_are_found_by_the_events_they_listen_for(&s).await;
    runs_use_conditional_writes(&s).await;
    results_wait_for_the_next_pass(&s).await;
    large_records_round_trip(&s).await;
    runs_list_newest_first_with_filters(&s).await;
    idempotency_keys_are_scoped(&s).await;
    keys_claim_without_a_run(&s).await;
    waiters_are_found_by_event_until_they_expire(&s).await;
    events_are_kept_by_name_and_time(&s).await;
    schedules_are_scoped_conditional_and_found_when_due(&s).await;
    hooks_are_found_by_id_listed_by_workflow_and_counted(&s).await;
    webhook_endpoints_and_deliveries_are_scoped_and_due_in_order(&s).await;
    runs_that_end_are_in_the_outbox_only_where_endpoints_are(&s).await;
    logs_page_in_order(&s).await;
    big_saves_fit_the_write_limits(&s).await;
    secrets_are_write_only_and_isolated(&s).await;
    settings_default_and_isolated(&s).await;
    budgets_reserve_atomically_and_settle(&s).await;
    usage_totals_by_run_day_and_workflow(&s).await;
    cache_entries_expire_and_are_isolated(&s).await;
}

/// Kept events are found by workspace and name, from a time on, oldest
/// first, a limited number at once.
async fn events_are_kept_by_name_and_time(s: &Stores) {
    let (a, b) = (ws(), ws());
    let t0 = Utc::now();
    let ev = |name: &str, id: &str, secs: i64| KeptEvent {
        name: name.into(),
        id: id.into(),
        data: json!({"id": id}),
        at: t0 + Duration::seconds(secs),
        data_omitted: false,
    };
    for (w, e) in [
        (&a, ev("order.paid", "e1", 0)),
        (&a, ev("order.paid", "e2", 5)),
        (&a, ev("order.paid", "e3", 10)),
        (&a, ev("order.shipped", "s1", 5)),
        (&b, ev("order.paid", "b1", 5)),
    ] {
        s.events.keep_event(w, &e).await.unwrap();
    }
    let ids = |v: Vec<KeptEvent>| -> Vec<String> { v.into_iter().map(|e| e.id).collect() };
    let since = |w: &WorkspaceId, name: &'static str, secs: i64, limit: usize| {
        let w = w.clone();
        async move {
            s.events
                .events_since(&w, name, t0 + Duration::seconds(secs), limit)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        ids(since(&a, "order.paid", 0, 10).await),
        ["e1", "e2", "e3"]
    );
    assert_eq!(ids(since(&a, "order.paid", 3, 10).await), ["e2", "e3"]);
    assert_eq!(ids(since(&a, "order.paid", 0, 2).await), ["e1", "e2"]);
    assert_eq!(ids(since(&a, "order.shipped", 0, 10).await), ["s1"]);
    assert_eq!(ids(since(&b, "order.paid", 0, 10).await), ["b1"]);
    assert!(since(&b, "order.shipped", 0, 10).await.is_empty());
    let kept = since(&a, "order.paid", 10, 10).await;
    assert_eq!(kept[0], ev("order.paid", "e3", 10));
    // Kept once per id: a repeat answers when the first came.
    // (Times as stores keep them: to the microsecond.)
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    let again = ev("order.paid", "e2", 60);
    assert_eq!(
        micros(s.events.keep_event(&a, &again).await.unwrap()),
        micros(t0 + Duration::seconds(5))
    );
    assert_eq!(
        ids(since(&a, "order.paid", 0, 10).await),
        ["e1", "e2", "e3"]
    );
    let new = ev("order.paid", "e4", 60);
    assert_eq!(
        micros(s.events.keep_event(&a, &new).await.unwrap()),
        micros(new.at)
    );
}

/// Live workflows are found by the events their latest version listens
/// for, in their workspace only.
async fn workflows_are_found_by_the_events_they_listen_for(s: &Stores) {
    let (a, b) = (ws(), ws());
    let version = |ws: &WorkspaceId, id: &str, n: u32, events: &[&str]| {
        let triggers: Vec<serde_json::Value> = events.iter().map(|e| json!({"event": e})).collect();
        WorkflowVersion {
            workspace_id: ws.clone(),
            id: WorkflowId::from_string(id),
            version: n,
            name: id.into(),
            definition: json!({"id": id, "name": id, "triggers": triggers, "steps": []}),
            created_at: Utc::now(),
            archived_at: None,
            created_by: None,
        }
    };
    let ids = |found: Vec<WorkflowSummary>| -> Vec<String> {
        found.into_iter().map(|w| w.id.to_string()).collect()
    };
    s.workflows
        .create_workflow(&version(&a, "orders", 1, &["order.created", "order.paid"]))
        .await
        .unwrap();
    s.workflows
        .create_workflow(&version(&a, "audit", 1, &["order.created"]))
        .await
        .unwrap();
    s.workflows
        .create_workflow(&version(&a, "quiet", 1, &[]))
        .await
        .unwrap();
    s.workflows
        .create_workflow(&version(&b, "orders", 1, &["order.created"]))
        .await
        .unwrap();
    let listening = |w: WorkspaceId, e: &'static str| async move {
        s.workflows.workflows_listening(&w, e, 100).await.unwrap()
    };
    assert_eq!(
        ids(listening(a.clone(), "order.created").await),
        ["audit", "orders"]
    );
    assert_eq!(ids(listening(a.clone(), "order.paid").await), ["orders"]);
    assert!(listening(a.clone(), "nobody").await.is_empty());
    assert_eq!(
        ids(listening(b.clone(), "order.paid").await),
        Vec::<String>::new()
    );
    // A new version that no longer listens is not found for it.
    s.workflows
        .add_version(&version(&a, "orders", 2, &["order.shipped"]), false)
        .await
        .unwrap();
    assert_eq!(ids(listening(a.clone(), "order.created").await), ["audit"]);
    assert!(listening(a.clone(), "order.paid").await.is_empty());
    assert_eq!(ids(listening(a.clone(), "order.shipped").await), ["orders"]);
    // Archived: not found.
    assert!(
        s.workflows
            .archive_workflow(&a, &WorkflowId::from_string("audit"), Utc::now())
            .await
            .unwrap()
    );
    assert!(listening(a.clone(), "order.created").await.is_empty());
}

async fn settings_default_and_isolated(s: &Stores) {
    let (a, b) = (ws(), ws());
    assert_eq!(
        s.settings.get_settings(&a).await.unwrap(),
        WorkspaceSettings::default()
    );
    let mut set = WorkspaceSettings {
        monthly_budget_usd: Some(d(25.0)),
        ..Default::default()
    };
    set.prices.insert(
        "my-model".into(),
        ModelPrice {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        },
    );
    s.settings.put_settings(&a, &set).await.unwrap();
    assert_eq!(s.settings.get_settings(&a).await.unwrap(), set);
    assert_eq!(
        s.settings.get_settings(&b).await.unwrap(),
        WorkspaceSettings::default()
    );
    set.monthly_budget_usd = None;
    s.settings.put_settings(&a, &set).await.unwrap();
    assert_eq!(s.settings.get_settings(&a).await.unwrap(), set);
}

/// Dollars, as the stores keep them (whole micro-dollars).
fn d(dollars: f64) -> Usd {
    Usd::from_dollars(dollars).expect("an amount in range")
}

fn charge(ws: &WorkspaceId, run: &RunId, step: &str, try_index: u32) -> Charge {
    Charge {
        workspace_id: ws.clone(),
        run_id: run.clone(),
        workflow_id: WorkflowId::from_string("wf_a"),
        step_key: step.into(),
        attempt: 1,
        try_index,
        provider: "openai".into(),
        model: "gpt-4o".into(),
        at: Utc::now(),
    }
}

fn cost(usd: f64) -> Usage {
    Usage {
        calls: 1,
        input_tokens: 100,
        output_tokens: 10,
        cost_usd: d(usd),
        ..Default::default()
    }
}

async fn budgets_reserve_atomically_and_settle(s: &Stores) {
    let (a, b) = (ws(), ws());
    let (r1, r2) = (RunId::generate(), RunId::generate());
    let caps = Caps {
        run_usd: Some(d(1.0)),
        month_usd: Some(d(1.5)),
    };
    assert_eq!(
        s.usage
            .reserve(&charge(&a, &r1, "x", 0), d(0.6), &caps)
            .await
            .unwrap(),
        Ok(())
    );
    // The open reservation counts: 0.6 + 0.6 passes the run's cap.
    assert_eq!(
        s.usage
            .reserve(&charge(&a, &r1, "y", 0), d(0.6), &caps)
            .await
            .unwrap(),
        Err(CapHit::Run {
            cap_usd: d(1.0),
            spent_usd: d(0.6)
        })
    );
    // Settled for less than reserved: the difference is free again.
    s.usage
        .settle(&charge(&a, &r1, "x", 0), &cost(0.1))
        .await
        .unwrap();
    assert_eq!(
        s.usage
            .reserve(&charge(&a, &r1, "y", 0), d(0.6), &caps)
            .await
            .unwrap(),
        Ok(())
    );
    // The month counts every run of the workspace: 0.1 + 0.6 + 0.9 > 1.5.
    match s
        .usage
        .reserve(&charge(&a, &r2, "x", 0), d(0.9), &caps)
        .await
        .unwrap()
    {
        Err(CapHit::Month { cap_usd, spent_usd }) => {
            assert_eq!(cap_usd, d(1.5));
            // Exact: 0.1 settled + 0.6 reserved.
            assert_eq!(spent_usd, d(0.7));
        }
        other => panic!("expected the monthly cap, got {other:?}"),
    }
    // Another workspace has its own month.
    assert_eq!(
        s.usage
            .reserve(&charge(&b, &r2, "x", 0), d(0.9), &caps)
            .await
            .unwrap(),
        Ok(())
    );
    // Without caps anything goes.
    assert_eq!(
        s.usage
            .reserve(&charge(&a, &r2, "z", 0), d(100.0), &Caps::default())
            .await
            .unwrap(),
        Ok(())
    );
}

async fn usage_totals_by_run_day_and_workflow(s: &Stores) {
    let a = ws();
    let (r1, r2) = (RunId::generate(), RunId::generate());
    s.usage
        .settle(&charge(&a, &r1, "x", 0), &cost(0.25))
        .await
        .unwrap();
    s.usage
        .settle(&charge(&a, &r1, "x", 1), &cost(0.5))
        .await
        .unwrap();
    // Settling the same call again replaces it.
    s.usage
        .settle(&charge(&a, &r1, "x", 1), &cost(0.5))
        .await
        .unwrap();
    let hit = Usage {
        calls: 1,
        cost_saved_usd: d(0.25),
        cache_hits: 1,
        ..Default::default()
    };
    let mut other = charge(&a, &r2, "x", 0);
    other.workflow_id = WorkflowId::from_string("wf_b");
    s.usage.settle(&other, &hit).await.unwrap();

    let run = s.usage.run_usage(&a, &r1).await.unwrap();
    assert_eq!(run.calls, 2);
    assert_eq!(run.input_tokens, 200);
    assert_eq!(run.output_tokens, 20);
    assert_eq!(run.cost_usd, d(0.75));
    assert_eq!(
        s.usage.run_usage(&ws(), &r1).await.unwrap(),
        Usage::default()
    );

    let today = Utc::now().date_naive();
    let rows = s.usage.usage_by_day(&a, today, today).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].workflow_id.as_str(), "wf_a");
    assert_eq!(rows[0].usage.calls, 2);
    assert_eq!(rows[1].workflow_id.as_str(), "wf_b");
    assert_eq!(rows[1].usage.cache_hits, 1);
    assert_eq!(rows[1].usage.cost_saved_usd, d(0.25));
    let yesterday = today - Duration::days(1);
    assert!(
        s.usage
            .usage_by_day(&a, yesterday, yesterday)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn cache_entries_expire_and_are_isolated(s: &Stores) {
    let (a, b) = (ws(), ws());
    let now = Utc::now();
    let v = json!({"response": "hi"});
    s.cache
        .put_cached(&a, "k1", &v, now + Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        s.cache.cached(&a, "k1", now).await.unwrap(),
        Some(v.clone())
    );
    assert_eq!(s.cache.cached(&b, "k1", now).await.unwrap(), None);
    assert_eq!(
        s.cache
            .cached(&a, "k1", now + Duration::hours(2))
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.cache.cached(&a, "k2", now).await.unwrap(), None);
}

async fn secrets_are_write_only_and_isolated(s: &Stores) {
    let (a, b) = (ws(), ws());
    // A secret looked for before it exists is found as soon as it is set
    // (no remembered miss).
    let late = ws();
    assert_eq!(s.secrets.get_secret(&late, "LATE").await.unwrap(), None);
    s.secrets.put_secret(&late, "LATE", "here").await.unwrap();
    assert_eq!(
        s.secrets
            .get_secret(&late, "LATE")
            .await
            .unwrap()
            .as_deref(),
        Some("here")
    );
    let first = s
        .secrets
        .put_secret(&a, "API_KEY", "s3cret-1")
        .await
        .unwrap();
    s.secrets.put_secret(&a, "OTHER", "o").await.unwrap();
    assert_eq!(
        s.secrets
            .get_secret(&a, "API_KEY")
            .await
            .unwrap()
            .as_deref(),
        Some("s3cret-1")
    );
    let again = s
        .secrets
        .put_secret(&a, "API_KEY", "s3cret-2")
        .await
        .unwrap();
    assert_eq!(again.created_at, first.created_at);
    assert!(again.updated_at >= first.updated_at);
    assert_eq!(
        s.secrets
            .get_secret(&a, "API_KEY")
            .await
            .unwrap()
            .as_deref(),
        Some("s3cret-2")
    );
    let names: Vec<String> = s
        .secrets
        .list_secrets(&a)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["API_KEY", "OTHER"]);
    assert_eq!(s.secrets.get_secret(&b, "API_KEY").await.unwrap(), None);
    assert!(s.secrets.list_secrets(&b).await.unwrap().is_empty());
    assert!(!s.secrets.delete_secret(&b, "API_KEY").await.unwrap());
    assert!(s.secrets.delete_secret(&a, "API_KEY").await.unwrap());
    assert_eq!(s.secrets.get_secret(&a, "API_KEY").await.unwrap(), None);
}

fn ws() -> WorkspaceId {
    WorkspaceId::generate()
}

fn version(ws: &WorkspaceId, id: &str, v: u32) -> WorkflowVersion {
    WorkflowVersion {
        workspace_id: ws.clone(),
        id: WorkflowId::from_string(id),
        version: v,
        name: format!("{id} v{v}"),
        definition: json!({"name": id, "steps": [{"id": "a", "type": "transform"}], "v": v}),
        created_at: Utc::now(),
        archived_at: None,
        created_by: None,
    }
}

/// A new run of `workflow` (PENDING, revision 1).
pub fn run(ws: &WorkspaceId, workflow: &str) -> RunRecord {
    RunRecord {
        workspace_id: ws.clone(),
        id: RunId::generate(),
        workflow_id: WorkflowId::from_string(workflow),
        workflow_version: 1,
        status: RunStatus::Pending,
        input: json!({"x": 1}),
        output: None,
        error: None,
        created_at: Utc::now(),
        started_at: None,
        finished_at: None,
        wake_at: None,
        budget_usd: None,
        revision: 1,
        lease: None,
        state_bytes: 0,
        io_bytes: 0,
    }
}

/// A save with as many changed steps as the store's limit allows, plus
/// many more that were only cancelled (a failed map's iterations), is
/// written whole.
async fn big_saves_fit_the_write_limits(s: &Stores) {
    let w = ws();
    let mut r = run(&w, "wf_big");
    s.runs.create_run(&r, None).await.unwrap();
    let live = s.runs.write_limits().max_steps.unwrap_or(40);
    let mut steps = Vec::new();
    for i in 0..live {
        let mut st = StepRecord::new(format!("m.{i}.a"), "transform");
        st.status = StepStatus::Succeeded;
        st.output = Some(json!(i));
        steps.push(st);
    }
    for i in live..live + 150 {
        let mut st = StepRecord::new(format!("m.{i}.a"), "transform");
        st.status = StepStatus::Cancelled;
        st.reason = Some("map `m` failed".into());
        steps.push(st);
    }
    // A writer that read an older revision writes none of it, not even
    // the cancellations a store may write apart from the rest.
    let mut stale = r.clone();
    stale.revision = 3;
    assert!(matches!(
        save(s, &stale, steps.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.runs.get_steps(&w, &r.id).await.unwrap().is_empty());
    r.revision = 2;
    r.status = RunStatus::Failed;
    save(s, &r, steps).await.unwrap();
    let stored = s.runs.get_steps(&w, &r.id).await.unwrap();
    assert_eq!(stored.len(), live + 150);
    assert_eq!(
        stored
            .iter()
            .filter(|st| st.status == StepStatus::Cancelled)
            .count(),
        150
    );
}

/// Runs whose lease ran out are found through the index of active runs;
/// finished runs, runs without a lease and runs whose lease holds are not.
pub async fn stalled_runs_are_found(s: &Stores, index: &dyn StalledRuns) {
    let w = ws();
    let now = Utc::now();
    let leased = |minutes: i64| Lease {
        owner: Some("arn:exec".into()),
        until: now + Duration::minutes(minutes),
        generation: 1,
        events: 0,
        sweeps: 0,
    };
    let mut gone = run(&w, "wf_s");
    gone.lease = Some(leased(-10));
    let mut older = run(&w, "wf_s");
    older.lease = Some(leased(-20));
    let mut held = run(&w, "wf_s");
    held.lease = Some(leased(10));
    let mut done = run(&w, "wf_s");
    done.lease = Some(leased(-10));
    let free = run(&w, "wf_s");
    for r in [&gone, &older, &held, &done, &free] {
        s.runs.create_run(r, None).await.unwrap();
    }
    done.status = RunStatus::Completed;
    done.revision = 2;
    save(s, &done, Vec::new()).await.unwrap();

    let found = index.stalled_runs(now, 100).await.unwrap();
    let ids: Vec<&RunId> = found.iter().map(|(_, r)| r).collect();
    assert_eq!(ids, [&older.id, &gone.id], "oldest lease first");
    assert!(found.iter().all(|(ws, _)| *ws == w));
    assert_eq!(index.stalled_runs(now, 1).await.unwrap().len(), 1);

    // A renewed lease takes the run out; so does its end.
    gone.lease = Some(leased(30));
    gone.revision = 2;
    save(s, &gone, Vec::new()).await.unwrap();
    older.status = RunStatus::Failed;
    older.revision = 2;
    save(s, &older, Vec::new()).await.unwrap();
    assert!(index.stalled_runs(now, 100).await.unwrap().is_empty());
    // Held leases show up once they run out.
    let later = index
        .stalled_runs(now + Duration::hours(1), 100)
        .await
        .unwrap();
    assert_eq!(later.len(), 2, "{later:?}");
}

async fn workspaces_and_keys(s: &Stores) {
    let w = Workspace {
        id: ws(),
        name: "acme".into(),
        created_at: Utc::now(),
    };
    s.workspaces.create_workspace(&w).await.unwrap();
    assert_eq!(
        s.workspaces.get_workspace(&w.id).await.unwrap(),
        Some(w.clone())
    );
    assert_eq!(s.workspaces.get_workspace(&ws()).await.unwrap(), None);

    let key = ApiKeyRecord {
        id: ApiKeyId::generate(),
        workspace_id: w.id.clone(),
        name: "ci".into(),
        role: Role::Owner,
        key_hash: format!("hash-{}", RunId::generate()),
        prefix: "weft_abc".into(),
        workflows: Some(vec![WorkflowId::from_string("wf_a")]),
        expires_at: None,
        rotated_from: None,
        replaced_by: None,
        rate_limit: None,
        created_at: Utc::now(),
        last_used_at: None,
    };
    assert!(s.api_keys.insert_api_key(&key, 2).await.unwrap());
    assert!(matches!(
        s.api_keys.insert_api_key(&key, 2).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.api_keys.find_api_key(&key.key_hash).await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(s.api_keys.find_api_key("nope").await.unwrap(), None);

    // Listed per workspace, bounded, touched, expired, deleted.
    let second = ApiKeyRecord {
        id: ApiKeyId::generate(),
        key_hash: format!("hash-{}", RunId::generate()),
        workflows: None,
        ..key.clone()
    };
    assert!(s.api_keys.insert_api_key(&second, 2).await.unwrap());
    let third = ApiKeyRecord {
        id: ApiKeyId::generate(),
        key_hash: format!("hash-{}", RunId::generate()),
        ..key.clone()
    };
    assert!(!s.api_keys.insert_api_key(&third, 2).await.unwrap());
    assert_eq!(
        s.api_keys.find_api_key(&third.key_hash).await.unwrap(),
        None
    );
    let other = ws();
    assert!(s.api_keys.list_api_keys(&other).await.unwrap().is_empty());
    assert_eq!(s.api_keys.get_api_key(&other, &key.id).await.unwrap(), None);
    assert_eq!(
        s.api_keys.delete_api_key(&other, &key.id).await.unwrap(),
        KeyChange::NotFound
    );
    let used = Utc::now();
    s.api_keys
        .touch_api_key(&w.id, &key.id, used)
        .await
        .unwrap();
    let listed = s.api_keys.list_api_keys(&w.id).await.unwrap();
    assert_eq!(listed.len(), 2);
    let first = listed.iter().find(|k| k.id == key.id).unwrap();
    assert_eq!(
        first.last_used_at.map(|t| t.timestamp_micros()),
        Some(used.timestamp_micros())
    );
    // Both are owner keys without an expiry: one may get one, and then
    // the other is the last that lasts.
    let until = Utc::now() + chrono::Duration::hours(1);
    let change = |ws: WorkspaceId, id: ApiKeyId, at| {
        let keys = s.api_keys.clone();
        async move { keys.set_api_key_expiry(&ws, &id, at, None).await.unwrap() }
    };
    assert_eq!(
        change(w.id.clone(), key.id.clone(), until).await,
        KeyChange::Done
    );
    assert_eq!(
        change(other.clone(), key.id.clone(), until).await,
        KeyChange::NotFound
    );
    assert_eq!(
        change(w.id.clone(), second.id.clone(), until).await,
        KeyChange::LastOwner
    );
    assert_eq!(
        s.api_keys.delete_api_key(&w.id, &second.id).await.unwrap(),
        KeyChange::LastOwner
    );
    // The earliest end stands.
    let later = until + chrono::Duration::hours(1);
    assert_eq!(
        change(w.id.clone(), key.id.clone(), later).await,
        KeyChange::Done
    );
    let found = s
        .api_keys
        .find_api_key(&key.key_hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        found.expires_at.map(|t| t.timestamp_micros()),
        Some(until.timestamp_micros())
    );
    assert_eq!(
        s.api_keys.delete_api_key(&w.id, &key.id).await.unwrap(),
        KeyChange::Done
    );
    assert_eq!(
        s.api_keys.delete_api_key(&w.id, &key.id).await.unwrap(),
        KeyChange::NotFound
    );
    assert_eq!(s.api_keys.find_api_key(&key.key_hash).await.unwrap(), None);
    // The freed place takes a key again; with another lasting owner key
    // the first may go.
    assert!(s.api_keys.insert_api_key(&third, 2).await.unwrap());
    assert_eq!(
        s.api_keys.delete_api_key(&w.id, &second.id).await.unwrap(),
        KeyChange::Done
    );
}

async fn audit_lists_newest_first_with_filters(s: &Stores) {
    let (a, b) = (ws(), ws());
    let mut made = Vec::new();
    for (actor, action) in [
        ("key:key_1", "key.created"),
        ("key:key_2", "secret.updated"),
        ("key:key_1", "key.deleted"),
        ("run:run_1/call", "secret.read"),
    ] {
        let mut e = AuditEntry::new(&a, actor.into(), action.into(), "/v1/x".into());
        e.ip = Some("127.0.0.1".into());
        s.audit.append_audit(&e).await.unwrap();
        made.push(e);
    }
    s.audit
        .append_audit(&AuditEntry::new(
            &b,
            "key:key_9".into(),
            "key.created".into(),
            "/v1/y".into(),
        ))
        .await
        .unwrap();
    let list = |f: AuditFilter, page: PageRequest| {
        let (audit, a) = (s.audit.clone(), a.clone());
        async move { audit.list_audit(&a, &f, &page).await.unwrap() }
    };
    let all = list(AuditFilter::default(), PageRequest::first(10)).await;
    let newest_first: Vec<AuditEntry> = made.iter().rev().cloned().collect();
    assert_eq!(all.items, newest_first);
    assert_eq!(all.next_cursor, None);
    let keys = list(
        AuditFilter {
            action: Some("key.".into()),
            ..Default::default()
        },
        PageRequest::first(10),
    )
    .await;
    assert_eq!(keys.items, vec![made[2].clone(), made[0].clone()]);
    let one = list(
        AuditFilter {
            actor: Some("key:key_1".into()),
            action: Some("key.deleted".into()),
            since: Some(made[0].at),
            until: Some(Utc::now() + Duration::seconds(1)),
        },
        PageRequest::first(10),
    )
    .await;
    assert_eq!(one.items, vec![made[2].clone()]);
    // Pages visit each once.
    let mut seen = Vec::new();
    let mut page = PageRequest::first(1);
    loop {
        let p = list(AuditFilter::default(), page.clone()).await;
        seen.extend(p.items);
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
}

async fn workflows_are_versioned_and_isolated(s: &Stores) {
    let (a, b) = (ws(), ws());
    let id = WorkflowId::from_string("wf_x");
    s.workflows
        .create_workflow(&version(&a, "wf_x", 1))
        .await
        .unwrap();
    assert!(matches!(
        s.workflows.create_workflow(&version(&a, "wf_x", 1)).await,
        Err(StoreError::Conflict(_))
    ));
    // The same id in another workspace is another workflow.
    s.workflows
        .create_workflow(&version(&b, "wf_x", 1))
        .await
        .unwrap();

    s.workflows
        .add_version(&version(&a, "wf_x", 2), false)
        .await
        .unwrap();
    // A writer that read version 1 loses.
    assert!(matches!(
        s.workflows
            .add_version(&version(&a, "wf_x", 2), false)
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        s.workflows
            .add_version(&version(&a, "wf_x", 4), false)
            .await,
        Err(StoreError::Conflict(_))
    ));

    let latest = s
        .workflows
        .get_workflow(&a, &id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.version, 2);
    let first = s
        .workflows
        .get_workflow(&a, &id, Some(1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.definition["v"], 1);
    assert_eq!(
        s.workflows.get_workflow(&a, &id, Some(9)).await.unwrap(),
        None
    );
    assert_eq!(
        s.workflows
            .get_workflow(&b, &id, None)
            .await
            .unwrap()
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        s.workflows.get_workflow(&ws(), &id, None).await.unwrap(),
        None
    );

    let listed = s
        .workflows
        .list_workflows(&a, &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].latest_version, 2);

    assert!(
        s.workflows
            .archive_workflow(&a, &id, Utc::now())
            .await
            .unwrap()
    );
    assert!(
        !s.workflows
            .archive_workflow(&a, &id, Utc::now())
            .await
            .unwrap()
    );
    assert!(
        s.workflows
            .list_workflows(&a, &PageRequest::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let archived = s
        .workflows
        .get_workflow(&a, &id, Some(1))
        .await
        .unwrap()
        .unwrap();
    assert!(archived.archived_at.is_some());
    assert!(matches!(
        s.workflows
            .add_version(&version(&a, "wf_x", 3), false)
            .await,
        Err(StoreError::Conflict(_))
    ));
    // Archiving in one workspace leaves the other's alone.
    let others = s
        .workflows
        .list_workflows(&b, &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(others.items.len(), 1);
    // An archived workflow's id is taken up again by its next version.
    s.workflows
        .add_version(&version(&a, "wf_x", 3), true)
        .await
        .unwrap();
    let revived = s
        .workflows
        .get_workflow(&a, &id, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((revived.version, revived.archived_at), (3, None));
    assert_eq!(
        s.workflows
            .list_workflows(&a, &PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(matches!(
        s.workflows.add_version(&version(&a, "wf_x", 4), true).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.workflows
            .list_workflows(&b, &PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

async fn workflow_pages_visit_each_once(s: &Stores) {
    let w = ws();
    for i in 0..7 {
        s.workflows
            .create_workflow(&version(&w, &format!("wf_{i}"), 1))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut page = PageRequest::first(3);
    loop {
        let p = s.workflows.list_workflows(&w, &page).await.unwrap();
        assert!(p.items.len() <= 3);
        seen.extend(p.items.into_iter().map(|x| x.id.to_string()));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (0..7).map(|i| format!("wf_{i}")).collect();
    assert_eq!(seen, expected);
}

async fn runs_use_conditional_writes(s: &Stores) {
    let w = ws();
    let mut r = run(&w, "wf_a");
    assert_eq!(
        s.runs.create_run(&r, None).await.unwrap(),
        CreateRun::Created
    );
    assert!(matches!(
        s.runs.create_run(&r, None).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(s.runs.get_run(&w, &r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(
        s.runs.get_run(&ws(), &r.id).await.unwrap(),
        None,
        "other workspaces cannot read it"
    );

    let mut step = StepRecord::new("a", "transform");
    step.status = StepStatus::Succeeded;
    step.output = Some(json!({"ok": true}));
    r.status = RunStatus::Running;
    r.revision = 2;
    let write = RunWrite {
        run: r.clone(),
        steps: vec![step.clone()],
        logs: vec![LogEntry::new(LogLevel::Info, Some("a"), "succeeded")],
    };
    s.runs.save_run(&write).await.unwrap();
    // A second writer that read revision 1 must lose, and change nothing.
    let mut stale = write.clone();
    stale.run.status = RunStatus::Cancelled;
    stale.steps[0].status = StepStatus::Cancelled;
    assert!(matches!(
        s.runs.save_run(&stale).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.runs.get_run(&w, &r.id).await.unwrap().unwrap().status,
        RunStatus::Running
    );
    assert_eq!(
        s.runs.get_steps(&w, &r.id).await.unwrap(),
        vec![step.clone()]
    );
    assert!(s.runs.get_steps(&ws(), &r.id).await.unwrap().is_empty());

    // Writing a step again replaces it.
    step.output = Some(json!({"ok": false}));
    r.revision = 3;
    save(s, &r, vec![step.clone()]).await.unwrap();
    assert_eq!(s.runs.get_steps(&w, &r.id).await.unwrap(), vec![step]);

    // A run in another workspace with a guessed id cannot be written.
    let mut foreign = r.clone();
    foreign.workspace_id = ws();
    foreign.revision = 4;
    assert!(matches!(
        save(s, &foreign, vec![]).await,
        Err(StoreError::Conflict(_))
    ));
}

/// Results left for a run's next pass touch nothing else of the run, are
/// read with it (in step key and attempt order), replace a result of the
/// same attempt, stay in their workspace, and go once cleared.
async fn results_wait_for_the_next_pass(s: &Stores) {
    let w = ws();
    let r = run(&w, "wf_results");
    s.runs.create_run(&r, None).await.unwrap();
    let at = Utc::now();
    let result = |key: &str, attempt: u32, ok: bool| PendingResult {
        key: key.to_owned(),
        attempt,
        result: if ok {
            Ok(json!({"status": 200, "body": "x".repeat(300)}))
        } else {
            Err(StepError::transient("http_503", "the server answered 503"))
        },
        finished_at: at,
    };
    s.runs
        .put_result(&w, &r.id, &result("b", 1, true))
        .await
        .unwrap();
    s.runs
        .put_result(&w, &r.id, &result("a", 2, false))
        .await
        .unwrap();
    s.runs
        .put_result(&w, &r.id, &result("a", 1, true))
        .await
        .unwrap();
    // The same attempt again (a retried function, or a failure recorded
    // after its result): the first one stands.
    s.runs
        .put_result(&w, &r.id, &result("a", 2, true))
        .await
        .unwrap();
    s.runs
        .put_result(&w, &r.id, &result("b", 1, false))
        .await
        .unwrap();
    assert!(s.runs.has_result(&w, &r.id, "a", 2).await.unwrap());
    assert!(!s.runs.has_result(&w, &r.id, "a", 3).await.unwrap());
    assert!(!s.runs.has_result(&ws(), &r.id, "a", 2).await.unwrap());

    let stored = s.runs.get_run(&w, &r.id).await.unwrap().unwrap();
    assert_eq!(stored.revision, r.revision, "the run is not written");
    let want = vec![
        result("a", 1, true),
        result("a", 2, false),
        result("b", 1, true),
    ];
    assert_eq!(s.runs.pending_results(&w, &r.id).await.unwrap(), want);
    let (run, steps, results) = s
        .runs
        .load_run_with_results(&w, &r.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((run, steps, results), (stored, vec![], want.clone()));
    assert!(
        s.runs
            .pending_results(&ws(), &r.id)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.runs
            .load_run_with_results(&ws(), &r.id)
            .await
            .unwrap()
            .is_none()
    );
    // Clearing in another workspace removes nothing.
    let all: Vec<(String, u32)> = want.iter().map(|r| (r.key.clone(), r.attempt)).collect();
    s.runs.clear_results(&ws(), &r.id, &all).await.unwrap();
    assert_eq!(s.runs.pending_results(&w, &r.id).await.unwrap(), want);

    // A result left after the pass read them stays when it clears.
    s.runs
        .put_result(&w, &r.id, &result("c", 1, false))
        .await
        .unwrap();
    s.runs.clear_results(&w, &r.id, &all).await.unwrap();
    assert_eq!(
        s.runs.pending_results(&w, &r.id).await.unwrap(),
        vec![result("c", 1, false)]
    );

    // A result that does not read back (nested past what JSON is parsed
    // to) is that attempt's failure; the others still read.
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let mut unreadable = result("d", 1, true);
    unreadable.result = Ok(deep);
    s.runs.put_result(&w, &r.id, &unreadable).await.unwrap();
    let read = s.runs.pending_results(&w, &r.id).await.unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[0], result("c", 1, false));
    assert_eq!((read[1].key.as_str(), read[1].attempt), ("d", 1));
    assert!(
        matches!(&read[1].result, Err(e) if e.code == "result_unreadable"),
        "{:?}",
        read[1].result
    );
    let (_, _, results) = s
        .runs
        .load_run_with_results(&w, &r.id)
        .await
        .unwrap()
        .unwrap();
    let codes = |rs: &[PendingResult]| -> Vec<(String, u32, Option<String>)> {
        rs.iter()
            .map(|r| {
                let code = r.result.as_ref().err().map(|e| e.code.clone());
                (r.key.clone(), r.attempt, code)
            })
            .collect()
    };
    assert_eq!(codes(&results), codes(&read));
}

/// Saves the run at its revision with these steps and no log lines.
async fn save(s: &Stores, run: &RunRecord, steps: Vec<StepRecord>) -> StoreResult<()> {
    s.runs
        .save_run(&RunWrite {
            run: run.clone(),
            steps,
            logs: vec![],
        })
        .await
}

/// A 1 MB step output and a large run input (past DynamoDB's item limit)
/// read back whole, through every read path, and shrink back again.
async fn large_records_round_trip(s: &Stores) {
    let w = ws();
    let mut r = run(&w, "wf_big");
    r.input = json!({"text": "i".repeat(500 * 1024)});
    s.runs.create_run(&r, None).await.unwrap();
    let mut step = StepRecord::new("fetch", "http");
    step.status = StepStatus::Succeeded;
    step.output = Some(json!({"body": "x".repeat(1024 * 1024)}));
    r.revision = 2;
    r.output = step.output.clone();
    save(s, &r, vec![step.clone()]).await.unwrap();
    assert_eq!(s.runs.get_run(&w, &r.id).await.unwrap(), Some(r.clone()));
    assert_eq!(
        s.runs.get_steps(&w, &r.id).await.unwrap(),
        vec![step.clone()]
    );
    let (run, steps) = s.runs.load_run(&w, &r.id).await.unwrap().unwrap();
    assert_eq!((run, steps), (r.clone(), vec![step.clone()]));
    // The run with the records at some keys (missing ones left out).
    let at = |keys: &[&str]| keys.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>();
    assert_eq!(
        s.runs
            .load_run_at(&w, &r.id, &at(&["nope", "fetch"]))
            .await
            .unwrap(),
        Some((r.clone(), vec![step.clone()]))
    );
    assert_eq!(
        s.runs.load_run_at(&w, &r.id, &[]).await.unwrap(),
        Some((r.clone(), vec![]))
    );
    assert!(
        s.runs
            .load_run_at(&ws(), &r.id, &at(&["fetch"]))
            .await
            .unwrap()
            .is_none()
    );
    // Heads leave the output out (its size stays); by key reads it whole.
    let mut head = step.clone();
    head.output = None;
    let mut small = StepRecord::new("small", "transform");
    small.status = StepStatus::Succeeded;
    small.output = Some(json!([1, 2]));
    small.items = Some(vec![json!("a")]);
    small.size = 9;
    r.revision = 3;
    save(s, &r, vec![step.clone(), small.clone()])
        .await
        .unwrap();
    let mut heads = s.runs.get_step_heads(&w, &r.id).await.unwrap();
    heads.sort_by(|a, b| a.key.cmp(&b.key));
    let mut small_head = small.clone();
    (small_head.output, small_head.items) = (None, None);
    assert_eq!(heads, vec![head, small_head]);
    let keys = ["small".to_owned(), "none".to_owned(), "fetch".to_owned()];
    assert_eq!(
        s.runs.get_steps_by_keys(&w, &r.id, &keys).await.unwrap(),
        vec![small.clone(), step.clone()]
    );
    assert_eq!(
        s.runs.get_step(&w, &r.id, "fetch").await.unwrap(),
        Some(step.clone())
    );
    assert_eq!(s.runs.get_step(&w, &r.id, "none").await.unwrap(), None);
    let mut fetch_head = step.clone();
    fetch_head.output = None;
    assert_eq!(
        s.runs.get_step_head(&w, &r.id, "fetch").await.unwrap(),
        Some(fetch_head)
    );
    assert_eq!(s.runs.get_step_head(&w, &r.id, "none").await.unwrap(), None);
    assert_eq!(
        s.runs.get_step_head(&ws(), &r.id, "fetch").await.unwrap(),
        None
    );
    assert_eq!(
        s.runs.get_step(&ws(), &r.id, "fetch").await.unwrap(),
        None,
        "other workspaces cannot read it"
    );
    assert!(
        s.runs
            .get_step_heads(&ws(), &r.id)
            .await
            .unwrap()
            .is_empty()
    );
    let steps = s.runs.get_steps(&w, &r.id).await.unwrap();
    assert_eq!(steps.len(), 2);
    let listed = s
        .runs
        .list_runs(&w, &RunFilter::default(), &PageRequest::first(10))
        .await
        .unwrap();
    // Listed without input and output; the head reads the same.
    let mut head = r.clone();
    (head.input, head.output) = (serde_json::Value::Null, None);
    assert_eq!(listed.items, vec![head.clone()]);
    assert_eq!(s.runs.get_run_head(&w, &r.id).await.unwrap(), Some(head));
    assert_eq!(s.runs.get_run_head(&ws(), &r.id).await.unwrap(), None);
    // Small again: the stored record is small again too.
    r.revision = 4;
    r.input = json!({});
    r.output = None;
    step.output = Some(json!({"body": "small"}));
    save(s, &r, vec![step.clone()]).await.unwrap();
    let (run, mut steps) = s.runs.load_run(&w, &r.id).await.unwrap().unwrap();
    steps.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!((run, steps), (r, vec![step, small]));
}

async fn runs_list_newest_first_with_filters(s: &Stores) {
    let w = ws();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut r = run(&w, if i % 2 == 0 { "wf_even" } else { "wf_odd" });
        if i == 4 {
            r.status = RunStatus::Completed;
        }
        s.runs.create_run(&r, None).await.unwrap();
        ids.push(r.id.clone());
        // Ids order by creation at millisecond precision.
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    s.runs
        .create_run(&run(&ws(), "wf_even"), None)
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let p = s
            .runs
            .list_runs(&w, &RunFilter::default(), &page)
            .await
            .unwrap();
        seen.extend(p.items.into_iter().map(|r| r.id));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);

    let even = RunFilter {
        workflow_id: Some(WorkflowId::from_string("wf_even")),
        ..Default::default()
    };
    assert_eq!(
        s.runs
            .list_runs(&w, &even, &PageRequest::first(10))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let done = RunFilter {
        status: Some(RunStatus::Completed),
        ..Default::default()
    };
    let p = s
        .runs
        .list_runs(&w, &done, &PageRequest::first(10))
        .await
        .unwrap();
    assert_eq!(p.items.len(), 1);
    assert_eq!(p.items[0].id, ids[0]);
}

async fn idempotency_keys_are_scoped(s: &Stores) {
    let (a, b) = (ws(), ws());
    let claim = IdempotencyClaim {
        key: "order-17".into(),
        request_hash: "h1".into(),
        expires_at: Utc::now() + Duration::hours(24),
    };
    let first = run(&a, "wf");
    assert_eq!(
        s.runs.create_run(&first, Some(&claim)).await.unwrap(),
        CreateRun::Created
    );
    let again = run(&a, "wf");
    assert_eq!(
        s.runs.create_run(&again, Some(&claim)).await.unwrap(),
        CreateRun::Existing {
            run_id: first.id.clone(),
            request_hash: "h1".into()
        }
    );
    assert_eq!(
        s.runs.get_run(&a, &again.id).await.unwrap(),
        None,
        "the retry created nothing"
    );
    // Another workspace may use the same key.
    assert_eq!(
        s.runs
            .create_run(&run(&b, "wf"), Some(&claim))
            .await
            .unwrap(),
        CreateRun::Created
    );
    // An expired claim no longer holds.
    let old = IdempotencyClaim {
        key: "old".into(),
        request_hash: "h".into(),
        expires_at: Utc::now() - Duration::seconds(1),
    };
    s.runs.create_run(&run(&a, "wf"), Some(&old)).await.unwrap();
    assert_eq!(
        s.runs.create_run(&run(&a, "wf"), Some(&old)).await.unwrap(),
        CreateRun::Created
    );
}

/// A key claimed for no run (an event's id) holds its request hash in its
/// workspace until it expires, and does not collide with run claims.
async fn keys_claim_without_a_run(s: &Stores) {
    let (a, b) = (ws(), ws());
    let claim = |key: &str, hash: &str, live: bool| IdempotencyClaim {
        key: key.into(),
        request_hash: hash.into(),
        expires_at: Utc::now() + Duration::hours(if live { 24 } else { -1 }),
    };
    assert_eq!(
        s.runs
            .claim(&a, &claim("event e1", "h1", true))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.runs
            .claim(&a, &claim("event e1", "h2", true))
            .await
            .unwrap(),
        Some("h1".to_owned()),
        "held, with the first hash"
    );
    assert_eq!(
        s.runs
            .claim(&b, &claim("event e1", "h2", true))
            .await
            .unwrap(),
        None
    );
    s.runs.claim(&a, &claim("gone", "h1", false)).await.unwrap();
    assert_eq!(
        s.runs.claim(&a, &claim("gone", "h2", true)).await.unwrap(),
        None,
        "an expired claim no longer holds"
    );
    assert_eq!(
        s.runs.claim(&a, &claim("gone", "h3", true)).await.unwrap(),
        Some("h2".to_owned())
    );
}

/// Steps waiting for an event are found by the event's name in their
/// workspace while they wait; writing one again changes nothing.
async fn waiters_are_found_by_event_until_they_expire(s: &Stores) {
    let (a, b) = (ws(), ws());
    let waiter = |run: &str, key: &str, secs: i64| Waiter {
        event: "order.paid".into(),
        run_id: RunId::from_string(run),
        step_key: key.into(),
        expires_at: Utc::now() + Duration::seconds(secs),
    };
    let live = waiter("run_1", "m.3.wait", 3600);
    let other_step = waiter("run_1", "wait", 3600);
    let expired = waiter("run_2", "wait", -5);
    for w in [&live, &other_step, &expired, &live] {
        s.runs.put_waiter(&a, w).await.unwrap();
    }
    let mut other_event = live.clone();
    other_event.event = "order.shipped".into();
    s.runs.put_waiter(&a, &other_event).await.unwrap();
    // Expired ones sorting first take no room from live ones.
    for run in ["run_0a", "run_0b", "run_0c"] {
        s.runs
            .put_waiter(&a, &waiter(run, "wait", -5))
            .await
            .unwrap();
    }
    let found = s.runs.waiters(&a, "order.paid", 2).await.unwrap();
    let keys: Vec<(&str, &str)> = found
        .iter()
        .map(|w| (w.run_id.as_str(), w.step_key.as_str()))
        .collect();
    assert_eq!(keys, [("run_1", "m.3.wait"), ("run_1", "wait")]);
    assert!(
        s.runs
            .waiters(&b, "order.paid", 10)
            .await
            .unwrap()
            .is_empty()
    );
    s.runs.delete_waiter(&a, &live).await.unwrap();
    let found = s.runs.waiters(&a, "order.paid", 10).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].step_key, "wait");
    assert_eq!(
        s.runs.waiters(&a, "order.shipped", 10).await.unwrap().len(),
        1
    );
}

fn schedule(ws: &WorkspaceId, wf: &str, due: Option<DateTime<Utc>>) -> Schedule {
    let now = Utc::now();
    Schedule {
        workspace_id: ws.clone(),
        id: ScheduleId::generate(),
        workflow_id: WorkflowId::from_string(wf),
        spec: "@hourly".into(),
        timezone: "UTC".into(),
        input: json!({"x": 1}),
        paused: due.is_none(),
        catch_up: CatchUp::Latest,
        overlap: Overlap::Allow,
        next_fire_at: due,
        last_fire_at: None,
        last_run_id: None,
        buffered_fire_at: None,
        due_at: due,
        created_at: now,
        updated_at: now,
        revision: 1,
    }
}

/// Schedules are kept per workspace and workflow, written on their
/// revision, and found when due across workspaces, earliest first.
async fn schedules_are_scoped_conditional_and_found_when_due(s: &Stores) {
    let (a, b) = (ws(), ws());
    let now = Utc::now();
    let later = schedule(&a, "wf_s", Some(now - Duration::seconds(10)));
    let sooner = schedule(&b, "wf_s", Some(now - Duration::seconds(60)));
    let future = schedule(&a, "wf_s", Some(now + Duration::hours(1)));
    let paused = schedule(&a, "wf_s", None);
    for sc in [&later, &sooner, &future, &paused] {
        assert!(s.schedules.create_schedule(sc, 10).await.unwrap());
    }
    assert!(matches!(
        s.schedules.create_schedule(&later, 10).await,
        Err(StoreError::Conflict(_))
    ));
    let wf = WorkflowId::from_string("wf_s");
    assert_eq!(
        s.schedules.get_schedule(&a, &wf, &later.id).await.unwrap(),
        Some(later.clone())
    );
    assert_eq!(
        s.schedules.get_schedule(&b, &wf, &later.id).await.unwrap(),
        None
    );
    let mut ids: Vec<ScheduleId> = [&later, &future, &paused]
        .iter()
        .map(|s| s.id.clone())
        .collect();
    ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
    let listed: Vec<ScheduleId> = s
        .schedules
        .list_schedules(&a, &wf)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, ids);
    // Due now: the two past ones, earliest first (the index may hold other
    // tests' schedules: only these are looked at).
    let mine = |v: Vec<Schedule>| -> Vec<ScheduleId> {
        v.into_iter()
            .filter(|x| [&later.id, &sooner.id, &future.id, &paused.id].contains(&&x.id))
            .map(|x| x.id)
            .collect()
    };
    let due = s.schedules.due_schedules(now, 100).await.unwrap();
    assert_eq!(mine(due), vec![sooner.id.clone(), later.id.clone()]);
    // A write on the revision read holds; a second one from it loses.
    let mut moved = later.clone();
    moved.revision = 2;
    moved.due_at = Some(now + Duration::hours(2));
    moved.next_fire_at = moved.due_at;
    s.schedules.save_schedule(&moved).await.unwrap();
    assert!(matches!(
        s.schedules.save_schedule(&moved).await,
        Err(StoreError::Conflict(_))
    ));
    let due = s.schedules.due_schedules(now, 100).await.unwrap();
    assert_eq!(mine(due), vec![sooner.id.clone()]);
    let due = s
        .schedules
        .due_schedules(now + Duration::hours(3), 100)
        .await
        .unwrap();
    assert_eq!(
        mine(due),
        vec![sooner.id.clone(), future.id.clone(), later.id.clone()]
    );
    // A workspace's count holds: none past `most`, and a deletion makes
    // room again.
    let c = ws();
    for _ in 0..2 {
        assert!(
            s.schedules
                .create_schedule(&schedule(&c, "wf_s", None), 2)
                .await
                .unwrap()
        );
    }
    let third = schedule(&c, "wf_s", None);
    assert!(!s.schedules.create_schedule(&third, 2).await.unwrap());
    assert_eq!(
        s.schedules.get_schedule(&c, &wf, &third.id).await.unwrap(),
        None
    );
    let first = s.schedules.list_schedules(&c, &wf).await.unwrap()[0]
        .id
        .clone();
    assert!(s.schedules.delete_schedule(&c, &wf, &first).await.unwrap());
    assert!(!s.schedules.delete_schedule(&c, &wf, &first).await.unwrap());
    assert!(s.schedules.create_schedule(&third, 2).await.unwrap());
    assert!(
        !s.schedules
            .create_schedule(&schedule(&c, "wf_s", None), 2)
            .await
            .unwrap()
    );

    // Deleted: gone from reads and from the due ones.
    assert!(
        s.schedules
            .delete_schedule(&a, &wf, &later.id)
            .await
            .unwrap()
    );
    assert!(
        !s.schedules
            .delete_schedule(&a, &wf, &later.id)
            .await
            .unwrap()
    );
    assert!(
        !s.schedules
            .delete_schedule(&a, &wf, &sooner.id)
            .await
            .unwrap(),
        "another workspace's"
    );
    assert_eq!(
        s.schedules.get_schedule(&a, &wf, &later.id).await.unwrap(),
        None
    );
    let mut gone = moved.clone();
    gone.revision = 3;
    assert!(matches!(
        s.schedules.save_schedule(&gone).await,
        Err(StoreError::Conflict(_))
    ));
    let due = s
        .schedules
        .due_schedules(now + Duration::hours(3), 100)
        .await
        .unwrap();
    assert_eq!(mine(due), vec![sooner.id.clone(), future.id.clone()]);
}

async fn logs_page_in_order(s: &Stores) {
    let w = ws();
    let mut r = run(&w, "wf");
    s.runs.create_run(&r, None).await.unwrap();
    r.revision = 2;
    let logs: Vec<LogEntry> = (0..5)
        .map(|i| LogEntry::new(LogLevel::Info, None, format!("line {i}")))
        .collect();
    s.runs
        .save_run(&RunWrite {
            run: r.clone(),
            steps: vec![],
            logs,
        })
        .await
        .unwrap();
    // A later save with many long lines (more than one item's worth in
    // stores that group lines).
    r.revision = 3;
    let long: Vec<LogEntry> = (5..65)
        .map(|i| {
            LogEntry::new(
                LogLevel::Info,
                None,
                format!("line {i} {}", "x".repeat(1000)),
            )
        })
        .collect();
    s.runs
        .save_run(&RunWrite {
            run: r.clone(),
            steps: vec![],
            logs: long,
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let p = s.runs.list_logs(&w, &r.id, &page).await.unwrap();
        assert!(p.items.len() <= 2);
        seen.extend(p.items.into_iter().map(|l| l.message));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    let numbers: Vec<String> = seen
        .iter()
        .map(|m| m.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        numbers,
        (0..65).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    assert!(
        s.runs
            .list_logs(&ws(), &r.id, &PageRequest::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

fn hook(ws: &WorkspaceId, wf: &str) -> Hook {
    Hook {
        workspace_id: ws.clone(),
        id: HookId::generate(),
        workflow_id: WorkflowId::from_string(wf),
        verification: Verification::Github {
            secret: "gh".into(),
        },
        dedupe: Some("{{ headers['x-id'] }}".into()),
        input: Some(json!({"who": "{{ body.sender }}"})),
        description: None,
        created_at: Utc::now(),
    }
}

/// Hooks are found by their id alone (what a request names), listed per
/// workflow of their workspace only, and at most `most` per workflow,
/// counted with each write (a deleted one frees its place).
async fn hooks_are_found_by_id_listed_by_workflow_and_counted(s: &Stores) {
    let (a, b) = (ws(), ws());
    let wf = WorkflowId::from_string("wf_h");
    let first = hook(&a, "wf_h");
    let second = hook(&a, "wf_h");
    assert!(s.hooks.create_hook(&first, 2).await.unwrap());
    assert!(s.hooks.create_hook(&second, 2).await.unwrap());
    assert!(!s.hooks.create_hook(&hook(&a, "wf_h"), 2).await.unwrap());
    // Another workflow, and another workspace, have their own places.
    assert!(s.hooks.create_hook(&hook(&a, "wf_other"), 2).await.unwrap());
    let theirs = hook(&b, "wf_h");
    assert!(s.hooks.create_hook(&theirs, 2).await.unwrap());
    assert_eq!(
        s.hooks.find_hook(&first.id).await.unwrap(),
        Some(first.clone())
    );
    let mut want = vec![first.id.clone(), second.id.clone()];
    want.sort();
    let listed: Vec<HookId> = s
        .hooks
        .list_hooks(&a, &wf)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(listed, want);
    assert_eq!(
        s.hooks.list_hooks(&b, &wf).await.unwrap(),
        vec![theirs.clone()]
    );
    // Another workspace cannot delete it.
    assert!(!s.hooks.delete_hook(&b, &wf, &first.id).await.unwrap());
    assert!(s.hooks.delete_hook(&a, &wf, &first.id).await.unwrap());
    assert!(!s.hooks.delete_hook(&a, &wf, &first.id).await.unwrap());
    assert_eq!(s.hooks.find_hook(&first.id).await.unwrap(), None);
    assert!(s.hooks.create_hook(&hook(&a, "wf_h"), 2).await.unwrap());
    assert_eq!(
        s.hooks
            .find_hook(&HookId::from_string("hk_unknown"))
            .await
            .unwrap(),
        None
    );
}

fn endpoint(ws: &WorkspaceId) -> Endpoint {
    Endpoint {
        workspace_id: ws.clone(),
        id: EndpointId::generate(),
        url: "https://example.com/hook".into(),
        events: EventType::ALL.to_vec(),
        workflow_ids: Vec::new(),
        description: None,
        rate_limit: None,
        disabled: false,
        disabled_reason: None,
        failing_since: None,
        keys: vec![SigningKey {
            secret_name: "endpoint-key".into(),
            expires_at: None,
        }],
        created_at: Utc::now(),
        updated_at: Utc::now(),
        revision: 1,
    }
}

fn delivery(e: &Endpoint, id: &str, due: Option<DateTime<Utc>>) -> Delivery {
    Delivery {
        workspace_id: e.workspace_id.clone(),
        id: id.into(),
        endpoint_id: e.id.clone(),
        event_type: EventType::RunCompleted,
        run_id: Some(RunId::generate()),
        payload: "{}".into(),
        created_at: Utc::now(),
        status: DeliveryStatus::Pending,
        attempts: Vec::new(),
        round: 0,
        next_attempt_at: due,
        revision: 1,
    }
}

/// Endpoints are counted per workspace and written conditionally;
/// deliveries are made once per id, listed newest first a page at a time,
/// and found when due (earliest first) until they are done.
async fn webhook_endpoints_and_deliveries_are_scoped_and_due_in_order(s: &Stores) {
    let (a, b) = (ws(), ws());
    let e = endpoint(&a);
    assert!(s.webhooks.create_endpoint(&e, 2).await.unwrap());
    assert!(s.webhooks.create_endpoint(&endpoint(&a), 2).await.unwrap());
    assert!(!s.webhooks.create_endpoint(&endpoint(&a), 2).await.unwrap());
    assert!(s.webhooks.create_endpoint(&endpoint(&b), 2).await.unwrap());
    assert_eq!(
        s.webhooks.get_endpoint(&a, &e.id).await.unwrap(),
        Some(e.clone())
    );
    assert_eq!(s.webhooks.get_endpoint(&b, &e.id).await.unwrap(), None);
    assert_eq!(s.webhooks.list_endpoints(&a).await.unwrap().len(), 2);
    let mut changed = e.clone();
    changed.disabled = true;
    changed.revision = 2;
    s.webhooks.save_endpoint(&changed).await.unwrap();
    assert!(matches!(
        s.webhooks.save_endpoint(&changed).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(!s.webhooks.delete_endpoint(&b, &e.id).await.unwrap());

    let now = Utc::now();
    let ids: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "msg_{}",
                RunId::generate().as_str().trim_start_matches("run_")
            ) + &i.to_string()
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let due = Some(now - Duration::seconds(100 - i as i64));
        assert!(
            s.webhooks
                .create_delivery(&delivery(&e, id, due))
                .await
                .unwrap()
        );
    }
    // The same id again makes nothing.
    assert!(
        !s.webhooks
            .create_delivery(&delivery(&e, &ids[0], None))
            .await
            .unwrap()
    );
    let later = delivery(&e, &format!("{}x", ids[4]), Some(now + Duration::hours(1)));
    assert!(s.webhooks.create_delivery(&later).await.unwrap());
    let mine = |v: Vec<Delivery>| -> Vec<String> {
        v.into_iter()
            .filter(|d| d.workspace_id == a)
            .map(|d| d.id)
            .collect()
    };
    assert_eq!(
        mine(s.webhooks.due_deliveries(now, 1000, &[]).await.unwrap()),
        ids
    );
    // Done: no longer due; the stored one is what was written.
    let mut done = s
        .webhooks
        .get_delivery(&a, &e.id, &ids[0])
        .await
        .unwrap()
        .unwrap();
    done.status = DeliveryStatus::Succeeded;
    done.next_attempt_at = None;
    done.revision = 2;
    s.webhooks.save_delivery(&done).await.unwrap();
    assert!(matches!(
        s.webhooks.save_delivery(&done).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        mine(s.webhooks.due_deliveries(now, 1000, &[]).await.unwrap()),
        ids[1..].to_vec()
    );
    assert_eq!(
        s.webhooks.get_delivery(&b, &e.id, &ids[0]).await.unwrap(),
        None
    );
    // A busy workspace's are left out.
    assert!(
        mine(
            s.webhooks
                .due_deliveries(now, 1000, std::slice::from_ref(&a))
                .await
                .unwrap()
        )
        .is_empty()
    );
    // Newest first, two at a time, each once.
    let mut seen = Vec::new();
    let mut page = PageRequest::first(2);
    loop {
        let got = s
            .webhooks
            .list_deliveries(&a, &e.id, None, &page)
            .await
            .unwrap();
        seen.extend(got.items.into_iter().map(|d| d.id));
        match got.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    let mut want: Vec<String> = ids.iter().cloned().chain([later.id.clone()]).collect();
    want.sort();
    want.reverse();
    assert_eq!(seen, want);
    assert!(
        s.webhooks
            .list_deliveries(&b, &e.id, None, &PageRequest::first(10))
            .await
            .unwrap()
            .items
            .is_empty()
    );
    // By status: the one that succeeded; the failed ones (dead letters),
    // newest first a page at a time.
    let by = |status, limit, cursor| {
        let page = PageRequest { limit, cursor };
        let a = a.clone();
        let ep = e.id.clone();
        async move {
            s.webhooks
                .list_deliveries(&a, &ep, Some(status), &page)
                .await
                .unwrap()
        }
    };
    let ok = by(DeliveryStatus::Succeeded, 10, None).await;
    assert_eq!(mine(ok.items), vec![ids[0].clone()]);
    for id in &ids[1..4] {
        let mut d = s
            .webhooks
            .get_delivery(&a, &e.id, id)
            .await
            .unwrap()
            .unwrap();
        d.status = DeliveryStatus::Failed;
        d.next_attempt_at = None;
        d.revision += 1;
        s.webhooks.save_delivery(&d).await.unwrap();
    }
    let first = by(DeliveryStatus::Failed, 2, None).await;
    assert_eq!(mine(first.items), vec![ids[3].clone(), ids[2].clone()]);
    let rest = by(DeliveryStatus::Failed, 2, first.next_cursor).await;
    assert_eq!(mine(rest.items), vec![ids[1].clone()]);
    assert_eq!(rest.next_cursor, None);
    let pending = by(DeliveryStatus::Pending, 10, None).await;
    assert_eq!(mine(pending.items), vec![later.id.clone(), ids[4].clone()]);

    // Sends to an endpoint are counted per second, per endpoint.
    let second = Utc::now().timestamp();
    let take = |ws: &WorkspaceId, at: i64| {
        let (ws, ep) = (ws.clone(), e.id.clone());
        async move { s.webhooks.take_send(&ws, &ep, at, 2).await.unwrap() }
    };
    assert!(take(&a, second).await);
    assert!(take(&a, second).await);
    assert!(!take(&a, second).await);
    assert!(take(&b, second).await, "another workspace counts apart");
    assert!(take(&a, second + 1).await);
}

/// A run's saves put what endpoints may be told of in the outbox when its
/// workspace has an endpoint (and only then): a step that began waiting
/// for an approval, one that failed (on the budget too), the run's end;
/// forgetting takes each out.
async fn runs_that_end_are_in_the_outbox_only_where_endpoints_are(s: &Stores) {
    let (with, without) = (ws(), ws());
    assert!(
        s.webhooks
            .create_endpoint(&endpoint(&with), 5)
            .await
            .unwrap()
    );
    let mut ended = Vec::new();
    for w in [&with, &without] {
        let mut r = run(w, "wf_end");
        s.runs.create_run(&r, None).await.unwrap();
        // A save whose steps wait (an approval: told; a delay: not) and
        // fail (one for the budget).
        let mut approval = StepRecord::new("ok", "approval");
        approval.status = StepStatus::Waiting;
        approval.started_at = Some(Utc::now());
        let mut delay = StepRecord::new("pause", "delay");
        delay.status = StepStatus::Waiting;
        let mut failed = StepRecord::new("ask", "llm");
        failed.status = StepStatus::Failed;
        failed.finished_at = Some(Utc::now());
        failed.error = Some(StepError::permanent(
            crate::domain::webhook::BUDGET_EXCEEDED,
            "the run's budget",
        ));
        r.status = RunStatus::Waiting;
        r.revision = 2;
        s.runs
            .save_run(&RunWrite {
                run: r.clone(),
                steps: vec![approval, delay, failed],
                logs: Vec::new(),
            })
            .await
            .unwrap();
        r.status = RunStatus::Completed;
        r.finished_at = Some(Utc::now());
        r.revision = 3;
        let write = RunWrite {
            run: r.clone(),
            steps: Vec::new(),
            logs: Vec::new(),
        };
        s.runs.save_run(&write).await.unwrap();
        ended.push(r.id);
    }
    let mine = |v: Vec<OutboxEntry>| -> Vec<OutboxEntry> {
        v.into_iter()
            .filter(|e| e.workspace_id == with || e.workspace_id == without)
            .collect()
    };
    let found = mine(s.webhooks.outbox(1000).await.unwrap());
    assert!(
        found
            .iter()
            .all(|e| e.workspace_id == with && e.run_id == ended[0])
    );
    let mut kinds: Vec<(&str, String)> = found
        .iter()
        .flat_map(|e| &e.events)
        .map(|ev| {
            (
                ev.kind(),
                ev.step().map(|s| s.key.clone()).unwrap_or_default(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("budget_exceeded", "ask".to_owned()),
            ("ended", String::new()),
            ("step_failed", "ask".to_owned()),
            ("waiting", "ok".to_owned()),
        ]
    );
    for e in &found {
        s.webhooks.forget_outbox(e).await.unwrap();
        s.webhooks.forget_outbox(e).await.unwrap();
    }
    assert!(mine(s.webhooks.outbox(1000).await.unwrap()).is_empty());
    // The run itself is untouched.
    assert_eq!(
        s.runs
            .get_run(&with, &ended[0])
            .await
            .unwrap()
            .unwrap()
            .status,
        RunStatus::Completed
    );
}
