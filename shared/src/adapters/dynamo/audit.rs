//! The audit log: one partition per workspace (`{ws}#AUDIT`, the entry's
//! id as sort key, so newest first is a backwards query), each entry with
//! its `action`, `actor` and `at` as attributes for filtering and a `ttl`
//! at the end of its retention.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::{DynamoStore, Item, data, get_s, key, n, s, sdk, ts};
use crate::domain::{AUDIT_RETENTION_DAYS, AuditEntry, AuditFilter, WorkspaceId};
use crate::ports::{AuditStore, Cursor, Page, PageRequest, StoreResult};

fn pk(ws: &WorkspaceId) -> String {
    format!("{ws}#AUDIT")
}

/// Most items one listing reads past the filter before it answers with
/// what it found and a cursor.
const MOST_READ: usize = 2_000;

#[async_trait]
impl AuditStore for DynamoStore {
    async fn append_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        let mut item = key(pk(&e.workspace_id), e.id.as_str());
        item.insert("data".into(), s(serde_json::to_string(e)?));
        item.insert("action".into(), s(e.action.clone()));
        item.insert("actor".into(), s(e.actor.clone()));
        item.insert("at".into(), s(ts(e.at)));
        let until = e.at + chrono::Duration::days(AUDIT_RETENTION_DAYS);
        item.insert("ttl".into(), n(until.timestamp()));
        self.put(item, true).await
    }

    async fn list_audit(
        &self,
        ws: &WorkspaceId,
        f: &AuditFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AuditEntry>> {
        let limit = page.limit as usize;
        let mut conditions = Vec::new();
        let mut values: Vec<(&str, AttributeValue)> = Vec::new();
        if let Some(a) = &f.action {
            conditions.push("begins_with(#action, :action)");
            values.push((":action", s(a.clone())));
        }
        if let Some(a) = &f.actor {
            conditions.push("#actor = :actor");
            values.push((":actor", s(a.clone())));
        }
        if let Some(t) = f.since {
            conditions.push("#at >= :since");
            values.push((":since", s(ts(t))));
        }
        if let Some(t) = f.until {
            conditions.push("#at < :until");
            values.push((":until", s(ts(t))));
        }
        let mut found: Vec<Item> = Vec::new();
        let mut start: Option<Item> = None;
        let mut read = 0usize;
        let mut before = page
            .cursor
            .as_ref()
            .map_or_else(|| "aud`".to_owned(), |c| c.position().to_owned());
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk < :before")
                .expression_attribute_values(":pk", s(pk(ws)))
                .expression_attribute_values(":before", s(before.clone()))
                .scan_index_forward(false)
                .limit((limit + 1) as i32)
                .set_exclusive_start_key(start.take());
            if !conditions.is_empty() {
                q = q.filter_expression(conditions.join(" AND "));
            }
            if f.since.is_some() || f.until.is_some() {
                q = q.expression_attribute_names("#at", "at");
            }
            // (`action` is one of DynamoDB's reserved words.)
            if f.action.is_some() {
                q = q.expression_attribute_names("#action", "action");
            }
            if f.actor.is_some() {
                q = q.expression_attribute_names("#actor", "actor");
            }
            for (k, v) in &values {
                q = q.expression_attribute_values(*k, v.clone());
            }
            let out = q.send().await.map_err(sdk)?;
            read += out.scanned_count as usize;
            found.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if found.len() <= limit && read < MOST_READ => {
                    before = get_s(&k, "sk")?.to_owned();
                }
                Some(k) if found.len() <= limit => {
                    // Read enough for one answer: a short page, and where
                    // to go on.
                    let items = found.iter().map(data).collect::<StoreResult<Vec<_>>>()?;
                    return Ok(Page {
                        items,
                        next_cursor: Some(Cursor::from_position(get_s(&k, "sk")?)),
                    });
                }
                _ => break,
            }
        }
        let items: Vec<AuditEntry> = found.iter().map(data).collect::<StoreResult<_>>()?;
        Ok(Page::from_overfetch(items, page.limit, |e| {
            e.id.to_string()
        }))
    }

    async fn forget_audit(&self, _before: DateTime<Utc>) -> StoreResult<usize> {
        // DynamoDB's TTL does it: each entry's `ttl` is set when written.
        Ok(0)
    }
}
