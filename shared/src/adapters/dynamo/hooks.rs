//! Hooks: one partition per workflow's hooks (`{ws}#HOOKS#{wf}`, the hook
//! id as sort key, with the count item `#COUNT`), and the hook again under
//! its id alone (`HOOK#{id}`), which a request to its URL reads. Both and
//! the count are written in one transaction.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Delete, Put, TransactWriteItem, Update};

use super::{DynamoStore, Item, build, data, key, n, s};
use crate::domain::{Hook, HookId, WorkflowId, WorkspaceId};
use crate::ports::{HookStore, StoreError, StoreResult};

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
        let count = build(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(pk(&h.workspace_id, &h.workflow_id), "#COUNT")))
                .update_expression("ADD n :one")
                .condition_expression("attribute_not_exists(n) OR n < :most")
                .expression_attribute_values(":one", n(1))
                .expression_attribute_values(":most", n(most))
                .build(),
        )?;
        let mut listed = key(pk(&h.workspace_id, &h.workflow_id), h.id.as_str());
        listed.insert("data".into(), s(json.clone()));
        let mut found = by_id(&h.id);
        found.insert("data".into(), s(json));
        let put = |item: Item| {
            build(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .condition_expression("attribute_not_exists(pk)")
                    .build(),
            )
        };
        let items = vec![
            TransactWriteItem::builder().update(count).build(),
            TransactWriteItem::builder().put(put(listed)?).build(),
            TransactWriteItem::builder().put(put(found)?).build(),
        ];
        match self.transact(items).await? {
            None => Ok(true),
            Some(failed) if failed.first() == Some(&true) => Ok(false),
            Some(_) => Err(StoreError::Conflict(format!(
                "hook `{}` already exists",
                h.id
            ))),
        }
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
        let listed = build(
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key(pk(ws, wf), id.as_str())))
                .condition_expression("attribute_exists(pk)")
                .build(),
        )?;
        let found = build(
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(by_id(id)))
                .build(),
        )?;
        let count = build(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(pk(ws, wf), "#COUNT")))
                .update_expression("ADD n :minus")
                .expression_attribute_values(":minus", n(-1))
                .build(),
        )?;
        let items = vec![
            TransactWriteItem::builder().delete(listed).build(),
            TransactWriteItem::builder().delete(found).build(),
            TransactWriteItem::builder().update(count).build(),
        ];
        // Its condition failed: the workflow has no such hook.
        Ok(self.transact(items).await?.is_none())
    }

    async fn find_hook(&self, id: &HookId) -> StoreResult<Option<Hook>> {
        self.get(by_id(id)).await?.map(|i| data(&i)).transpose()
    }
}
