//! Workspaces, API keys and workspace settings.

use async_trait::async_trait;

use aws_sdk_dynamodb::types::{TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::{DynamoStore, Item, build, data, key, s, sdk};
use crate::domain::{ApiKeyId, ApiKeyRecord, Workspace, WorkspaceId, WorkspaceSettings};
use crate::ports::{ApiKeyStore, SettingsStore, StoreError, StoreResult, WorkspaceStore};

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
/// `used` time touched by requests).
fn keys_pk(ws: &WorkspaceId) -> String {
    format!("{ws}#KEYS")
}

fn by_hash(hash: &str) -> Item {
    key(format!("APIKEY#{hash}"), "APIKEY")
}

fn listed(ws: &WorkspaceId, id: &ApiKeyId) -> Item {
    key(keys_pk(ws), id.as_str())
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

#[async_trait]
impl ApiKeyStore for DynamoStore {
    async fn insert_api_key(&self, k: &ApiKeyRecord, most: usize) -> StoreResult<bool> {
        let json = serde_json::to_string(k)?;
        let mut found = by_hash(&k.key_hash);
        found.insert("data".into(), s(json.clone()));
        let mut list = listed(&k.workspace_id, &k.id);
        list.insert("data".into(), s(json));
        self.create_counted(
            key(keys_pk(&k.workspace_id), "#COUNT"),
            most,
            vec![found, list],
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

    async fn delete_api_key(&self, ws: &WorkspaceId, id: &ApiKeyId) -> StoreResult<bool> {
        let Some(rec) = self.get_api_key(ws, id).await? else {
            return Ok(false);
        };
        self.delete_counted(
            key(keys_pk(ws), "#COUNT"),
            listed(ws, id),
            vec![by_hash(&rec.key_hash)],
        )
        .await
    }

    async fn set_api_key_expiry(
        &self,
        ws: &WorkspaceId,
        id: &ApiKeyId,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let Some(mut rec) = self.get_api_key(ws, id).await? else {
            return Ok(false);
        };
        rec.expires_at = Some(at);
        rec.last_used_at = None;
        let json = s(serde_json::to_string(&rec)?);
        let set = |k: Item| {
            build(
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(k))
                    .update_expression("SET #d = :d")
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_names("#d", "data")
                    .expression_attribute_values(":d", json.clone())
                    .build(),
            )
            .map(|u| TransactWriteItem::builder().update(u).build())
        };
        let writes = vec![set(listed(ws, id))?, set(by_hash(&rec.key_hash))?];
        // A condition fails only when the key was deleted meanwhile.
        Ok(self.transact(writes).await?.is_none())
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
