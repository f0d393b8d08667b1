//! The events a workspace was sent lately, for steps that look back
//! (`wait_for_event`'s `lookback`): one item each in the partition of
//! their name (`{ws}#EVENTS#{name}`, sorted by when they arrived), written
//! in one transaction with an item of its id (`{ws}#EVENTID`, when it
//! arrived) so that each id is kept once; forgotten by DynamoDB's TTL a
//! day later.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use aws_sdk_dynamodb::types::{Put, TransactWriteItem};

use super::{DynamoStore, Item, get_s, key, n, s, sdk, ts};
use crate::domain::WorkspaceId;
use crate::ports::{EVENT_KEEP_HOURS, EventLog, KeptEvent, StoreError, StoreResult};

fn events_pk(ws: &WorkspaceId, name: &str) -> String {
    format!("{ws}#EVENTS#{name}")
}

#[async_trait]
impl EventLog for DynamoStore {
    async fn keep_event(&self, ws: &WorkspaceId, e: &KeptEvent) -> StoreResult<DateTime<Utc>> {
        let until = n((e.at + chrono::Duration::hours(EVENT_KEEP_HOURS + 1)).timestamp());
        // The id's item (when it was received) and the event's, written
        // together once: a repeat finds the id's.
        let mut id_item = key(format!("{ws}#EVENTID"), &e.id);
        id_item.insert("at".into(), s(ts(e.at)));
        id_item.insert("ttl".into(), until.clone());
        let mut item = key(events_pk(ws, &e.name), format!("{}#{}", ts(e.at), e.id));
        self.set_data(&mut item, serde_json::to_string(e)?).await?;
        item.insert("ttl".into(), until);
        let put = |item: Item, only_new: bool| -> StoreResult<TransactWriteItem> {
            let mut p = Put::builder().table_name(&self.table).set_item(Some(item));
            if only_new {
                p = p.condition_expression("attribute_not_exists(pk)");
            }
            let p = p
                .build()
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            Ok(TransactWriteItem::builder().put(p).build())
        };
        let written = self
            .transact(vec![put(id_item, true)?, put(item, false)?])
            .await?;
        if written.is_none() {
            return Ok(e.at);
        }
        let seen = self.get(key(format!("{ws}#EVENTID"), &e.id)).await?;
        Ok(seen
            .as_ref()
            .and_then(|i| get_s(i, "at").ok())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(e.at, |t| t.with_timezone(&Utc)))
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
