//! Outbound webhooks: endpoints, deliveries (listed by endpoint, read by
//! when they are due) and the outbox of run events (`webhook_outbox`,
//! written by the run's save in its transaction).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::tenants::{insert_counted, json_rows, update_at_revision};
use super::ts;
use crate::domain::{
    Delivery, DeliveryStatus, Endpoint, EndpointId, OutboxEntry, RunId, WorkspaceId,
};
use crate::ports::{Page, PageRequest, StoreResult, WebhookStore};

#[async_trait]
impl WebhookStore for SqliteStore {
    async fn create_endpoint(&self, e: &Endpoint, most: usize) -> StoreResult<bool> {
        let (ws, id, rev) = (
            e.workspace_id.to_string(),
            e.id.to_string(),
            e.revision as i64,
        );
        let data = serde_json::to_string(e)?;
        self.db
            .write(move |tx| {
                insert_counted(
                    tx,
                    ("SELECT COUNT(*) FROM webhook_endpoints WHERE workspace_id = ?1", params![ws]),
                    most,
                    ("INSERT INTO webhook_endpoints (workspace_id, id, revision, data) VALUES (?1, ?2, ?3, ?4)", params![ws, id, rev, data]),
                    &format!("endpoint `{id}`"),
                )
            })
            .await
    }

    async fn get_endpoint(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
    ) -> StoreResult<Option<Endpoint>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db
            .read(move |c| {
                Ok(json_rows(
                    c,
                    "SELECT data FROM webhook_endpoints WHERE workspace_id = ?1 AND id = ?2",
                    params![ws, id],
                )?
                .pop())
            })
            .await
    }

    async fn list_endpoints(&self, ws: &WorkspaceId) -> StoreResult<Vec<Endpoint>> {
        let ws = ws.to_string();
        self.db
            .read(move |c| {
                json_rows(
                    c,
                    "SELECT data FROM webhook_endpoints WHERE workspace_id = ?1 ORDER BY id",
                    params![ws],
                )
            })
            .await
    }

    async fn save_endpoint(&self, e: &Endpoint) -> StoreResult<()> {
        let (ws, id, rev) = (
            e.workspace_id.to_string(),
            e.id.to_string(),
            e.revision as i64,
        );
        let data = serde_json::to_string(e)?;
        self.db
            .write(move |tx| {
                update_at_revision(
                    tx,
                    "UPDATE webhook_endpoints SET revision = ?3, data = ?4 WHERE workspace_id = ?1 AND id = ?2 AND revision = ?3 - 1",
                    params![ws, id, rev, data],
                    rev,
                    &format!("endpoint `{id}`"),
                )
            })
            .await
    }

    async fn delete_endpoint(&self, ws: &WorkspaceId, id: &EndpointId) -> StoreResult<bool> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db
            .write(move |tx| {
                let gone = tx.execute(
                    "DELETE FROM webhook_endpoints WHERE workspace_id = ?1 AND id = ?2",
                    params![ws, id],
                )? == 1;
                // Its deliveries go with it (they hold copies of run
                // outputs nobody can read any more).
                if gone {
                    tx.execute(
                        "DELETE FROM webhook_deliveries WHERE workspace_id = ?1 AND endpoint_id = ?2",
                        params![ws, id],
                    )?;
                }
                Ok(gone)
            })
            .await
    }

    async fn create_delivery(&self, d: &Delivery) -> StoreResult<bool> {
        let (ws, id, ep, due, rev) = (
            d.workspace_id.to_string(),
            d.id.clone(),
            d.endpoint_id.to_string(),
            d.next_attempt_at.map(ts),
            d.revision as i64,
        );
        let data = serde_json::to_string(d)?;
        self.db
            .write(move |tx| {
                Ok(tx.execute(
                    "INSERT OR IGNORE INTO webhook_deliveries (workspace_id, id, endpoint_id, due_at, revision, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![ws, id, ep, due, rev, data],
                )? == 1)
            })
            .await
    }

    async fn get_delivery(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        id: &str,
    ) -> StoreResult<Option<Delivery>> {
        let (ws, ep, id) = (ws.to_string(), endpoint.to_string(), id.to_owned());
        self.db
            .read(move |c| {
                let data: Option<String> = c
                    .query_row(
                        "SELECT data FROM webhook_deliveries WHERE workspace_id = ?1 AND endpoint_id = ?2 AND id = ?3",
                        params![ws, ep, id],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(data.map(|d| serde_json::from_str(&d)).transpose()?)
            })
            .await
    }

    async fn save_delivery(&self, d: &Delivery) -> StoreResult<()> {
        let (ws, id, due, rev) = (
            d.workspace_id.to_string(),
            d.id.clone(),
            d.next_attempt_at.map(ts),
            d.revision as i64,
        );
        let data = serde_json::to_string(d)?;
        self.db
            .write(move |tx| {
                update_at_revision(
                    tx,
                    "UPDATE webhook_deliveries SET due_at = ?3, revision = ?4, data = ?5 WHERE workspace_id = ?1 AND id = ?2 AND revision = ?4 - 1",
                    params![ws, id, due, rev, data],
                    rev,
                    &format!("delivery `{id}`"),
                )
            })
            .await
    }

    async fn list_deliveries(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        status: Option<DeliveryStatus>,
        page: &PageRequest,
    ) -> StoreResult<Page<Delivery>> {
        let (ws, ep) = (ws.to_string(), endpoint.to_string());
        let status = status.map(DeliveryStatus::as_str);
        // Ids sort by when the run ended: newest first is by id.
        let before = page
            .cursor
            .as_ref()
            .map_or_else(|| "~".to_owned(), |c| c.position().to_owned());
        let limit = page.limit;
        self.db
            .read(move |c| {
                let items: Vec<Delivery> = json_rows(
                    c,
                    "SELECT data FROM webhook_deliveries WHERE workspace_id = ?1 AND endpoint_id = ?2 AND id < ?3 \
                     AND (?5 IS NULL OR json_extract(data, '$.status') = ?5) ORDER BY id DESC LIMIT ?4",
                    params![ws, ep, before, limit + 1, status],
                )?;
                Ok(Page::from_overfetch(items, limit, |d| d.id.clone()))
            })
            .await
    }

    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &[WorkspaceId],
    ) -> StoreResult<Vec<Delivery>> {
        let now = ts(now);
        let busy = serde_json::to_string(busy)?;
        self.db
            .read(move |c| {
                json_rows(
                    c,
                    "SELECT data FROM webhook_deliveries WHERE due_at IS NOT NULL AND due_at <= ?1 \
                     AND workspace_id NOT IN (SELECT value FROM json_each(?3)) ORDER BY due_at LIMIT ?2",
                    params![now, limit as i64, busy],
                )
            })
            .await
    }

    async fn forget_deliveries(&self, before: DateTime<Utc>) -> StoreResult<usize> {
        let before = ts(before);
        self.db
            .write(move |tx| {
                Ok(tx.execute(
                    "DELETE FROM webhook_deliveries WHERE due_at IS NULL AND json_extract(data, '$.created_at') < ?1",
                    params![before],
                )?)
            })
            .await
    }

    async fn take_send(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        second: i64,
        limit: u32,
    ) -> StoreResult<bool> {
        let (ws, ep) = (ws.to_string(), endpoint.to_string());
        self.db
            .write(move |tx| {
                let took = tx.execute(
                    "INSERT INTO webhook_rates (workspace_id, endpoint_id, second, n) VALUES (?1, ?2, ?3, 1) \
                     ON CONFLICT (workspace_id, endpoint_id, second) DO UPDATE SET n = n + 1 WHERE n < ?4",
                    params![ws, ep, second, limit],
                )? == 1;
                // The seconds gone by are forgotten.
                tx.execute(
                    "DELETE FROM webhook_rates WHERE workspace_id = ?1 AND endpoint_id = ?2 AND second < ?3",
                    params![ws, ep, second - 10],
                )?;
                Ok(took)
            })
            .await
    }

    async fn outbox(&self, limit: usize) -> StoreResult<Vec<OutboxEntry>> {
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT seq, workspace_id, run_id, data FROM webhook_outbox ORDER BY seq LIMIT ?1",
                )?;
                let rows = stmt
                    .query_map(params![limit as i64], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, String>(3)?,
                        ))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                rows.into_iter()
                    .map(|(seq, ws, run, data)| {
                        Ok(OutboxEntry {
                            workspace_id: WorkspaceId::from_string(ws),
                            run_id: RunId::from_string(run),
                            events: vec![serde_json::from_str(&data)?],
                            key: seq.to_string(),
                        })
                    })
                    .collect()
            })
            .await
    }

    async fn forget_outbox(&self, entry: &OutboxEntry) -> StoreResult<()> {
        let seq: i64 = entry.key.parse().unwrap_or(-1);
        self.db
            .write(move |tx| {
                tx.execute("DELETE FROM webhook_outbox WHERE seq = ?1", params![seq])?;
                Ok(())
            })
            .await
    }
}

impl SqliteStore {
    /// Returns when a run ends, or after `most`.
    pub async fn wait_for_endings(&self, most: std::time::Duration) {
        let _ = tokio::time::timeout(most, self.endings.notified()).await;
    }
}
