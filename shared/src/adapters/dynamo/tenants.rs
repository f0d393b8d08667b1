//! Workspaces, API keys and workspace settings.

use async_trait::async_trait;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::{DynamoStore, Item, build, data, key, n, s, sdk};
use crate::domain::{ApiKeyId, ApiKeyRecord, Workspace, WorkspaceId, WorkspaceSettings};
use crate::ports::{
    ApiKeyStore, KeyChange, SettingsStore, StoreError, StoreResult, WorkspaceStore,
};

fn ws_pk(ws: &WorkspaceId) -> String {
    format!("WS#{ws}")
}

impl DynamoStore {
    async fn get_data<T: serde::de::DeserializeOwned>(
        &self,
        pk: String,
        sk: &str,
    ) -> StoreResult<Option<T>> {
        self.get(key(pk, sk)).await?.as_ref().map(data).transpose()
    }

    async fn put_data(
        &self,
        pk: String,
        sk: &str,
        value: &impl serde::Serialize,
        only_new: bool,
    ) -> StoreResult<()> {
        let mut item = key(pk, sk);
        item.insert("data".into(), s(serde_json::to_string(value)?));
        self.put(item, only_new).await
    }
}

#[async_trait]
impl WorkspaceStore for DynamoStore {
    async fn create_workspace(&self, ws: &Workspace) -> StoreResult<()> {
        self.put_data(ws_pk(&ws.id), "WS", ws, true).await
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> StoreResult<Option<Workspace>> {
        self.get_data(ws_pk(id), "WS").await
    }
}

/// A key is kept twice, written together: under its hash (`APIKEY#{hash}`,
/// which authentication reads) and listed in its workspace's key partition
/// (`{ws}#KEYS`, its id as sort key, with the count item `#COUNT` and the
/// `used` time touched by requests). The listed item carries its expiry as
/// `expires`, and `#OWNERS` counts the lasting owner keys (without an
/// expiry), so that no change can take the last one.
fn keys_pk(ws: &WorkspaceId) -> String {
    format!("{ws}#KEYS")
}

fn by_hash(hash: &str) -> Item {
    key(format!("APIKEY#{hash}"), "APIKEY")
}

fn listed(ws: &WorkspaceId, id: &ApiKeyId) -> Item {
    key(keys_pk(ws), id.as_str())
}

fn owners(ws: &WorkspaceId) -> Item {
    key(keys_pk(ws), "#OWNERS")
}

fn with_used(item: &Item) -> StoreResult<ApiKeyRecord> {
    let mut rec: ApiKeyRecord = data(item)?;
    rec.last_used_at = item
        .get("used")
        .and_then(|v| v.as_s().ok())
        .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
        .map(|t| t.with_timezone(&Utc));
    Ok(rec)
}

/// How many times a change re-reads a key that changed under it.
const KEY_TRIES: usize = 5;

impl DynamoStore {
    /// One less lasting owner key: only while another remains.
    fn owner_leaves(&self, ws: &WorkspaceId) -> StoreResult<TransactWriteItem> {
        build(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(owners(ws)))
                .update_expression("ADD n :minus")
                .condition_expression("n >= :two")
                .expression_attribute_values(":minus", n(-1))
                .expression_attribute_values(":two", n(2))
                .build(),
        )
        .map(|u| TransactWriteItem::builder().update(u).build())
    }

    /// The condition that the listed key is still as read: there, and
    /// with the expiry read.
    fn as_read(rec: &ApiKeyRecord) -> (String, Option<AttributeValue>) {
        match rec.expires_at {
            None => (
                "attribute_exists(pk) AND attribute_not_exists(expires)".into(),
                None,
            ),
            Some(at) => (
                "attribute_exists(pk) AND expires = :read".into(),
                Some(s(super::ts(at))),
            ),
        }
    }
}

#[async_trait]
impl ApiKeyStore for DynamoStore {
    async fn insert_api_key(&self, k: &ApiKeyRecord, most: usize) -> StoreResult<bool> {
        let json = serde_json::to_string(k)?;
        let mut found = by_hash(&k.key_hash);
        found.insert("data".into(), s(json.clone()));
        let mut list = listed(&k.workspace_id, &k.id);
        list.insert("data".into(), s(json));
        if let Some(at) = k.expires_at {
            list.insert("expires".into(), s(super::ts(at)));
        }
        let mut also = Vec::new();
        if k.lasting_owner() {
            also.push(
                TransactWriteItem::builder()
                    .update(build(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(owners(&k.workspace_id)))
                            .update_expression("ADD n :one")
                            .expression_attribute_values(":one", n(1))
                            .build(),
                    )?)
                    .build(),
            );
        }
        self.create_counted_with(
            key(keys_pk(&k.workspace_id), "#COUNT"),
            most,
            vec![found, list],
            also,
            "API key",
        )
        .await
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        self.get(by_hash(key_hash))
            .await?
            .as_ref()
            .map(data)
            .transpose()
    }

    async fn list_api_keys(&self, ws: &WorkspaceId) -> StoreResult<Vec<ApiKeyRecord>> {
        self.query_between(keys_pk(ws), ApiKeyId::PREFIX, "key`")
            .await?
            .iter()
            .map(with_used)
            .collect()
    }

    async fn get_api_key(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
    ) -> StoreResult<Option<ApiKeyRecord>> {
        self.get(listed(ws, id))
            .await?
            .as_ref()
            .map(with_used)
            .transpose()
    }

    async fn delete_api_key(&self, ws: &WorkspaceId, id: &ApiKeyId) -> StoreResult<KeyChange> {
        for _ in 0..KEY_TRIES {
            let Some(rec) = self.get_api_key(ws, id).await? else {
                return Ok(KeyChange::NotFound);
            };
            let (condition, read) = Self::as_read(&rec);
            let mut delete = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(listed(ws, id)))
                .condition_expression(condition);
            if let Some(v) = read {
                delete = delete.expression_attribute_values(":read", v);
            }
            let mut writes = vec![
                TransactWriteItem::builder()
                    .delete(build(delete.build())?)
                    .build(),
                TransactWriteItem::builder()
                    .delete(build(
                        Delete::builder()
                            .table_name(&self.table)
                            .set_key(Some(by_hash(&rec.key_hash)))
                            .build(),
                    )?)
                    .build(),
                TransactWriteItem::builder()
                    .update(build(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(key(keys_pk(ws), "#COUNT")))
                            .update_expression("ADD n :minus")
                            .expression_attribute_values(":minus", n(-1))
                            .build(),
                    )?)
                    .build(),
            ];
            if rec.lasting_owner() {
                writes.push(self.owner_leaves(ws)?);
            }
            match self.transact(writes).await? {
                None => {
                    // Its rate limiter goes too (best effort: a stale one
                    // only takes room).
                    let limiter = rec.rotated_from.as_ref().unwrap_or(&rec.id);
                    if let Err(e) = self.forget_rate(ws, limiter.as_str()).await {
                        tracing::warn!(workspace_id = %ws, error = %e, "removing a deleted key's rate limiter failed");
                    }
                    return Ok(KeyChange::Done);
                }
                Some(failed) if failed.get(3) == Some(&true) => return Ok(KeyChange::LastOwner),
                // The key changed (or went) since it was read: again.
                Some(_) => continue,
            }
        }
        Err(StoreError::Conflict(
            "the key kept changing; try again".into(),
        ))
    }

    async fn set_api_key_expiry(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
        replaced_by: Option<&ApiKeyId>,
    ) -> StoreResult<KeyChange> {
        for _ in 0..KEY_TRIES {
            let Some(mut rec) = self.get_api_key(ws, id).await? else {
                return Ok(KeyChange::NotFound);
            };
            if rec.expires_at.is_some_and(|e| e <= at) {
                return Ok(KeyChange::Done);
            }
            let lasting = rec.lasting_owner();
            let (condition, read) = Self::as_read(&rec);
            rec.expires_at = Some(at);
            rec.last_used_at = None;
            if let Some(r) = replaced_by {
                rec.replaced_by = Some(r.clone());
            }
            let json = s(serde_json::to_string(&rec)?);
            let mut list = Update::builder()
                .table_name(&self.table)
                .set_key(Some(listed(ws, id)))
                .update_expression("SET #d = :d, expires = :at")
                .condition_expression(condition)
                .expression_attribute_names("#d", "data")
                .expression_attribute_values(":d", json.clone())
                .expression_attribute_values(":at", s(super::ts(at)));
            if let Some(v) = read {
                list = list.expression_attribute_values(":read", v);
            }
            let mut writes = vec![
                TransactWriteItem::builder()
                    .update(build(list.build())?)
                    .build(),
                TransactWriteItem::builder()
                    .update(build(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(by_hash(&rec.key_hash)))
                            .update_expression("SET #d = :d")
                            .condition_expression("attribute_exists(pk)")
                            .expression_attribute_names("#d", "data")
                            .expression_attribute_values(":d", json)
                            .build(),
                    )?)
                    .build(),
            ];
            if lasting {
                writes.push(self.owner_leaves(ws)?);
            }
            match self.transact(writes).await? {
                None => return Ok(KeyChange::Done),
                Some(failed) if failed.get(2) == Some(&true) => return Ok(KeyChange::LastOwner),
                Some(_) => continue,
            }
        }
        Err(StoreError::Conflict(
            "the key kept changing; try again".into(),
        ))
    }

    async fn touch_api_key(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(listed(ws, id)))
            .update_expression("SET used = :t")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":t", s(super::ts(at)))
            .send()
            .await;
        match res.map_err(sdk) {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait]
impl SettingsStore for DynamoStore {
    async fn get_settings(&self, ws: &WorkspaceId) -> StoreResult<WorkspaceSettings> {
        Ok(self
            .get_data(ws_pk(ws), "SETTINGS")
            .await?
            .unwrap_or_default())
    }

    async fn put_settings(&self, ws: &WorkspaceId, st: &WorkspaceSettings) -> StoreResult<()> {
        self.put_data(ws_pk(ws), "SETTINGS", st, false).await
    }
}
