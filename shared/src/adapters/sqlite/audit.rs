//! The audit log (`audit_log`), newest first by id; entries past their
//! retention are removed by the embedded platform's hourly cleanup.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

use super::SqliteStore;
use super::tenants::json_rows;
use super::ts;
use crate::domain::{AuditEntry, AuditFilter, WorkspaceId};
use crate::ports::{AuditStore, Page, PageRequest, StoreResult};

#[async_trait]
impl AuditStore for SqliteStore {
    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        let (ws, id, at, action, actor, data) = (
            e.workspace_id.to_string(),
            e.id.to_string(),
            ts(e.at),
            e.action.clone(),
            e.actor.clone(),
            serde_json::to_string(e)?,
        );
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO audit_log (workspace_id, id, at, action, actor, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![ws, id, at, action, actor, data],
                )?;
                Ok(())
            })
            .await
    }

    async fn list_audit(
        &self,
        ws: &WorkspaceId,
        f: &AuditFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AuditEntry>> {
        let ws = ws.to_string();
        // "\u{10FFFF}" sorts after every id: no cursor reads from the top.
        let before = page
            .cursor
            .as_ref()
            .map_or_else(|| "\u{10FFFF}".to_owned(), |c| c.position().to_owned());
        let action = f.action.clone().unwrap_or_default();
        let actor = f.actor.clone();
        let since = f.since.map(ts);
        let until = f.until.map(ts);
        let limit = page.limit;
        let rows: Vec<AuditEntry> = self
            .db
            .read(move |c| {
                json_rows(
                    c,
                    "SELECT data FROM audit_log WHERE workspace_id = ?1 AND id < ?2 \
                     AND substr(action, 1, length(?3)) = ?3 \
                     AND (?4 IS NULL OR actor = ?4) AND (?5 IS NULL OR at >= ?5) \
                     AND (?6 IS NULL OR at < ?6) ORDER BY id DESC LIMIT ?7",
                    params![ws, before, action, actor, since, until, limit as i64 + 1],
                )
            })
            .await?;
        Ok(Page::from_overfetch(rows, limit, |e| e.id.to_string()))
    }

    async fn forget_audit(&self, before: DateTime<Utc>) -> StoreResult<usize> {
        let before = ts(before);
        self.db
            .write(
                move |tx| Ok(tx.execute("DELETE FROM audit_log WHERE at < ?1", params![before])?),
            )
            .await
    }
}
