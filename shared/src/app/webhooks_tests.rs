//! An endpoint's health: failing deliveries mark it failing, a success
//! clears that, and one that fails for `FAILING_DAYS_TO_DISABLE` days is
//! disabled and the workspace's other endpoints are told.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use super::{App, EndpointFields, create_workspace};
use crate::adapters::sqlite::SqliteStore;
use crate::domain::*;
use crate::ports::*;

struct Nothing;

#[async_trait]
impl RunDriver for Nothing {
    async fn start(&self, _: &WorkspaceId, _: &RunId) -> Result<(), DriverError> {
        Ok(())
    }
    async fn poke(&self, _: &WorkspaceId, _: &RunId) -> Result<(), DriverError> {
        Ok(())
    }
}

/// A receiver answering every request with `status`.
async fn receiver(status: u16) -> String {
    let code = axum::http::StatusCode::from_u16(status).unwrap();
    let app = axum::Router::new().route("/", axum::routing::post(move || async move { code }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/")
}

async fn app() -> (Arc<App>, Arc<SqliteStore>, WorkspaceId) {
    let store = Arc::new(
        SqliteStore::open(Path::new(":memory:"))
            .unwrap()
            .with_master_key(crate::adapters::sqlite::MasterKey::generate()),
    );
    let egress = crate::adapters::http::EgressPolicy::allowing("127.0.0.0/8").unwrap();
    let app = App::new(
        StoreSet::from_one(store.clone()),
        Arc::new(Nothing),
        Default::default(),
    )
    .with_egress(egress);
    let (ws, _) = create_workspace(store.as_ref(), store.as_ref(), "t", None)
        .await
        .unwrap();
    (Arc::new(app), store, ws)
}

fn pending(ws: &WorkspaceId, ep: &EndpointId, id: &str) -> Delivery {
    Delivery::pending(
        ws,
        id.into(),
        ep,
        EventType::RunCompleted,
        None,
        "{}".into(),
    )
}

async fn send_due(app: &Arc<App>) {
    app.deliver_due(Utc::now()).await.unwrap();
    app.webhooks_idle(Duration::from_secs(20)).await;
}

async fn endpoint(app: &App, ws: &WorkspaceId, url: String) -> Endpoint {
    let f = EndpointFields {
        url: Some(url),
        ..Default::default()
    };
    app.create_endpoint(ws, f).await.unwrap().0
}

#[tokio::test]
async fn failing_marks_an_endpoint_and_a_success_clears_it() {
    let (app, store, ws) = app().await;
    let failing = endpoint(&app, &ws, receiver(500).await).await;
    store
        .create_delivery(&pending(&ws, &failing.id, "msg_1"))
        .await
        .unwrap();
    send_due(&app).await;
    let e = app.get_endpoint(&ws, &failing.id).await.unwrap();
    let since = e.failing_since.expect("failing since the attempt");
    assert!(!e.disabled);

    // Healthy again: the mark goes.
    let ok = receiver(204).await;
    app.update_endpoint(
        &ws,
        &failing.id,
        EndpointFields {
            url: Some(ok),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut d = pending(&ws, &failing.id, "msg_2");
    d.created_at = since;
    store.create_delivery(&d).await.unwrap();
    send_due(&app).await;
    let e = app.get_endpoint(&ws, &failing.id).await.unwrap();
    assert_eq!(e.failing_since, None);
}

#[tokio::test]
async fn an_endpoint_failing_for_days_is_disabled_and_the_others_are_told() {
    let (app, store, ws) = app().await;
    let failing = endpoint(&app, &ws, receiver(500).await).await;
    let listening = endpoint(&app, &ws, receiver(200).await).await;
    let mut e = failing.clone();
    e.failing_since = Some(Utc::now() - chrono::Duration::days(FAILING_DAYS + 1));
    e.revision += 1;
    store.save_endpoint(&e).await.unwrap();
    store
        .create_delivery(&pending(&ws, &failing.id, "msg_1"))
        .await
        .unwrap();
    send_due(&app).await;

    let e = app.get_endpoint(&ws, &failing.id).await.unwrap();
    assert!(e.disabled);
    let reason = e.disabled_reason.unwrap_or_default();
    assert!(reason.contains("days"), "{reason}");
    let told = store
        .list_deliveries(&ws, &listening.id, None, &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    assert_eq!(told.len(), 1);
    assert_eq!(told[0].event_type, EventType::EndpointDisabled);
    let body: serde_json::Value = serde_json::from_str(&told[0].payload).unwrap();
    assert_eq!(body["data"]["endpoint_id"], failing.id.as_str());
    // The disabled endpoint is not told of itself.
    let own = store
        .list_deliveries(&ws, &failing.id, None, &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    assert!(
        own.iter()
            .all(|d| d.event_type != EventType::EndpointDisabled)
    );
}

const FAILING_DAYS: i64 = crate::domain::webhook::FAILING_DAYS_TO_DISABLE;

#[tokio::test]
async fn signing_keys_rest_in_the_secret_store_hidden_from_the_tenant() {
    let (app, store, ws) = app().await;
    let f = EndpointFields {
        url: Some(receiver(200).await),
        ..Default::default()
    };
    let (e, first) = app.create_endpoint(&ws, f).await.unwrap();
    // The record holds a name, not the key.
    let stored = serde_json::to_string(&store.get_endpoint(&ws, &e.id).await.unwrap()).unwrap();
    assert!(!stored.contains(&first), "{stored}");
    let name = e.keys[0].secret_name.clone();
    assert_eq!(
        store.get_secret(&ws, &name).await.unwrap(),
        Some(first.clone())
    );
    // Not listed, not deletable through the secrets API.
    assert!(app.list_secrets(&ws).await.unwrap().is_empty());
    assert!(app.delete_secret(&ws, &name).await.is_err());
    // Rotated twice: the first key is gone from the store, the second
    // signs beside the third.
    let (_, second) = app.rotate_endpoint_secret(&ws, &e.id).await.unwrap();
    let (e, third) = app.rotate_endpoint_secret(&ws, &e.id).await.unwrap();
    assert_eq!(store.get_secret(&ws, &name).await.unwrap(), None);
    let now = Utc::now();
    let mut signing = app.signing_secrets(&e, now).await.unwrap();
    signing.sort();
    let mut want = vec![second, third];
    want.sort();
    assert_eq!(signing, want);
    // Deleted with its endpoint.
    app.delete_endpoint(&ws, &e.id).await.unwrap();
    for k in &e.keys {
        assert_eq!(store.get_secret(&ws, &k.secret_name).await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_rate_limited_endpoint_gets_at_most_its_rate_and_the_rest_waits() {
    let (app, store, ws) = app().await;
    let f = EndpointFields {
        url: Some(receiver(200).await),
        rate_limit: Some(Some(1)),
        ..Default::default()
    };
    let (e, _) = app.create_endpoint(&ws, f).await.unwrap();
    for id in ["msg_1", "msg_2", "msg_3"] {
        store
            .create_delivery(&pending(&ws, &e.id, id))
            .await
            .unwrap();
    }
    let before = Utc::now();
    send_due(&app).await;
    let all = store
        .list_deliveries(&ws, &e.id, None, &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    let sent: Vec<&Delivery> = all.iter().filter(|d| !d.attempts.is_empty()).collect();
    let put_off: Vec<&Delivery> = all.iter().filter(|d| d.attempts.is_empty()).collect();
    // One second's worth was sent (the pass may straddle two seconds).
    assert!(!sent.is_empty() && sent.len() <= 2, "{all:?}");
    assert_eq!(sent.len() + put_off.len(), 3);
    for d in put_off {
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!(d.round, 0, "being put off is no attempt");
        assert!(d.next_attempt_at.is_some_and(|t| t > before), "{d:?}");
    }
}
