use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::tenants::{insert_counted, json_rows, update_at_revision};
use super::ts;
use crate::domain::{Schedule, ScheduleId, WorkflowId, WorkspaceId};
use crate::ports::{ScheduleStore, StoreResult};

/// Times as text that sorts as time does.
/// A schedule's columns.
struct Row {
    ws: String,
    wf: String,
    id: String,
    due: Option<String>,
    rev: i64,
    data: String,
}

impl Row {
    fn of(s: &Schedule) -> StoreResult<Self> {
        Ok(Row {
            ws: s.workspace_id.to_string(),
            wf: s.workflow_id.to_string(),
            id: s.id.to_string(),
            due: s.due_at.map(ts),
            rev: s.revision as i64,
            data: serde_json::to_string(s)?,
        })
    }
}

#[async_trait]
impl ScheduleStore for SqliteStore {
    async fn create_schedule(&self, s: &Schedule, most: usize) -> StoreResult<bool> {
        let Row {
            ws,
            wf,
            id,
            due,
            rev,
            data,
        } = Row::of(s)?;
        self.db
            .write(move |tx| {
                insert_counted(
                    tx,
                    ("SELECT COUNT(*) FROM schedules WHERE workspace_id = ?1", params![ws]),
                    most,
                    ("INSERT INTO schedules (workspace_id, workflow_id, id, due_at, revision, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)", params![ws, wf, id, due, rev, data]),
                    &format!("schedule `{id}`"),
                )
            })
            .await
    }

    async fn get_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
    ) -> StoreResult<Option<Schedule>> {
        let (ws, wf, id) = (ws.to_string(), wf.to_string(), id.to_string());
        self.db
            .read(move |c| {
                let data: Option<String> = c
                    .query_row(
                        "SELECT data FROM schedules WHERE workspace_id = ?1 AND workflow_id = ?2 AND id = ?3",
                        params![ws, wf, id],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(data.map(|d| serde_json::from_str(&d)).transpose()?)
            })
            .await
    }

    async fn list_schedules(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
    ) -> StoreResult<Vec<Schedule>> {
        let (ws, wf) = (ws.to_string(), wf.to_string());
        self.db
            .read(move |c| {
                json_rows(
                    c,
                    "SELECT data FROM schedules WHERE workspace_id = ?1 AND workflow_id = ?2 ORDER BY id",
                    params![ws, wf],
                )
            })
            .await
    }

    async fn save_schedule(&self, s: &Schedule) -> StoreResult<()> {
        let Row {
            ws,
            wf,
            id,
            due,
            rev,
            data,
        } = Row::of(s)?;
        self.db
            .write(move |tx| {
                update_at_revision(
                    tx,
                    "UPDATE schedules SET due_at = ?4, revision = ?5, data = ?6 WHERE workspace_id = ?1 AND workflow_id = ?2 AND id = ?3 AND revision = ?5 - 1",
                    params![ws, wf, id, due, rev, data],
                    rev,
                    &format!("schedule `{id}`"),
                )
            })
            .await
    }

    async fn delete_schedule(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &ScheduleId,
    ) -> StoreResult<bool> {
        let (ws, wf, id) = (ws.to_string(), wf.to_string(), id.to_string());
        self.db
            .write(move |tx| {
                Ok(tx.execute(
                    "DELETE FROM schedules WHERE workspace_id = ?1 AND workflow_id = ?2 AND id = ?3",
                    params![ws, wf, id],
                )? == 1)
            })
            .await
    }

    async fn due_schedules(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<Schedule>> {
        let now = ts(now);
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT data FROM schedules WHERE due_at IS NOT NULL AND due_at <= ?1 ORDER BY due_at LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![now, limit as i64], |r| r.get::<_, String>(0))?
                    .map(|d| Ok(serde_json::from_str(&d?)?))
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }
}
