//! Workflows: a head item per workflow (`{ws}#WF`, sk = id) with the latest
//! version and archive mark, and an item per immutable version.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::{DynamoStore, Item, cancelled_conditions, data, get_n, key, n, s, sdk};
use crate::domain::{WorkflowId, WorkflowSummary, WorkflowVersion, WorkspaceId};
use crate::ports::{Page, PageRequest, StoreError, StoreResult, WorkflowStore};

fn head_pk(ws: &WorkspaceId) -> String {
    format!("{ws}#WF")
}

fn version_key(v: &WorkflowVersion) -> Item {
    key(
        format!("{}#WF#{}", v.workspace_id, v.id),
        format!("V#{:010}", v.version),
    )
}

/// The index item of a workflow listening for an event (the reader checks
/// its latest version still does).
fn event_key(ws: &WorkspaceId, event: &str, id: &WorkflowId) -> Item {
    key(format!("{ws}#EVENT#{event}"), id.as_str())
}

impl DynamoStore {
    /// Puts of the index items of the events `v` listens for.
    fn put_events(&self, v: &WorkflowVersion) -> StoreResult<Vec<TransactWriteItem>> {
        v.trigger_events()
            .iter()
            .map(|e| {
                let put = Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(event_key(&v.workspace_id, e, &v.id)))
                    .build()
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(TransactWriteItem::builder().put(put).build())
            })
            .collect()
    }

    /// `items` and the puts of `v`'s event index items.
    fn with_events(
        &self,
        v: &WorkflowVersion,
        mut items: Vec<TransactWriteItem>,
    ) -> StoreResult<Vec<TransactWriteItem>> {
        items.extend(self.put_events(v)?);
        Ok(items)
    }

    fn put_version(&self, v: &WorkflowVersion) -> StoreResult<TransactWriteItem> {
        let mut item = version_key(v);
        item.insert("data".into(), s(serde_json::to_string(v)?));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(TransactWriteItem::builder().put(put).build())
    }

    async fn head(&self, ws: &WorkspaceId, id: &WorkflowId) -> StoreResult<Option<Item>> {
        self.get(key(head_pk(ws), id.as_str())).await
    }
}

fn conflict_if_cancelled(
    e: aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        impl std::fmt::Debug,
    >,
    what: &str,
) -> StoreError {
    match cancelled_conditions(&e) {
        Some(failed) if failed.iter().any(|f| *f) => StoreError::Conflict(what.to_owned()),
        _ => sdk(e),
    }
}

#[async_trait]
impl WorkflowStore for DynamoStore {
    async fn create_workflow(&self, v: &WorkflowVersion) -> StoreResult<()> {
        let mut head = key(head_pk(&v.workspace_id), v.id.as_str());
        head.insert("latest".into(), n(v.version));
        head.insert(
            "data".into(),
            s(serde_json::to_string(&v.summary(v.created_at))?),
        );
        let put_head = Put::builder()
            .table_name(&self.table)
            .set_item(Some(head))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.client
            .transact_write_items()
            .set_transact_items(Some(self.with_events(
                v,
                vec![
                    TransactWriteItem::builder().put(put_head).build(),
                    self.put_version(v)?,
                ],
            )?))
            .send()
            .await
            .map_err(|e| {
                conflict_if_cancelled(e, &format!("workflow `{}` already exists", v.id))
            })?;
        Ok(())
    }

    async fn add_version(&self, v: &WorkflowVersion, revive: bool) -> StoreResult<()> {
        let stale = || {
            StoreError::Conflict(format!(
                "workflow `{}` is not at version {}",
                v.id,
                v.version - 1
            ))
        };
        let Some(head) = self.head(&v.workspace_id, &v.id).await? else {
            return Err(stale());
        };
        let old: WorkflowSummary = data(&head)?;
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(head_pk(&v.workspace_id), v.id.as_str())))
            .update_expression("SET latest = :v, #d = :d REMOVE archived_at")
            .condition_expression(if revive {
                "latest = :prev AND attribute_exists(archived_at)"
            } else {
                "latest = :prev AND attribute_not_exists(archived_at)"
            })
            .expression_attribute_names("#d", "data")
            .expression_attribute_values(":v", n(v.version))
            .expression_attribute_values(":prev", n(v.version - 1))
            .expression_attribute_values(
                ":d",
                s(serde_json::to_string(&v.summary(old.created_at))?),
            )
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        self.client
            .transact_write_items()
            .set_transact_items(Some(self.with_events(
                v,
                vec![
                    TransactWriteItem::builder().update(update).build(),
                    self.put_version(v)?,
                ],
            )?))
            .send()
            .await
            .map_err(|e| match conflict_if_cancelled(e, "") {
                StoreError::Conflict(_) => stale(),
                other => other,
            })?;
        Ok(())
    }

    async fn get_workflow(
        &self,
        ws: &WorkspaceId,
        id: &WorkflowId,
        version: Option<u32>,
    ) -> StoreResult<Option<WorkflowVersion>> {
        let Some(head) = self.head(ws, id).await? else {
            return Ok(None);
        };
        let version = version.unwrap_or(get_n(&head, "latest") as u32);
        let Some(item) = self
            .get(key(format!("{ws}#WF#{id}"), format!("V#{version:010}")))
            .await?
        else {
            return Ok(None);
        };
        let mut v: WorkflowVersion = data(&item)?;
        v.archived_at = match head.get("archived_at") {
            Some(aws_sdk_dynamodb::types::AttributeValue::S(a)) => Some(
                DateTime::parse_from_rfc3339(a)
                    .map_err(|e| StoreError::Unavailable(format!("corrupt archived_at: {e}")))?
                    .with_timezone(&Utc),
            ),
            _ => None,
        };
        Ok(Some(v))
    }

    async fn list_workflows(
        &self,
        ws: &WorkspaceId,
        page: &PageRequest,
    ) -> StoreResult<Page<WorkflowSummary>> {
        let after = page
            .cursor
            .as_ref()
            .map(|c| c.position().to_owned())
            .filter(|a| !a.is_empty());
        let want = page.limit as usize + 1;
        let mut items: Vec<WorkflowSummary> = Vec::new();
        let mut start: Option<Item> = None;
        // A filter applies after DynamoDB's page limit: read pages until
        // enough live workflows are found.
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(head_pk(ws)));
            if let Some(after) = &after {
                q = q
                    .key_condition_expression("pk = :pk AND sk > :after")
                    .expression_attribute_values(":after", s(after.clone()));
            }
            let out = q
                .filter_expression("attribute_not_exists(archived_at)")
                .consistent_read(true)
                .limit(want as i32)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(sdk)?;
            for item in out.items() {
                items.push(data(item)?);
            }
            match out.last_evaluated_key {
                Some(k) if items.len() < want => start = Some(k),
                _ => break,
            }
        }
        Ok(Page::from_overfetch(items, page.limit, |w| {
            w.id.to_string()
        }))
    }

    async fn workflows_listening(
        &self,
        ws: &WorkspaceId,
        event: &str,
        limit: usize,
    ) -> StoreResult<Vec<WorkflowSummary>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(format!("{ws}#EVENT#{event}")))
            .limit(limit as i32)
            .send()
            .await
            .map_err(sdk)?;
        let heads: Vec<Item> = out
            .items()
            .iter()
            .map(|i| Ok(key(head_pk(ws), super::get_s(i, "sk")?)))
            .collect::<StoreResult<_>>()?;
        let mut found = Vec::new();
        for head in self.batch_get(heads).await? {
            if head.contains_key("archived_at") {
                continue;
            }
            let summary: WorkflowSummary = data(&head)?;
            if summary.events.iter().any(|e| e == event) {
                found.push(summary);
            }
        }
        found.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        Ok(found)
    }

    async fn archive_workflow(
        &self,
        ws: &WorkspaceId,
        id: &WorkflowId,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(head_pk(ws), id.as_str())))
            .update_expression("SET archived_at = :at")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(archived_at)")
            .expression_attribute_values(":at", s(at.to_rfc3339()))
            .send()
            .await;
        match res.map_err(sdk) {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
