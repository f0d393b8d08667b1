//! Hooks, and the inbox of verified hook requests: a table read in order
//! of when each is due, so a request whose run could not start is tried
//! again later and one kept before a crash is handled after it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::tenants::{insert_counted, json_rows};
use super::ts;
use crate::domain::{Hook, HookId, Receipt, WorkflowId, WorkspaceId};
use crate::ports::{HookInbox, HookStore, StoreResult};

#[async_trait]
impl HookStore for SqliteStore {
    async fn create_hook(&self, h: &Hook, most: usize) -> StoreResult<bool> {
        let (id, ws, wf) = (
            h.id.to_string(),
            h.workspace_id.to_string(),
            h.workflow_id.to_string(),
        );
        let data = serde_json::to_string(h)?;
        self.db
            .write(move |tx| {
                insert_counted(
                    tx,
                    ("SELECT COUNT(*) FROM hooks WHERE workspace_id = ?1 AND workflow_id = ?2", params![ws, wf]),
                    most,
                    ("INSERT INTO hooks (id, workspace_id, workflow_id, data) VALUES (?1, ?2, ?3, ?4)", params![id, ws, wf, data]),
                    &format!("hook `{id}`"),
                )
            })
            .await
    }

    async fn list_hooks(&self, ws: &WorkspaceId, wf: &WorkflowId) -> StoreResult<Vec<Hook>> {
        let (ws, wf) = (ws.to_string(), wf.to_string());
        self.db
            .read(move |c| {
                json_rows(
                    c,
                    "SELECT data FROM hooks WHERE workspace_id = ?1 AND workflow_id = ?2 ORDER BY id",
                    params![ws, wf],
                )
            })
            .await
    }

    async fn delete_hook(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &HookId,
    ) -> StoreResult<bool> {
        let (ws, wf, id) = (ws.to_string(), wf.to_string(), id.to_string());
        self.db
            .write(move |tx| {
                Ok(tx.execute(
                    "DELETE FROM hooks WHERE id = ?1 AND workspace_id = ?2 AND workflow_id = ?3",
                    params![id, ws, wf],
                )? == 1)
            })
            .await
    }

    async fn find_hook(&self, id: &HookId) -> StoreResult<Option<Hook>> {
        let id = id.to_string();
        self.db
            .read(move |c| {
                let data: Option<String> = c
                    .query_row("SELECT data FROM hooks WHERE id = ?1", params![id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                Ok(data.map(|d| serde_json::from_str(&d)).transpose()?)
            })
            .await
    }
}

#[async_trait]
impl HookInbox for SqliteStore {
    async fn enqueue(&self, r: &Receipt) -> StoreResult<()> {
        let (id, due) = (r.id.clone(), ts(r.received_at));
        let data = serde_json::to_string(r)?;
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO hook_receipts (id, due_at, data) VALUES (?1, ?2, ?3)",
                    params![id, due, data],
                )?;
                Ok(())
            })
            .await?;
        self.receipts.notify_one();
        Ok(())
    }
}

impl SqliteStore {
    /// Kept requests due at `now`, earliest first, with how often each
    /// was tried.
    pub async fn due_receipts(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<(Receipt, u32)>> {
        let now = ts(now);
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT data, attempts FROM hook_receipts WHERE due_at <= ?1 ORDER BY due_at LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![now, limit as i64], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })?
                    .map(|row| {
                        let (d, n) = row?;
                        Ok((serde_json::from_str(&d)?, n as u32))
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }

    /// A kept request is handled: it goes.
    pub async fn receipt_done(&self, id: &str) -> StoreResult<()> {
        let id = id.to_owned();
        self.db
            .write(move |tx| {
                tx.execute("DELETE FROM hook_receipts WHERE id = ?1", params![id])?;
                Ok(())
            })
            .await
    }

    /// A kept request is tried again at `at`.
    pub async fn receipt_retry(&self, id: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let (id, at) = (id.to_owned(), ts(at));
        self.db
            .write(move |tx| {
                tx.execute(
                    "UPDATE hook_receipts SET due_at = ?2, attempts = attempts + 1 WHERE id = ?1",
                    params![id, at],
                )?;
                Ok(())
            })
            .await
    }

    /// Returns when a request is kept, or after `most`.
    pub async fn wait_for_receipts(&self, most: std::time::Duration) {
        let _ = tokio::time::timeout(most, self.receipts.notified()).await;
    }
}
