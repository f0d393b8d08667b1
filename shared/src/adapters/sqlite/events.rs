//! The events a workspace was sent lately (`events_kept`, once per event
//! id), for steps that look back (`wait_for_event`'s `lookback`); forgotten
//! after a day by the embedded platform's hourly cleanup.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;

use super::SqliteStore;
use super::tenants::json_rows;
use super::ts;
use crate::domain::WorkspaceId;
use crate::ports::{EventLog, KeptEvent, StoreResult};

#[async_trait]
impl EventLog for SqliteStore {
    async fn keep_event(&self, ws: &WorkspaceId, e: &KeptEvent) -> StoreResult<DateTime<Utc>> {
        let (ws, name, id, at, data) = (
            ws.to_string(),
            e.name.clone(),
            e.id.clone(),
            ts(e.at),
            serde_json::to_string(e)?,
        );
        let kept: String = self
            .db
            .write(move |tx| {
                tx.execute(
                    "INSERT OR IGNORE INTO events_kept (workspace_id, name, event_id, at, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![ws, name, id, at, data],
                )?;
                Ok(tx.query_row(
                    "SELECT at FROM events_kept WHERE workspace_id = ?1 AND event_id = ?2",
                    params![ws, id],
                    |r| r.get(0),
                )?)
            })
            .await?;
        Ok(DateTime::parse_from_rfc3339(&kept)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(e.at))
    }

    async fn events_since(
        &self,
        ws: &WorkspaceId,
        name: &str,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<KeptEvent>> {
        let (ws, name, since) = (ws.to_string(), name.to_owned(), ts(since));
        self.db
            .read(move |c| {
                json_rows(
                    c,
                    "SELECT data FROM events_kept WHERE workspace_id = ?1 AND name = ?2 AND at >= ?3 \
                     ORDER BY at, seq LIMIT ?4",
                    params![ws, name, since, limit as i64],
                )
            })
            .await
    }

    async fn forget_events(&self, before: DateTime<Utc>) -> StoreResult<usize> {
        let before = ts(before);
        self.db
            .write(move |tx| {
                Ok(tx.execute("DELETE FROM events_kept WHERE at < ?1", params![before])?)
            })
            .await
    }
}
