//! Outbound webhooks: a workspace's endpoints in one partition
//! (`{ws}#ENDPOINTS`, the endpoint id as sort key, with the count item
//! `#COUNT`); each endpoint's deliveries in one (`{ws}#DELIVERY#{ep}`,
//! ids sorting by when the run ended), those pending also in the index
//! `gsi2` (`WHDUE#{shard}`, due time + ids). The outbox: a run that ended
//! is there itself (its last save puts the run item in `gsi2` under
//! `ENDED#{shard}` when its workspace has endpoints, `runs::index_keys`);
//! other events of a save (a step that waits, fails, hits the budget) are
//! an item beside the run's (`OUTBOX#{revision}`, in `gsi2` under
//! `OUTBOX#{shard}`) written in the save's transaction. `forget_outbox`
//! takes either out.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{DynamoStore, Item, data, get_s, key, n, run_pk, s, sdk, ts};
use crate::domain::{
    Delivery, DeliveryStatus, Endpoint, EndpointId, OutboxEntry, RunEvent, RunId, RunRecord,
    StepRecord, WorkspaceId,
};
use crate::ports::{Cursor, Page, PageRequest, StoreError, StoreResult, WebhookStore};

/// Partitions of the due-deliveries and ended-runs indexes.
pub(super) const SHARDS: u32 = 4;

fn shard_of(id: &str) -> u32 {
    id.bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % SHARDS
}

fn endpoints_pk(ws: &WorkspaceId) -> String {
    format!("{ws}#ENDPOINTS")
}

fn deliveries_pk(ws: &WorkspaceId, ep: &EndpointId) -> String {
    format!("{ws}#DELIVERY#{ep}")
}

fn by_status_pk(ws: &WorkspaceId, ep: &EndpointId, status: DeliveryStatus) -> String {
    format!("{ws}#DELIVERY#{ep}#{}", status.as_str())
}

/// The ended-runs index keys of a run that ended.
pub(super) fn ended_keys(ws: &WorkspaceId, run: &RunId, at: DateTime<Utc>) -> (String, String) {
    (
        format!("ENDED#{}", shard_of(run.as_str())),
        format!("{}#{ws}#{run}", ts(at)),
    )
}

fn endpoint_item(e: &Endpoint) -> StoreResult<Item> {
    let mut item = key(endpoints_pk(&e.workspace_id), e.id.as_str());
    item.insert("data".into(), s(serde_json::to_string(e)?));
    item.insert("revision".into(), n(e.revision));
    Ok(item)
}

fn delivery_item(d: &Delivery) -> StoreResult<Item> {
    let mut item = key(deliveries_pk(&d.workspace_id, &d.endpoint_id), &d.id);
    item.insert("data".into(), s(serde_json::to_string(d)?));
    item.insert("revision".into(), n(d.revision));
    // Forgotten by DynamoDB's TTL once kept long enough (with its endpoint's
    // deletion too, at the latest then).
    let until = d.created_at + chrono::Duration::days(crate::app::DELIVERY_RETENTION_DAYS);
    item.insert("ttl".into(), n(until.timestamp()));
    // Listed by status (`?status=failed`: the dead letters).
    item.insert(
        "gsi1pk".into(),
        s(by_status_pk(&d.workspace_id, &d.endpoint_id, d.status)),
    );
    item.insert("gsi1sk".into(), s(&d.id));
    if let Some(due) = d.next_attempt_at {
        item.insert("gsi2pk".into(), s(format!("WHDUE#{}", shard_of(&d.id))));
        item.insert(
            "gsi2sk".into(),
            s(format!(
                "{}#{}#{}#{}",
                ts(due),
                d.workspace_id,
                d.endpoint_id,
                d.id
            )),
        );
    }
    Ok(item)
}

/// How long a process trusts what it read of whether a workspace has
/// endpoints (a save with events to tell reads it: one read per finished
/// run otherwise). That it has some is trusted long (an endpoint deleted
/// meanwhile costs an outbox entry that makes nothing); that it has none
/// only briefly: a new endpoint hears of runs that end from at most this
/// long after it was made.
const ENDPOINT_FLAG_TTL: std::time::Duration = std::time::Duration::from_secs(30);
const NO_ENDPOINT_FLAG_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most workspaces remembered (all are forgotten past it).
const ENDPOINT_FLAGS_KEPT: usize = 10_000;

/// Whether workspaces have endpoints, as this process lately read.
type Flags = std::collections::HashMap<WorkspaceId, (bool, std::time::Instant)>;

#[derive(Clone, Default)]
pub(super) struct EndpointFlags(std::sync::Arc<std::sync::Mutex<Flags>>);

impl EndpointFlags {
    fn get(&self, ws: &WorkspaceId) -> Option<bool> {
        let map = self.0.lock().ok()?;
        map.get(ws)
            .filter(|(v, at)| {
                at.elapsed()
                    < if *v {
                        ENDPOINT_FLAG_TTL
                    } else {
                        NO_ENDPOINT_FLAG_TTL
                    }
            })
            .map(|(v, _)| *v)
    }

    fn set(&self, ws: &WorkspaceId, v: bool) {
        if let Ok(mut map) = self.0.lock() {
            if map.len() >= ENDPOINT_FLAGS_KEPT {
                map.clear();
            }
            map.insert(ws.clone(), (v, std::time::Instant::now()));
        }
    }
}

impl DynamoStore {
    /// Whether the workspace has webhook endpoints (its count item; what
    /// this process read in the last `ENDPOINT_FLAG_TTL`, or changed).
    pub(super) async fn has_endpoints(&self, ws: &WorkspaceId) -> StoreResult<bool> {
        if let Some(v) = self.endpoint_flags.get(ws) {
            return Ok(v);
        }
        let v = self
            .get(key(endpoints_pk(ws), "#COUNT"))
            .await?
            .and_then(|i| i.get("n").and_then(|v| v.as_n().ok()).cloned())
            .and_then(|v| v.parse::<i64>().ok())
            .is_some_and(|v| v > 0);
        self.endpoint_flags.set(ws, v);
        Ok(v)
    }
}

impl DynamoStore {
    /// A page of an endpoint's deliveries with one status, through the
    /// index `gsi1` (read eventually consistently: each item read back
    /// decides).
    async fn deliveries_by_status(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        status: DeliveryStatus,
        before: &str,
        limit: u32,
    ) -> StoreResult<Page<Delivery>> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name("gsi1")
            .key_condition_expression("gsi1pk = :pk AND gsi1sk < :before")
            .expression_attribute_values(":pk", s(by_status_pk(ws, endpoint, status)))
            .expression_attribute_values(":before", s(before))
            .scan_index_forward(false)
            .limit(limit as i32 + 1)
            .send()
            .await
            .map_err(sdk)?;
        let mut keys = out
            .items
            .unwrap_or_default()
            .iter()
            .map(|i| Ok(key(get_s(i, "pk")?, get_s(i, "sk")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        // Whether there is more is told by the index, not by what is left
        // once items whose status moved on are dropped.
        let next_cursor = if keys.len() > limit as usize {
            keys.truncate(limit as usize);
            keys.last()
                .map(|k| get_s(k, "sk").map(Cursor::from_position))
                .transpose()?
        } else {
            None
        };
        let items = self
            .batch_get(keys)
            .await?
            .iter()
            .map(data)
            .filter(|d: &StoreResult<Delivery>| d.as_ref().map_or(true, |d| d.status == status))
            .collect::<StoreResult<_>>()?;
        Ok(Page { items, next_cursor })
    }
}

#[async_trait]
impl WebhookStore for DynamoStore {
    async fn create_endpoint(&self, e: &Endpoint, most: usize) -> StoreResult<bool> {
        let made = self
            .create_counted(
                key(endpoints_pk(&e.workspace_id), "#COUNT"),
                most,
                vec![endpoint_item(e)?],
                &format!("endpoint `{}`", e.id),
            )
            .await?;
        if made {
            self.endpoint_flags.set(&e.workspace_id, true);
        }
        Ok(made)
    }

    async fn get_endpoint(
        &self,
        ws: &WorkspaceId,
        id: &EndpointId,
    ) -> StoreResult<Option<Endpoint>> {
        self.get(key(endpoints_pk(ws), id.as_str()))
            .await?
            .map(|i| data(&i))
            .transpose()
    }

    async fn list_endpoints(&self, ws: &WorkspaceId) -> StoreResult<Vec<Endpoint>> {
        self.query_between(endpoints_pk(ws), "ep_", "ep`")
            .await?
            .iter()
            .map(data)
            .collect()
    }

    async fn save_endpoint(&self, e: &Endpoint) -> StoreResult<()> {
        self.put_conditioned(
            endpoint_item(e)?,
            e.revision,
            format!("endpoint `{}`", e.id),
        )
        .await
    }

    async fn delete_endpoint(&self, ws: &WorkspaceId, id: &EndpointId) -> StoreResult<bool> {
        self.delete_counted(
            key(endpoints_pk(ws), "#COUNT"),
            key(endpoints_pk(ws), id.as_str()),
            Vec::new(),
        )
        .await
    }

    async fn create_delivery(&self, d: &Delivery) -> StoreResult<bool> {
        match self.put(delivery_item(d)?, true).await {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn get_delivery(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        id: &str,
    ) -> StoreResult<Option<Delivery>> {
        self.get(key(deliveries_pk(ws, endpoint), id))
            .await?
            .map(|i| data(&i))
            .transpose()
    }

    async fn save_delivery(&self, d: &Delivery) -> StoreResult<()> {
        self.put_conditioned(
            delivery_item(d)?,
            d.revision,
            format!("delivery `{}`", d.id),
        )
        .await
    }

    async fn list_deliveries(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        status: Option<DeliveryStatus>,
        page: &PageRequest,
    ) -> StoreResult<Page<Delivery>> {
        let before = page
            .cursor
            .as_ref()
            .map_or_else(|| "msg`".to_owned(), |c| c.position().to_owned());
        if let Some(status) = status {
            return self
                .deliveries_by_status(ws, endpoint, status, &before, page.limit)
                .await;
        }
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :before")
            .expression_attribute_values(":pk", s(deliveries_pk(ws, endpoint)))
            .expression_attribute_values(":from", s("msg_"))
            .expression_attribute_values(":before", s(before.clone()))
            .scan_index_forward(false)
            .limit(page.limit as i32 + 2)
            .send()
            .await
            .map_err(sdk)?;
        let items: Vec<Delivery> = out
            .items
            .unwrap_or_default()
            .iter()
            .filter(|i| get_s(i, "sk").is_ok_and(|sk| sk < before.as_str()))
            .map(data)
            .collect::<StoreResult<_>>()?;
        Ok(Page::from_overfetch(items, page.limit, |d| d.id.clone()))
    }

    async fn due_deliveries(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        busy: &[WorkspaceId],
    ) -> StoreResult<Vec<Delivery>> {
        let bound = format!("{}$", ts(now));
        let keys: Vec<Item> = self
            .index_below("WHDUE#", SHARDS, &bound, limit)
            .await?
            .iter()
            .map(|i| Ok(key(get_s(i, "pk")?, get_s(i, "sk")?)))
            .collect::<StoreResult<_>>()?;
        let mut due = Vec::new();
        for i in self.batch_get(keys).await? {
            let d: Delivery = data(&i)?;
            // The index is read eventually consistently: the item decides.
            if d.next_attempt_at.is_some_and(|t| t <= now) && !busy.contains(&d.workspace_id) {
                due.push(d);
            }
        }
        Ok(due)
    }

    async fn forget_deliveries(&self, _before: DateTime<Utc>) -> StoreResult<usize> {
        // DynamoDB's TTL does it: each delivery's `ttl` is set when written.
        Ok(0)
    }

    async fn take_send(
        &self,
        ws: &WorkspaceId,
        endpoint: &EndpointId,
        second: i64,
        limit: u32,
    ) -> StoreResult<bool> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(
                format!("{ws}#EPRATE#{endpoint}"),
                second.to_string(),
            )))
            .update_expression("ADD n :one SET #ttl = :ttl")
            .condition_expression("attribute_not_exists(n) OR n < :limit")
            .expression_attribute_names("#ttl", "ttl")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            // Forgotten by DynamoDB's TTL a while after its second.
            .expression_attribute_values(":ttl", n(second + 120))
            .send()
            .await
            .map_err(sdk);
        match res {
            Ok(_) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn outbox(&self, limit: usize) -> StoreResult<Vec<OutboxEntry>> {
        let mut out = Vec::new();
        for i in self.index_below("ENDED#", SHARDS, "~", limit).await? {
            // `{time}#{ws}#{run}`
            let sk = get_s(&i, "gsi2sk")?;
            let mut parts = sk.rsplitn(3, '#');
            if let (Some(run), Some(ws)) = (parts.next(), parts.next()) {
                out.push(OutboxEntry {
                    workspace_id: WorkspaceId::from_string(ws),
                    run_id: RunId::from_string(run),
                    events: vec![RunEvent::Ended],
                    key: ENDED_KEY.into(),
                });
            }
        }
        let room = limit.saturating_sub(out.len());
        if room == 0 {
            return Ok(out);
        }
        let keys: Vec<Item> = self
            .index_below("OUTBOX#", SHARDS, "~", room)
            .await?
            .iter()
            .map(|i| Ok(key(get_s(i, "pk")?, get_s(i, "sk")?)))
            .collect::<StoreResult<_>>()?;
        for i in self.batch_get(keys).await? {
            out.push(OutboxEntry {
                workspace_id: WorkspaceId::from_string(get_s(&i, "ws")?),
                run_id: RunId::from_string(get_s(&i, "run")?),
                events: data(&i)?,
                key: get_s(&i, "sk")?.to_owned(),
            });
        }
        Ok(out)
    }

    async fn forget_outbox(&self, entry: &OutboxEntry) -> StoreResult<()> {
        let (ws, id) = (&entry.workspace_id, &entry.run_id);
        if entry.key != ENDED_KEY {
            if !entry.key.starts_with("OUTBOX#") {
                return Ok(());
            }
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(run_pk(ws, id), &entry.key)))
                .send()
                .await
                .map_err(sdk)?;
            return Ok(());
        }
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(ws, id), "RUN")))
            .update_expression("REMOVE gsi2pk, gsi2sk")
            .condition_expression("begins_with(gsi2pk, :ended)")
            .expression_attribute_values(":ended", s("ENDED#"))
            .send()
            .await
            .map_err(sdk);
        match res {
            // Not (or no longer) in the outbox.
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The key of an outbox entry that is a run item in `ENDED#`.
const ENDED_KEY: &str = "ENDED";

impl DynamoStore {
    /// The outbox item of a save whose steps did what endpoints may be told
    /// of (waited, failed, hit the budget), if its workspace has endpoints:
    /// written in the save's transaction. (The run's end is the run item's
    /// own `ENDED#` index entry.)
    pub(super) async fn outbox_item(
        &self,
        run: &RunRecord,
        steps: &[StepRecord],
    ) -> StoreResult<Option<Item>> {
        let events: Vec<RunEvent> = RunEvent::of_save(run, steps)
            .into_iter()
            .filter(|e| *e != RunEvent::Ended)
            .collect();
        if events.is_empty() || !self.has_endpoints(&run.workspace_id).await? {
            return Ok(None);
        }
        let sk = format!("OUTBOX#{:020}", run.revision);
        let mut item = key(run_pk(&run.workspace_id, &run.id), &sk);
        item.insert("data".into(), s(serde_json::to_string(&events)?));
        item.insert("ws".into(), s(run.workspace_id.as_str()));
        item.insert("run".into(), s(run.id.as_str()));
        item.insert(
            "gsi2pk".into(),
            s(format!("OUTBOX#{}", shard_of(run.id.as_str()))),
        );
        item.insert(
            "gsi2sk".into(),
            s(format!(
                "{}#{}#{}#{sk}",
                ts(Utc::now()),
                run.workspace_id,
                run.id
            )),
        );
        Ok(Some(item))
    }
}
