use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use super::tenants::insert_or_conflict;
use crate::domain::{WorkflowId, WorkflowSummary, WorkflowVersion, WorkspaceId};
use crate::ports::{Page, PageRequest, StoreError, StoreResult, WorkflowStore};

fn insert_version(
    tx: &rusqlite::Transaction<'_>,
    ws: &str,
    id: &str,
    version: u32,
    data: &str,
) -> StoreResult<()> {
    tx.execute(
        "INSERT INTO workflow_versions (workspace_id, workflow_id, version, data) VALUES (?1, ?2, ?3, ?4)",
        params![ws, id, version, data],
    )?;
    Ok(())
}

/// Indexes the events a version's triggers listen for.
fn index_events(
    tx: &rusqlite::Transaction<'_>,
    ws: &str,
    id: &str,
    events: &[String],
) -> StoreResult<()> {
    for e in events {
        tx.execute(
            "INSERT OR IGNORE INTO workflow_events (workspace_id, event, workflow_id) VALUES (?1, ?2, ?3)",
            params![ws, e, id],
        )?;
    }
    Ok(())
}

#[async_trait]
impl WorkflowStore for SqliteStore {
    async fn create_workflow(&self, v: &WorkflowVersion) -> StoreResult<()> {
        let data = serde_json::to_string(v)?;
        let sum = serde_json::to_string(&v.summary(v.created_at))?;
        let (ws, id, version) = (v.workspace_id.to_string(), v.id.to_string(), v.version);
        let events = v.trigger_events();
        self.db
            .write(move |tx| {
                insert_or_conflict(
                    tx.execute(
                        "INSERT INTO workflows (workspace_id, id, latest_version, data) VALUES (?1, ?2, ?3, ?4)",
                        params![ws, id, version, sum],
                    ),
                    &format!("workflow `{id}`"),
                )?;
                insert_version(tx, &ws, &id, version, &data)?;
                index_events(tx, &ws, &id, &events)?;
                Ok(())
            })
            .await
    }

    async fn add_version(&self, v: &WorkflowVersion, revive: bool) -> StoreResult<()> {
        let data = serde_json::to_string(v)?;
        let (ws, id, version) = (v.workspace_id.to_string(), v.id.to_string(), v.version);
        let v = v.clone();
        self.db
            .write(move |tx| {
                let row: Option<String> = tx
                    .query_row(
                        "SELECT data FROM workflows WHERE workspace_id = ?1 AND id = ?2 AND (archived_at IS NULL) = ?4 AND latest_version = ?3",
                        params![ws, id, version - 1, !revive],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(row) = row else {
                    return Err(StoreError::Conflict(format!("workflow `{id}` is not at version {}", version - 1)));
                };
                let old: WorkflowSummary = serde_json::from_str(&row)?;
                let sum = serde_json::to_string(&v.summary(old.created_at))?;
                tx.execute(
                    "UPDATE workflows SET latest_version = ?3, data = ?4, archived_at = NULL WHERE workspace_id = ?1 AND id = ?2",
                    params![ws, id, version, sum],
                )?;
                insert_version(tx, &ws, &id, version, &data)?;
                index_events(tx, &ws, &id, &v.trigger_events())?;
                Ok(())
            })
            .await
    }

    async fn workflows_listening(
        &self,
        ws: &WorkspaceId,
        event: &str,
        limit: usize,
    ) -> StoreResult<Vec<WorkflowSummary>> {
        let (ws, event) = (ws.to_string(), event.to_owned());
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT w.data FROM workflow_events e JOIN workflows w ON w.workspace_id = e.workspace_id AND w.id = e.workflow_id \
                     WHERE e.workspace_id = ?1 AND e.event = ?2 AND w.archived_at IS NULL ORDER BY w.id LIMIT ?3",
                )?;
                let rows = stmt
                    .query_map(params![ws, event, limit as i64], |r| r.get::<_, String>(0))?
                    .map(|d| Ok(serde_json::from_str::<WorkflowSummary>(&d?)?))
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(rows
                    .into_iter()
                    .filter(|s| s.events.contains(&event))
                    .collect())
            })
            .await
    }

    async fn get_workflow(
        &self,
        ws: &WorkspaceId,
        id: &WorkflowId,
        version: Option<u32>,
    ) -> StoreResult<Option<WorkflowVersion>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db
            .read(move |c| {
                let row: Option<(i64, Option<String>)> = c
                    .query_row(
                        "SELECT latest_version, archived_at FROM workflows WHERE workspace_id = ?1 AND id = ?2",
                        params![ws, id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((latest, archived_at)) = row else { return Ok(None) };
                let version = version.map_or(latest, i64::from);
                let data: Option<String> = c
                    .query_row(
                        "SELECT data FROM workflow_versions WHERE workspace_id = ?1 AND workflow_id = ?2 AND version = ?3",
                        params![ws, id, version],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(data) = data else { return Ok(None) };
                let mut v: WorkflowVersion = serde_json::from_str(&data)?;
                v.archived_at = archived_at
                    .map(|a| DateTime::parse_from_rfc3339(&a).map(|d| d.with_timezone(&Utc)))
                    .transpose()
                    .map_err(|e| StoreError::Unavailable(format!("corrupt archived_at: {e}")))?;
                Ok(Some(v))
            })
            .await
    }

    async fn list_workflows(
        &self,
        ws: &WorkspaceId,
        page: &PageRequest,
    ) -> StoreResult<Page<WorkflowSummary>> {
        let ws = ws.to_string();
        let after = page
            .cursor
            .as_ref()
            .map(|c| c.position().to_owned())
            .unwrap_or_default();
        let limit = page.limit;
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT data FROM workflows WHERE workspace_id = ?1 AND archived_at IS NULL AND id > ?2 ORDER BY id LIMIT ?3",
                )?;
                let rows = stmt
                    .query_map(params![ws, after, limit + 1], |r| r.get::<_, String>(0))?
                    .map(|d| Ok(serde_json::from_str::<WorkflowSummary>(&d?)?))
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(Page::from_overfetch(rows, limit, |w| w.id.to_string()))
            })
            .await
    }

    async fn archive_workflow(
        &self,
        ws: &WorkspaceId,
        id: &WorkflowId,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db
            .write(move |tx| {
                let n = tx.execute(
                    "UPDATE workflows SET archived_at = ?3 WHERE workspace_id = ?1 AND id = ?2 AND archived_at IS NULL",
                    params![ws, id, at.to_rfc3339()],
                )?;
                Ok(n == 1)
            })
            .await
    }
}
