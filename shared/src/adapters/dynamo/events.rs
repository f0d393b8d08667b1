//! The events a workspace was sent lately, for steps that look back
//! (`wait_for_event`'s `lookback`): one item each in the partition of
//! their name (`{ws}#EVENTS#{name}`, sorted by when they arrived), the
//! record inline or in S3 when large, forgotten by DynamoDB's TTL a day
//! later.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{DynamoStore, key, n, s, sdk, ts};
use crate::domain::WorkspaceId;
use crate::ports::{EVENT_KEEP_HOURS, EventLog, KeptEvent, StoreResult};

fn events_pk(ws: &WorkspaceId, name: &str) -> String {
    format!("{ws}#EVENTS#{name}")
}

#[async_trait]
impl EventLog for DynamoStore {
    async fn keep_event(&self, ws: &WorkspaceId, e: &KeptEvent) -> StoreResult<()> {
        // The id makes two events of one instant two items.
        let mut item = key(events_pk(ws, &e.name), format!("{}#{}", ts(e.at), e.id));
        self.set_data(&mut item, serde_json::to_string(e)?).await?;
        let until = e.at + chrono::Duration::hours(EVENT_KEEP_HOURS + 1);
        item.insert("ttl".into(), n(until.timestamp()));
        self.put(item, false).await
    }

    async fn events_since(
        &self,
        ws: &WorkspaceId,
        name: &str,
        since: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<KeptEvent>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk >= :since")
            .expression_attribute_values(":pk", s(events_pk(ws, name)))
            .expression_attribute_values(":since", s(ts(since)))
            .consistent_read(true)
            .limit(limit as i32)
            .send()
            .await
            .map_err(sdk)?;
        let mut events = Vec::new();
        for item in out.items() {
            events.push(self.read_data(item).await?);
        }
        Ok(events)
    }

    async fn forget_events(&self, _before: DateTime<Utc>) -> StoreResult<usize> {
        // DynamoDB's TTL does it: each item's `ttl` is set when written.
        Ok(0)
    }
}
