//! Hooks: one partition per workflow's hooks (`{ws}#HOOKS#{wf}`, the hook
//! id as sort key, with the count item `#COUNT`), and the hook again under
//! its id alone (`HOOK#{id}`), which a request to its URL reads. Both and
//! the count are written in one transaction.

use async_trait::async_trait;

use super::{DynamoStore, Item, data, key, s};
use crate::domain::{Hook, HookId, WorkflowId, WorkspaceId};
use crate::ports::{HookStore, StoreResult};

fn pk(ws: &WorkspaceId, wf: &WorkflowId) -> String {
    format!("{ws}#HOOKS#{wf}")
}

fn by_id(id: &HookId) -> Item {
    key(format!("HOOK#{id}"), "HOOK")
}

#[async_trait]
impl HookStore for DynamoStore {
    async fn create_hook(&self, h: &Hook, most: usize) -> StoreResult<bool> {
        let json = serde_json::to_string(h)?;
        let mut listed = key(pk(&h.workspace_id, &h.workflow_id), h.id.as_str());
        listed.insert("data".into(), s(json.clone()));
        let mut found = by_id(&h.id);
        found.insert("data".into(), s(json));
        self.create_counted(
            key(pk(&h.workspace_id, &h.workflow_id), "#COUNT"),
            most,
            vec![listed, found],
            &format!("hook `{}`", h.id),
        )
        .await
    }

    async fn list_hooks(&self, ws: &WorkspaceId, wf: &WorkflowId) -> StoreResult<Vec<Hook>> {
        self.query_between(pk(ws, wf), "hk_", "hk`")
            .await?
            .iter()
            .map(data)
            .collect()
    }

    async fn delete_hook(
        &self,
        ws: &WorkspaceId,
        wf: &WorkflowId,
        id: &HookId,
    ) -> StoreResult<bool> {
        // Its condition fails when the workflow has no such hook.
        self.delete_counted(
            key(pk(ws, wf), "#COUNT"),
            key(pk(ws, wf), id.as_str()),
            vec![by_id(id)],
        )
        .await
    }

    async fn find_hook(&self, id: &HookId) -> StoreResult<Option<Hook>> {
        self.get(by_id(id)).await?.map(|i| data(&i)).transpose()
    }
}
