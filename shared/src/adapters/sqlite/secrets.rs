use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, params};

use super::SqliteStore;
use super::sealed::{self, MasterKey};
use crate::domain::WorkspaceId;
use crate::ports::{SecretMeta, SecretStore, StoreError, StoreResult};

fn aad(ws: &str, name: &str) -> Vec<u8> {
    format!("weft-secret/{ws}/{name}").into_bytes()
}

fn parse_time(s: &str) -> StoreResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|e| StoreError::Unavailable(format!("corrupt timestamp: {e}")))
}

/// The workspace's data key, created on first use.
fn data_key(
    tx: &Transaction<'_>,
    master: &MasterKey,
    ws: &str,
    create: bool,
) -> StoreResult<Option<[u8; 32]>> {
    let wrapped: Option<Vec<u8>> = tx
        .query_row(
            "SELECT wrapped FROM workspace_keys WHERE workspace_id = ?1",
            [ws],
            |r| r.get(0),
        )
        .optional()?;
    let key_aad = format!("weft-data-key/{ws}").into_bytes();
    match wrapped {
        Some(w) => {
            let plain = sealed::open(master.bytes(), &w, &key_aad)?;
            let key: [u8; 32] = plain
                .try_into()
                .map_err(|_| StoreError::Unavailable("a data key has the wrong length".into()))?;
            Ok(Some(key))
        }
        None if create => {
            let key = sealed::new_data_key();
            let w = sealed::seal(master.bytes(), &key, &key_aad)?;
            tx.execute(
                "INSERT INTO workspace_keys (workspace_id, wrapped) VALUES (?1, ?2)",
                params![ws, w],
            )?;
            Ok(Some(key))
        }
        None => Ok(None),
    }
}

impl SqliteStore {
    fn master(&self) -> StoreResult<MasterKey> {
        self.master.clone().ok_or_else(|| {
            StoreError::Unavailable("secrets need a master key, and none is configured".into())
        })
    }
}

#[async_trait]
impl SecretStore for SqliteStore {
    async fn put_secret(
        &self,
        ws: &WorkspaceId,
        name: &str,
        value: &str,
    ) -> StoreResult<SecretMeta> {
        let master = self.master()?;
        let (ws, name, value) = (ws.to_string(), name.to_owned(), value.to_owned());
        self.db
            .write(move |tx| {
                let key = data_key(tx, &master, &ws, true)?.ok_or_else(|| StoreError::Unavailable("no data key".into()))?;
                let sealed = sealed::seal(&key, value.as_bytes(), &aad(&ws, &name))?;
                let now = Utc::now();
                let created: Option<String> = tx
                    .query_row("SELECT created_at FROM secrets WHERE workspace_id = ?1 AND name = ?2", params![ws, name], |r| r.get(0))
                    .optional()?;
                let created_at = created.as_deref().map(parse_time).transpose()?.unwrap_or(now);
                tx.execute(
                    "INSERT OR REPLACE INTO secrets (workspace_id, name, sealed, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![ws, name, sealed, created_at.to_rfc3339(), now.to_rfc3339()],
                )?;
                Ok(SecretMeta { name, created_at, updated_at: now })
            })
            .await
    }

    async fn list_secrets(&self, ws: &WorkspaceId) -> StoreResult<Vec<SecretMeta>> {
        let ws = ws.to_string();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare_cached("SELECT name, created_at, updated_at FROM secrets WHERE workspace_id = ?1 ORDER BY name")?;
                let rows = stmt
                    .query_map([ws], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?
                    .map(|row| {
                        let (name, c, u) = row?;
                        Ok(SecretMeta { name, created_at: parse_time(&c)?, updated_at: parse_time(&u)? })
                    })
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(rows)
            })
            .await
    }

    async fn delete_secret(&self, ws: &WorkspaceId, name: &str) -> StoreResult<bool> {
        let (ws, name) = (ws.to_string(), name.to_owned());
        self.db
            .write(move |tx| {
                Ok(tx.execute(
                    "DELETE FROM secrets WHERE workspace_id = ?1 AND name = ?2",
                    params![ws, name],
                )? == 1)
            })
            .await
    }

    async fn get_secret(&self, ws: &WorkspaceId, name: &str) -> StoreResult<Option<String>> {
        let master = self.master()?;
        let (ws, name) = (ws.to_string(), name.to_owned());
        // The data key is read in a write transaction so its first use and
        // creation cannot race; reading a secret is rare next to runs.
        self.db
            .write(move |tx| {
                let sealed: Option<Vec<u8>> = tx
                    .query_row(
                        "SELECT sealed FROM secrets WHERE workspace_id = ?1 AND name = ?2",
                        params![ws, name],
                        |r| r.get(0),
                    )
                    .optional()?;
                let Some(sealed) = sealed else {
                    return Ok(None);
                };
                let Some(key) = data_key(tx, &master, &ws, false)? else {
                    return Ok(None);
                };
                let plain = sealed::open(&key, &sealed, &aad(&ws, &name))?;
                String::from_utf8(plain)
                    .map(Some)
                    .map_err(|_| StoreError::Unavailable("a secret is not UTF-8".into()))
            })
            .await
    }
}
