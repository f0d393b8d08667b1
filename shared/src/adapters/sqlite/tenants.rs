use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use chrono::{DateTime, Utc};

use crate::domain::{ApiKeyId, ApiKeyRecord, Workspace, WorkspaceId};
use crate::ports::{ApiKeyStore, KeyChange, StoreError, StoreResult, WorkspaceStore};

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

pub(super) fn insert_or_conflict(res: rusqlite::Result<usize>, what: &str) -> StoreResult<()> {
    match res {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => {
            Err(StoreError::Conflict(format!("{what} already exists")))
        }
        Err(e) => Err(e.into()),
    }
}

/// Runs an `UPDATE … AND revision = <rev> - 1` of one row: Conflict
/// (naming `what`) if no row was at the revision before `rev`.
pub(super) fn update_at_revision(
    tx: &rusqlite::Transaction,
    sql: &str,
    p: &[&dyn rusqlite::ToSql],
    rev: i64,
    what: &str,
) -> StoreResult<()> {
    if tx.execute(sql, p)? == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict(format!(
            "{what} is not at revision {}",
            rev - 1
        )))
    }
}

/// The first column of each row, JSON, read as `T`.
pub(super) fn json_rows<T: serde::de::DeserializeOwned>(
    c: &rusqlite::Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> StoreResult<Vec<T>> {
    let mut stmt = c.prepare_cached(sql)?;
    let out = stmt
        .query_map(p, |r| r.get::<_, String>(0))?
        .map(|d| Ok(serde_json::from_str(&d?)?))
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(out)
}

/// Inserts a row of something a workspace may hold only so many of:
/// false (and nothing written) if `count` (a `SELECT COUNT(*)`) says it
/// holds `most` already. In the caller's transaction, so the count holds.
pub(super) fn insert_counted(
    tx: &rusqlite::Transaction,
    count: (&str, &[&dyn rusqlite::ToSql]),
    most: usize,
    insert: (&str, &[&dyn rusqlite::ToSql]),
    what: &str,
) -> StoreResult<bool> {
    let held: i64 = tx.query_row(count.0, count.1, |r| r.get(0))?;
    if held as usize >= most {
        return Ok(false);
    }
    insert_or_conflict(tx.execute(insert.0, insert.1), what)?;
    Ok(true)
}

#[async_trait]
impl WorkspaceStore for SqliteStore {
    async fn create_workspace(&self, ws: &Workspace) -> StoreResult<()> {
        let data = serde_json::to_string(ws)?;
        let id = ws.id.to_string();
        self.db
            .write(move |tx| {
                insert_or_conflict(
                    tx.execute(
                        "INSERT INTO workspaces (id, data) VALUES (?1, ?2)",
                        params![id, data],
                    ),
                    "workspace",
                )
            })
            .await
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> StoreResult<Option<Workspace>> {
        let id = id.to_string();
        self.db
            .read(move |c| {
                let data: Option<String> = c
                    .query_row("SELECT data FROM workspaces WHERE id = ?1", [id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                Ok(data.map(|d| serde_json::from_str(&d)).transpose()?)
            })
            .await
    }
}

#[async_trait]
impl ApiKeyStore for SqliteStore {
    async fn insert_api_key(&self, key: &ApiKeyRecord, most: usize) -> StoreResult<bool> {
        let data = serde_json::to_string(key)?;
        let (hash, ws, id) = (
            key.key_hash.clone(),
            key.workspace_id.to_string(),
            key.id.to_string(),
        );
        self.db
            .write(move |tx| {
                let held: i64 = tx.query_row(
                    "SELECT COUNT(*) FROM api_keys WHERE workspace_id = ?1",
                    [&ws],
                    |r| r.get(0),
                )?;
                if held as usize >= most {
                    return Ok(false);
                }
                insert_or_conflict(
                    tx.execute(
                        "INSERT INTO api_keys (key_hash, workspace_id, id, data) VALUES (?1, ?2, ?3, ?4)",
                        params![hash, ws, id, data],
                    ),
                    "API key",
                )
                .map(|()| true)
            })
            .await
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        let hash = key_hash.to_owned();
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT data, last_used_at FROM api_keys WHERE key_hash = ?1",
                    [hash],
                    key_row,
                )
                .optional()?
                .transpose()
            })
            .await
    }

    async fn list_api_keys(&self, ws: &WorkspaceId) -> StoreResult<Vec<ApiKeyRecord>> {
        let ws = ws.to_string();
        self.db
            .read(move |c| {
                let mut st = c.prepare(
                    "SELECT data, last_used_at FROM api_keys WHERE workspace_id = ?1 ORDER BY id",
                )?;
                let rows = st.query_map([ws], key_row)?;
                let mut out = Vec::new();
                for r in rows {
                    out.push(r??);
                }
                Ok(out)
            })
            .await
    }

    async fn get_api_key(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
    ) -> StoreResult<Option<ApiKeyRecord>> {
        let (ws, id) = (ws.to_string(), id.to_string());
        self.db
            .read(move |c| {
                c.query_row(
                    "SELECT data, last_used_at FROM api_keys WHERE workspace_id = ?1 AND id = ?2",
                    [ws, id],
                    key_row,
                )
                .optional()?
                .transpose()
            })
            .await
    }

    async fn delete_api_key(&self, ws: &WorkspaceId, id: &ApiKeyId) -> StoreResult<KeyChange> {
        let (ws, id) = (ws.clone(), id.clone());
        self.db
            .write(move |tx| {
                let Some(rec) = key_in_tx(tx, &ws, &id)? else {
                    return Ok(KeyChange::NotFound);
                };
                if rec.lasting_owner() && !other_lasting_owner(tx, &ws, &id)? {
                    return Ok(KeyChange::LastOwner);
                }
                tx.execute(
                    "DELETE FROM api_keys WHERE workspace_id = ?1 AND id = ?2",
                    [ws.as_str(), id.as_str()],
                )?;
                Ok(KeyChange::Done)
            })
            .await
    }

    async fn set_api_key_expiry(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
        replaced_by: Option<&ApiKeyId>,
    ) -> StoreResult<KeyChange> {
        let (ws, id, replaced_by) = (ws.clone(), id.clone(), replaced_by.cloned());
        self.db
            .write(move |tx| {
                let Some(mut rec) = key_in_tx(tx, &ws, &id)? else {
                    return Ok(KeyChange::NotFound);
                };
                if rec.expires_at.is_some_and(|e| e <= at) {
                    return Ok(KeyChange::Done);
                }
                if rec.lasting_owner() && !other_lasting_owner(tx, &ws, &id)? {
                    return Ok(KeyChange::LastOwner);
                }
                rec.expires_at = Some(at);
                rec.last_used_at = None;
                if replaced_by.is_some() {
                    rec.replaced_by = replaced_by;
                }
                tx.execute(
                    "UPDATE api_keys SET data = ?3 WHERE workspace_id = ?1 AND id = ?2",
                    params![ws.as_str(), id.as_str(), serde_json::to_string(&rec)?],
                )?;
                Ok(KeyChange::Done)
            })
            .await
    }

    async fn touch_api_key(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (ws, id, at) = (ws.to_string(), id.to_string(), super::ts(at));
        self.db
            .write(move |tx| {
                tx.execute(
                    "UPDATE api_keys SET last_used_at = ?3 WHERE workspace_id = ?1 AND id = ?2",
                    [ws, id, at],
                )?;
                Ok(())
            })
            .await
    }
}

fn key_in_tx(
    tx: &rusqlite::Transaction,
    ws: &WorkspaceId,
    id: &ApiKeyId,
) -> StoreResult<Option<ApiKeyRecord>> {
    let data: Option<String> = tx
        .query_row(
            "SELECT data FROM api_keys WHERE workspace_id = ?1 AND id = ?2",
            [ws.as_str(), id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(data.map(|d| serde_json::from_str(&d)).transpose()?)
}

/// Whether the workspace has a lasting owner key other than `id` (in the
/// writer's transaction, so no other change comes between).
fn other_lasting_owner(
    tx: &rusqlite::Transaction,
    ws: &WorkspaceId,
    id: &ApiKeyId,
) -> StoreResult<bool> {
    let keys: Vec<ApiKeyRecord> = json_rows(
        tx,
        "SELECT data FROM api_keys WHERE workspace_id = ?1 AND id != ?2",
        [ws.as_str(), id.as_str()],
    )?;
    Ok(keys.iter().any(ApiKeyRecord::lasting_owner))
}

/// A key's row: its data, with when it was last used.
fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoreResult<ApiKeyRecord>> {
    let (data, used): (String, Option<String>) = (r.get(0)?, r.get(1)?);
    Ok((|| {
        let mut rec: ApiKeyRecord = serde_json::from_str(&data)?;
        rec.last_used_at = used
            .as_deref()
            .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
            .map(|t| t.with_timezone(&Utc));
        Ok(rec)
    })())
}
