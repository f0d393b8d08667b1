//! Workspaces, API keys and workspace settings.

use async_trait::async_trait;

use super::{DynamoStore, data, key, s};
use crate::domain::{ApiKeyRecord, Workspace, WorkspaceId, WorkspaceSettings};
use crate::ports::{ApiKeyStore, SettingsStore, StoreResult, WorkspaceStore};

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

#[async_trait]
impl ApiKeyStore for DynamoStore {
    async fn insert_api_key(&self, k: &ApiKeyRecord) -> StoreResult<()> {
        self.put_data(format!("APIKEY#{}", k.key_hash), "APIKEY", k, true)
            .await
    }

    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKeyRecord>> {
        self.get_data(format!("APIKEY#{key_hash}"), "APIKEY").await
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
