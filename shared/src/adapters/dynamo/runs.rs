//! Runs: one partition per run (`{ws}#RUN#{id}`) holding the run item
//! (`RUN`), its steps (`STEP#key`, or packed in the run item: `packed`) and
//! log lines (kept in the run item by the write that made them:
//! `log_chunks`; or `LOG#revision#n`, each item the lines of one save, as a
//! JSON array), so one Query loads a run with its steps. Results of attempts left for the run's next pass are
//! items of their own (`RESULT#key#attempt`, sorting just before `RUN`, so
//! the pass's one Query reads them too). Listings use the index `gsi1`
//! (`{ws}#RUNS`, run id: ULIDs sort by creation time), which holds only what
//! they filter on; the page's run items are then read from the table.
//! Unfinished runs with a lease are also in the index `gsi2` (keys only,
//! `ACTIVE#{shard}`, lease end + run), which the sweeper reads for runs whose
//! driver is gone; a finished run leaves it.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, KeysAndAttributes, Put, PutRequest, TransactWriteItem, Update,
    WriteRequest,
};
use chrono::Utc;

use super::{
    DynamoStore, Item, build, cancelled_conditions, data, get_i, get_s, key, log_chunks, n, packed,
    run_pk, s, sdk,
};
use crate::domain::{LogEntry, RunId, RunRecord, StepRecord, WorkspaceId};
use crate::ports::{
    CreateRun, IdempotencyClaim, Page, PageRequest, PendingResult, RunFilter, RunStore, RunWrite,
    StalledRuns, StoreError, StoreResult, Waiter, WriteLimits,
};

/// Most pages of waiters one read goes through.
const MAX_WAITER_PAGES: usize = 20;
/// Most items in one DynamoDB transaction.
const MAX_TRANSACTION_ITEMS: usize = 100;
/// Most changed steps one save writes in its transaction (besides the run
/// and its log items; step items are at most 64 KB inline, so the
/// transaction stays far below its 4 MB).
pub const MAX_STEPS_PER_SAVE: usize = 40;
/// Partitions of the active-runs index (`ACTIVE#0` …): writes spread, the
/// sweeper reads each.
const ACTIVE_SHARDS: u32 = 16;

/// The active-runs index keys of a run (None: it is not in the index).
fn active_keys(run: &RunRecord) -> Option<(String, String)> {
    let lease = run.lease.as_ref().filter(|_| !run.status.is_terminal())?;
    let shard = run
        .id
        .as_str()
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
        % ACTIVE_SHARDS;
    Some((
        format!("ACTIVE#{shard}"),
        format!("{}#{}#{}", super::ts(lease.until), run.workspace_id, run.id),
    ))
}

impl DynamoStore {
    /// The run item's `gsi2` keys: the active-runs index while unfinished
    /// and leased; once ended, the outbox of webhooks (`ENDED#`) if its
    /// workspace has endpoints; none otherwise.
    async fn index_keys(&self, run: &RunRecord) -> StoreResult<Option<(String, String)>> {
        if let Some(k) = active_keys(run) {
            return Ok(Some(k));
        }
        if run.status.is_terminal() && self.has_endpoints(&run.workspace_id).await? {
            let at = run.finished_at.unwrap_or_else(Utc::now);
            return Ok(Some(super::webhooks::ended_keys(
                &run.workspace_id,
                &run.id,
                at,
            )));
        }
        Ok(None)
    }
}

async fn run_attrs(
    st: &DynamoStore,
    run: &RunRecord,
    index: Option<(String, String)>,
) -> StoreResult<Item> {
    let mut item = key(run_pk(&run.workspace_id, &run.id), "RUN");
    st.set_data(&mut item, serde_json::to_string(run)?).await?;
    item.insert("revision".into(), n(run.revision));
    item.insert("status".into(), s(run.status.as_str()));
    item.insert("workflow_id".into(), s(run.workflow_id.as_str()));
    item.insert("gsi1pk".into(), s(format!("{}#RUNS", run.workspace_id)));
    item.insert("gsi1sk".into(), s(run.id.as_str()));
    if let Some((pk, sk)) = index {
        item.insert("gsi2pk".into(), s(pk));
        item.insert("gsi2sk".into(), s(sk));
    }
    Ok(item)
}

async fn step_item(store: &DynamoStore, run: &RunRecord, st: &StepRecord) -> StoreResult<Item> {
    let mut item = key(
        run_pk(&run.workspace_id, &run.id),
        format!("STEP#{}", st.key),
    );
    store
        .set_data(&mut item, serde_json::to_string(st)?)
        .await?;
    Ok(item)
}

/// Most bytes of log lines in one item: the lines of one save share items
/// (one write for many lines), far below the 400 KB item limit.
const LOG_ITEM_BYTES: usize = log_chunks::MAX_JSON_BYTES;

/// The log lines of one save, as few items as fit `LOG_ITEM_BYTES` each.
fn log_items(run: &RunRecord, logs: &[LogEntry]) -> StoreResult<Vec<Item>> {
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut bytes = 0;
    for l in logs {
        let line = serde_json::to_string(l)?;
        let len = line.len() + 1;
        match chunks.last_mut() {
            Some(c) if bytes + len <= LOG_ITEM_BYTES => c.push(line),
            _ => {
                bytes = 0;
                chunks.push(vec![line]);
            }
        }
        bytes += len;
    }
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(n, lines)| {
            let mut item = key(
                run_pk(&run.workspace_id, &run.id),
                log_chunks::item_sk(run.revision, n),
            );
            item.insert("data".into(), s(format!("[{}]", lines.join(","))));
            item
        })
        .collect())
}

/// How long a result left for a pass that never came (its run ended) is
/// kept before DynamoDB's TTL removes it.
const RESULT_TTL_DAYS: i64 = 30;

fn result_key(ws: &WorkspaceId, id: &RunId, key: &str, attempt: u32) -> Item {
    super::key(run_pk(ws, id), format!("RESULT#{key}#{attempt:06}"))
}

/// The step items among a run partition's items.
fn step_items(items: &[Item]) -> impl Iterator<Item = &Item> {
    items
        .iter()
        .filter(|i| get_s(i, "sk").is_ok_and(|sk| sk.starts_with("STEP#")))
}

fn run_item(items: &[Item]) -> Option<&Item> {
    items
        .iter()
        .find(|i| get_s(i, "sk").is_ok_and(|sk| sk == "RUN"))
}

impl DynamoStore {
    /// The result a `RESULT#key#attempt` item holds (`PendingResult::read`).
    async fn result_from(&self, item: &Item) -> StoreResult<PendingResult> {
        let sk = get_s(item, "sk")?;
        let (key, attempt) = sk
            .strip_prefix("RESULT#")
            .and_then(|rest| rest.rsplit_once('#'))
            .and_then(|(k, a)| Some((k, a.parse::<u32>().ok()?)))
            .ok_or_else(|| StoreError::Unavailable(format!("a result item's key: {sk}")))?;
        Ok(PendingResult::read(
            key,
            attempt,
            &self.read_raw(item).await?,
        ))
    }

    /// Steps of a finished run read as finished. The last save of a run
    /// may write steps that only became cancelled apart from its
    /// transaction, after it (`WriteLimits`); when those writes are lost
    /// (the process died, DynamoDB refused them past retries) no later pass
    /// writes them again, so what they would have written is made of the
    /// stored records here.
    async fn settle(&self, run: &Item, steps: &mut [StepRecord]) -> StoreResult<()> {
        use crate::domain::RunStatus;
        let status = get_s(run, "status").unwrap_or_default();
        let ended = [
            RunStatus::Completed,
            RunStatus::Failed,
            RunStatus::Cancelled,
        ]
        .iter()
        .any(|s| s.as_str() == status);
        if !ended || steps.iter().all(|s| s.status.is_terminal()) {
            return Ok(());
        }
        let head: crate::domain::RunHead = self.read_data(run).await?;
        let at = head.0.finished_at.unwrap_or_else(Utc::now);
        for st in steps {
            crate::dag::cancel_step(st, "the run ended", at);
        }
        Ok(())
    }

    /// The run among a run partition's items.
    async fn run_from(&self, items: &[Item]) -> StoreResult<Option<RunRecord>> {
        match run_item(items) {
            Some(item) => Ok(Some(self.read_data(item).await?)),
            None => Ok(None),
        }
    }

    /// The step records among a run partition's items (its run item and
    /// step items): packed in the run item, or items. None without the run
    /// item. Remembers the run's layout at the revision read.
    async fn steps_from(&self, items: &[Item]) -> StoreResult<Option<Vec<StepRecord>>> {
        let Some(run) = run_item(items) else {
            return Ok(None);
        };
        let (pk, revision) = (get_s(run, "pk")?, get_i(run, "revision") as u64);
        if let Some(recs) = packed::records(run)? {
            self.layouts
                .keep(pk, revision, packed::Layout::packed(recs.clone()));
            return Ok(Some(recs));
        }
        let mut steps = Vec::new();
        for item in step_items(items) {
            steps.push(self.read_data(item).await?);
        }
        self.settle(run, &mut steps).await?;
        self.layouts.keep(pk, revision, packed::Layout::Items);
        Ok(Some(steps))
    }

    /// The records at `keys` (those that exist, in order), from the run
    /// item (packed) or the step items read with it.
    async fn steps_at(
        &self,
        run: Option<&Item>,
        items: &[Item],
        keys: &[String],
    ) -> StoreResult<Vec<StepRecord>> {
        if let Some(recs) = run.map(packed::records).transpose()?.flatten() {
            let mut by_key: std::collections::HashMap<String, StepRecord> =
                recs.into_iter().map(|r| (r.key.clone(), r)).collect();
            return Ok(keys.iter().filter_map(|k| by_key.remove(k)).collect());
        }
        // A BatchGet reads each item consistently, not all at one moment: a
        // run unpacked between its reads shows its run item without `steps`
        // and may miss step items the unpacking wrote. Read missing ones
        // again (now that the run item shows them written).
        let again;
        let items = match items.len() < keys.len() && run.is_some() {
            true => {
                let pk = run.map(|r| get_s(r, "pk")).transpose()?.unwrap_or_default();
                again = self
                    .batch_get(keys.iter().map(|k| key(pk, format!("STEP#{k}"))).collect())
                    .await?;
                &again
            }
            false => items,
        };
        let mut steps = Vec::new();
        for item in items {
            steps.push(self.read_data(item).await?);
        }
        if let Some(run) = run {
            self.settle(run, &mut steps).await?;
        }
        Ok(steps)
    }

    /// The run item and the step items at `keys` (those that exist, in
    /// order), in one request.
    async fn run_and_steps_at(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        keys: &[String],
    ) -> StoreResult<(Option<Item>, Vec<Item>)> {
        let pk = run_pk(ws, id);
        let mut wanted = vec![key(pk.clone(), "RUN")];
        wanted.extend(keys.iter().map(|k| key(pk.clone(), format!("STEP#{k}"))));
        let mut items = self.batch_get(wanted).await?;
        let run = match items.first() {
            Some(i) if get_s(i, "sk")? == "RUN" => Some(items.remove(0)),
            _ => None,
        };
        Ok((run, items))
    }

    async fn batch_put(&self, items: Vec<Item>) -> StoreResult<()> {
        let mut reqs = Vec::with_capacity(items.len());
        for item in items {
            let put = build(PutRequest::builder().set_item(Some(item)).build())?;
            reqs.push(WriteRequest::builder().put_request(put).build());
        }
        self.batch_write(reqs).await
    }

    /// Writes in batches of 25 (BatchWriteItem's most), sending what
    /// DynamoDB left unprocessed again after a growing pause.
    async fn batch_write(&self, reqs: Vec<WriteRequest>) -> StoreResult<()> {
        for chunk in reqs.chunks(25) {
            let mut pending = Some(chunk.to_vec());
            let mut pause = std::time::Duration::from_millis(20);
            while let Some(r) = pending.take().filter(|r| !r.is_empty()) {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, r)
                    .send()
                    .await
                    .map_err(sdk)?;
                pending = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(&self.table));
                if pending.as_ref().is_some_and(|p| !p.is_empty()) {
                    if pause > std::time::Duration::from_secs(2) {
                        return Err(StoreError::Unavailable(
                            "DynamoDB left writes of a batch unprocessed".into(),
                        ));
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
            }
        }
        Ok(())
    }

    /// The items at `keys`, in that order (missing ones left out).
    pub(super) async fn batch_get(&self, keys: Vec<Item>) -> StoreResult<Vec<Item>> {
        // Found items by their whole key (the steps of a run share one
        // partition key).
        let id = |item: &Item| -> StoreResult<(String, String)> {
            Ok((get_s(item, "pk")?.to_owned(), get_s(item, "sk")?.to_owned()))
        };
        let mut found: std::collections::HashMap<(String, String), Item> = Default::default();
        for chunk in keys.chunks(100) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .consistent_read(true)
                    .build(),
            );
            while let Some(request) = pending.take() {
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, build(request)?)
                    .send()
                    .await
                    .map_err(sdk)?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    found.insert(id(&item)?, item);
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .filter(|k| !k.keys().is_empty())
                    .map(|k| {
                        KeysAndAttributes::builder()
                            .set_keys(Some(k.keys().to_vec()))
                            .consistent_read(true)
                            .build()
                    });
            }
        }
        let mut items = Vec::new();
        for k in &keys {
            if let Some(item) = found.remove(&id(k)?) {
                items.push(item);
            }
        }
        Ok(items)
    }
}

/// Every write of a run states the revision it read.
const RUN_CONDITION: &str = "revision = :prev";
/// The run item's attribute naming the write that made its revision.
const WRITER: &str = "writer";

/// A conditional update of the run item, for a transaction or alone.
struct RunUpdate {
    key: Item,
    expression: String,
    condition: String,
    names: std::collections::HashMap<String, String>,
    values: std::collections::HashMap<String, AttributeValue>,
}

/// What a write of the run item does with its packed steps.
#[derive(Clone)]
enum Packing<'a> {
    Keep,
    Set(AttributeValue),
    /// The steps are being unpacked into items (these were packed).
    Remove(&'a std::collections::BTreeMap<String, StepRecord>),
}

/// What a write of the run item does with the log lines it keeps
/// (`log_chunks`).
enum KeptLogs<'a> {
    Keep,
    /// Adds the write's lines, if there is room for them.
    Append(&'a log_chunks::Chunk),
    /// The kept lines have been copied into log items: the write's lines
    /// take their place.
    Replace(&'a log_chunks::Chunk),
}

impl DynamoStore {
    /// How the run's steps are stored at revision `prev` (a Conflict when
    /// the run is not at `prev`).
    async fn layout_at(&self, run: &RunRecord, prev: u64) -> StoreResult<packed::Layout> {
        let item = self
            .get(key(run_pk(&run.workspace_id, &run.id), "RUN"))
            .await?
            .filter(|item| get_i(item, "revision") as u64 == prev)
            .ok_or_else(|| {
                StoreError::Conflict(format!("run {} is not at revision {prev}", run.id))
            })?;
        packed::Layout::of(&item)
    }

    /// Writes a save with changed steps; returns how the steps are stored
    /// after it.
    async fn save_steps(
        &self,
        w: &RunWrite,
        layout: packed::Layout,
    ) -> StoreResult<packed::Layout> {
        let packed::Layout::Packed(recs) = layout else {
            let changed: Vec<&StepRecord> = w.steps.iter().collect();
            self.save_with_items(w, &changed, Packing::Keep).await?;
            return Ok(packed::Layout::Items);
        };
        let mut merged = (*recs).clone();
        for st in &w.steps {
            merged.insert(st.key.clone(), st.clone());
        }
        let all: Vec<&StepRecord> = merged.values().collect();
        match packed::pack(&all)? {
            // A save with an outbox item is a transaction.
            Some(value) if self.outbox_item(&w.run, &w.steps).await?.is_some() => {
                self.save_with_items(w, &[], Packing::Set(value)).await?;
                Ok(packed::Layout::packed(merged.into_values().collect()))
            }
            Some(value) => {
                self.update_run(w, Packing::Set(value)).await?;
                Ok(packed::Layout::packed(merged.into_values().collect()))
            }
            // Outgrown: every record becomes an item, once.
            None => {
                self.save_with_items(w, &all, Packing::Remove(&recs))
                    .await?;
                Ok(packed::Layout::Items)
            }
        }
    }

    /// The conditional update of the run item (`revision = :prev`).
    async fn run_update(
        &self,
        run: &RunRecord,
        packing: Packing<'_>,
        logs: KeptLogs<'_>,
        writer: &str,
    ) -> StoreResult<RunUpdate> {
        let index = self.index_keys(run).await?;
        let item = run_attrs(self, run, index.clone()).await?;
        // The record is inline (`data`) or in S3 (`data_ref`); the other
        // attribute goes.
        let (set, drop, value) = match (item.get("data"), item.get("data_ref")) {
            (Some(d), _) => ("#d", "data_ref", d.clone()),
            (None, Some(r)) => ("data_ref", "#d", r.clone()),
            (None, None) => return Err(StoreError::Unavailable("the run item has no data".into())),
        };
        let mut values: std::collections::HashMap<String, AttributeValue> = [
            (":d".to_owned(), value),
            (":rev".to_owned(), n(run.revision)),
            (":st".to_owned(), s(run.status.as_str())),
            (":prev".to_owned(), n(run.revision.saturating_sub(1))),
        ]
        .into();
        // In the active-runs index while unfinished and leased; out of it
        // otherwise. (An unchanged key writes nothing to the index.)
        // Who wrote this revision: a write whose answer was lost and that
        // the SDK sent again knows its own revision by it.
        values.insert(":wr".to_owned(), s(writer));
        let mut sets = format!("{set} = :d, revision = :rev, #st = :st, #wr = :wr");
        let mut removes = vec![drop];
        match index {
            Some((pk, sk)) => {
                values.insert(":g2p".to_owned(), s(pk));
                values.insert(":g2s".to_owned(), s(sk));
                sets.push_str(", gsi2pk = :g2p, gsi2sk = :g2s");
            }
            None => removes.extend(["gsi2pk", "gsi2sk"]),
        }
        let mut names: std::collections::HashMap<String, String> = [
            ("#d".to_owned(), "data".to_owned()),
            ("#st".to_owned(), "status".to_owned()),
            ("#wr".to_owned(), WRITER.to_owned()),
        ]
        .into();
        match packing {
            Packing::Keep => {}
            Packing::Set(v) => {
                values.insert(":sp".to_owned(), v);
                sets.push_str(", #sp = :sp");
                names.insert("#sp".to_owned(), packed::ATTR.to_owned());
            }
            Packing::Remove(_) => {
                removes.push("#sp");
                names.insert("#sp".to_owned(), packed::ATTR.to_owned());
            }
        }
        let mut condition = RUN_CONDITION.to_owned();
        match logs {
            KeptLogs::Keep => {}
            KeptLogs::Append(c) => {
                names.insert("#lg".to_owned(), log_chunks::ATTR.to_owned());
                names.insert("#lb".to_owned(), log_chunks::BYTES_ATTR.to_owned());
                values.insert(":lg".to_owned(), AttributeValue::L(vec![c.value()]));
                values.insert(":nolg".to_owned(), AttributeValue::L(Vec::new()));
                values.insert(":zero".to_owned(), n(0));
                values.insert(":lb".to_owned(), n(c.len()));
                values.insert(":room".to_owned(), n(log_chunks::MAX_BYTES - c.len()));
                sets.push_str(
                    ", #lg = list_append(if_not_exists(#lg, :nolg), :lg), \
                     #lb = if_not_exists(#lb, :zero) + :lb",
                );
                condition.push_str(" AND (attribute_not_exists(#lb) OR #lb <= :room)");
            }
            KeptLogs::Replace(c) => {
                names.insert("#lg".to_owned(), log_chunks::ATTR.to_owned());
                names.insert("#lb".to_owned(), log_chunks::BYTES_ATTR.to_owned());
                values.insert(":lg".to_owned(), AttributeValue::L(vec![c.value()]));
                values.insert(":lb".to_owned(), n(c.len()));
                sets.push_str(", #lg = :lg, #lb = :lb");
            }
        }
        Ok(RunUpdate {
            key: key(run_pk(&run.workspace_id, &run.id), "RUN"),
            expression: format!("SET {sets} REMOVE {}", removes.join(", ")),
            condition,
            names,
            values,
        })
    }

    /// Sends a run update alone (no transaction).
    async fn send_update(&self, u: RunUpdate) -> StoreResult<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(u.key))
            .update_expression(u.expression)
            .condition_expression(u.condition)
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    /// A save that changes no step items: one conditional UpdateItem of
    /// the run item (no transaction) that also keeps the save's log lines
    /// (`log_chunks`), so they hold exactly when the run's write does.
    async fn update_run(&self, w: &RunWrite, packing: Packing<'_>) -> StoreResult<()> {
        let chunk = match w.logs.is_empty() {
            true => None,
            false => match log_chunks::Chunk::of(w.run.revision, &w.logs)? {
                Some(c) => Some(c),
                // Too many lines to keep in the run item: they go in log
                // items, in a transaction with the run's write.
                None => return self.save_with_items(w, &[], packing).await,
            },
        };
        let logs = chunk.as_ref().map_or(KeptLogs::Keep, KeptLogs::Append);
        let writer = ulid::Ulid::new().to_string();
        let u = self
            .run_update(&w.run, packing.clone(), logs, &writer)
            .await?;
        match self.send_update(u).await {
            Err(StoreError::Conflict(_)) => {}
            done => return done,
        }
        // The condition failed: the run moved on, the write is ours (an
        // UpdateItem is not idempotent: the SDK may have sent it again after
        // its answer was lost; the stored writer id tells), or the kept
        // lines have no room for this save's.
        let prev = w.run.revision.saturating_sub(1);
        let pk = run_pk(&w.run.workspace_id, &w.run.id);
        let seen = self.run_state(&w.run, true).await?;
        let full = match (&seen, &chunk) {
            (Some(i), _) if self.is_ours(i, &w.run, &writer) => return Ok(()),
            (Some(i), Some(c)) if get_i(i, "revision") as u64 == prev => (i, c),
            _ => return Err(self.lost(&w.run)),
        };
        // Copy the kept lines into log items, then replace them.
        self.batch_put(log_chunks::items(&pk, full.0)?).await?;
        let writer = ulid::Ulid::new().to_string();
        let u = self
            .run_update(&w.run, packing, KeptLogs::Replace(full.1), &writer)
            .await?;
        match self.send_update(u).await {
            Err(StoreError::Conflict(_)) => match self.run_state(&w.run, false).await? {
                Some(i) if self.is_ours(&i, &w.run, &writer) => Ok(()),
                _ => Err(self.lost(&w.run)),
            },
            done => done,
        }
    }

    fn lost(&self, run: &RunRecord) -> StoreError {
        StoreError::Conflict(format!(
            "run {} is not at revision {}",
            run.id,
            run.revision.saturating_sub(1)
        ))
    }

    /// The stored run item's revision and writer (and, with `logs`, its
    /// kept log lines), read consistently.
    async fn run_state(&self, run: &RunRecord, logs: bool) -> StoreResult<Option<Item>> {
        let mut req = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(&run.workspace_id, &run.id), "RUN")))
            .consistent_read(true)
            .expression_attribute_names("#wr", WRITER);
        req = match logs {
            true => req
                .projection_expression("revision, #wr, #lg")
                .expression_attribute_names("#lg", log_chunks::ATTR),
            false => req.projection_expression("revision, #wr"),
        };
        Ok(req.send().await.map_err(sdk)?.item)
    }

    /// Whether a run item read by `run_state` is at `run.revision`,
    /// written by `writer`.
    fn is_ours(&self, item: &Item, run: &RunRecord, writer: &str) -> bool {
        get_i(item, "revision") as u64 == run.revision
            && get_s(item, WRITER).is_ok_and(|w| w == writer)
    }

    /// A save whose steps are items: one transaction of the run's update,
    /// the step items and the log lines (`Packing::Remove`: the run's
    /// packed steps become items, `steps` all of its records).
    async fn save_with_items(
        &self,
        w: &RunWrite,
        steps: &[&StepRecord],
        packing: Packing<'_>,
    ) -> StoreResult<()> {
        let run = &w.run;
        let packed_before = match &packing {
            Packing::Remove(recs) => Some(*recs),
            _ => None,
        };
        // A transaction is idempotent by its token (the SDK sets one), so
        // the writer's id is not needed to tell a resent one.
        let writer = ulid::Ulid::new().to_string();
        let u = self
            .run_update(run, packing, KeptLogs::Keep, &writer)
            .await?;
        let update = build(
            Update::builder()
                .table_name(&self.table)
                .set_key(Some(u.key))
                .update_expression(u.expression)
                .condition_expression(u.condition)
                .set_expression_attribute_names(Some(u.names))
                .set_expression_attribute_values(Some(u.values))
                .build(),
        )?;
        // Steps that only became cancelled may be written apart, once the
        // transaction has held (`WriteLimits`): a write that lost writes none
        // of them, so none can overwrite what the winner wrote. The rest is
        // one transaction with the run's conditional update, and so is
        // every record that was packed (unpacking removes them from the run
        // item: a write of them apart that was lost would lose them).
        let (ahead, steps): (Vec<&StepRecord>, Vec<&StepRecord>) =
            if steps.len() > MAX_STEPS_PER_SAVE {
                steps.iter().partition(|st| {
                    st.status == crate::domain::StepStatus::Cancelled
                        && packed_before.is_none_or(|p| !p.contains_key(&st.key))
                })
            } else {
                (Vec::new(), steps.to_vec())
            };
        let mut others = Vec::new();
        for st in steps {
            others.push(step_item(self, run, st).await?);
        }
        others.extend(log_items(run, &w.logs)?);
        others.extend(self.outbox_item(run, &w.steps).await?);
        if others.len() + 1 > MAX_TRANSACTION_ITEMS {
            return Err(StoreError::Unavailable(format!(
                "a save of run {} holds {} items; one transaction holds {MAX_TRANSACTION_ITEMS}",
                run.id,
                others.len() + 1
            )));
        }
        let mut tx = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().update(update).build());
        for item in others {
            let put = build(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .build(),
            )?;
            tx = tx.transact_items(TransactWriteItem::builder().put(put).build());
        }
        tx.send()
            .await
            .map_err(|e| match cancelled_conditions(&e) {
                Some(failed) if failed.first() == Some(&true) => StoreError::Conflict(format!(
                    "run {} is not at revision {}",
                    run.id,
                    run.revision.saturating_sub(1)
                )),
                _ => sdk(e),
            })?;
        if !ahead.is_empty() {
            let mut items = Vec::with_capacity(ahead.len());
            for st in ahead {
                items.push(step_item(self, run, st).await?);
            }
            self.batch_put(items).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl RunStore for DynamoStore {
    fn write_limits(&self) -> WriteLimits {
        WriteLimits {
            max_steps: Some(MAX_STEPS_PER_SAVE),
        }
    }

    async fn put_waiter(&self, ws: &WorkspaceId, w: &Waiter) -> StoreResult<()> {
        let mut item = key(
            format!("{ws}#WAIT#{}", w.event),
            format!("{}#{}", w.run_id, w.step_key),
        );
        item.insert("expires_at".into(), s(super::ts(w.expires_at)));
        // DynamoDB's TTL removes it a while after it is no longer waiting.
        item.insert("ttl".into(), n(w.expires_at.timestamp() + 86_400));
        self.put(item, false).await
    }

    async fn waiters(
        &self,
        ws: &WorkspaceId,
        event: &str,
        limit: usize,
    ) -> StoreResult<Vec<Waiter>> {
        // Pages until `limit` live ones (a filter would count the expired
        // ones against each page's limit); expired ones met are removed.
        let pk = format!("{ws}#WAIT#{event}");
        let now = Utc::now();
        let mut found = Vec::new();
        let mut expired = Vec::new();
        let mut start = None;
        for _ in 0..MAX_WAITER_PAGES {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(&pk))
                .consistent_read(true)
                .limit(limit.min(1000) as i32)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            for item in out.items() {
                let sk = get_s(item, "sk")?;
                let Some((run, step)) = sk.split_once('#') else {
                    continue;
                };
                let expires_at = chrono::DateTime::parse_from_rfc3339(get_s(item, "expires_at")?)
                    .map_err(|e| StoreError::Unavailable(format!("a waiter's time: {e}")))?
                    .with_timezone(&Utc);
                if expires_at <= now {
                    expired.push(key(pk.clone(), sk));
                } else if found.len() < limit {
                    found.push(Waiter {
                        event: event.to_owned(),
                        run_id: RunId::from_string(run),
                        step_key: step.to_owned(),
                        expires_at,
                    });
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() || found.len() >= limit {
                break;
            }
        }
        if !expired.is_empty() {
            let mut reqs = Vec::with_capacity(expired.len());
            for k in expired {
                let del = build(DeleteRequest::builder().set_key(Some(k)).build())?;
                reqs.push(WriteRequest::builder().delete_request(del).build());
            }
            if let Err(e) = self.batch_write(reqs).await {
                tracing::warn!(error = %e, "removing expired waiters");
            }
        }
        Ok(found)
    }

    async fn delete_waiter(&self, ws: &WorkspaceId, w: &Waiter) -> StoreResult<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(
                format!("{ws}#WAIT#{}", w.event),
                format!("{}#{}", w.run_id, w.step_key),
            )))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }

    async fn claim(
        &self,
        ws: &WorkspaceId,
        claim: &IdempotencyClaim,
    ) -> StoreResult<Option<String>> {
        let idem_key = key(format!("{ws}#IDEM#{}", claim.key), "IDEM");
        loop {
            let mut idem = idem_key.clone();
            idem.insert("request_hash".into(), s(&claim.request_hash));
            idem.insert("run_id".into(), s(""));
            idem.insert("expires_at".into(), s(super::ts(claim.expires_at)));
            idem.insert("ttl".into(), n(claim.expires_at.timestamp()));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(idem))
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                .expression_attribute_values(":now", s(super::ts(Utc::now())))
                .send()
                .await
                .map_err(sdk);
            match put {
                Ok(_) => return Ok(None),
                Err(StoreError::Conflict(_)) => match self.get(idem_key.clone()).await? {
                    Some(item) => return Ok(Some(get_s(&item, "request_hash")?.to_owned())),
                    // Gone (expired and removed) in between: claim again.
                    None => continue,
                },
                Err(e) => return Err(e),
            }
        }
    }

    async fn create_run(
        &self,
        run: &RunRecord,
        claim: Option<&IdempotencyClaim>,
    ) -> StoreResult<CreateRun> {
        // A new run keeps its steps packed in its item (see `packed`).
        let mut item = run_attrs(self, run, active_keys(run)).await?;
        if let Some(none) = packed::pack(&[])? {
            item.insert(packed::ATTR.into(), none);
        }
        let pk = run_pk(&run.workspace_id, &run.id);
        let put_run = build(
            Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(pk)")
                .build(),
        )?;
        let created = || {
            let empty = packed::Layout::packed(Vec::new());
            self.layouts.keep(&pk, run.revision, empty);
            Ok(CreateRun::Created)
        };
        let Some(claim) = claim else {
            self.put(put_run.item, true).await?;
            return created();
        };
        let idem_key = key(format!("{}#IDEM#{}", run.workspace_id, claim.key), "IDEM");
        loop {
            let mut idem = idem_key.clone();
            idem.insert("request_hash".into(), s(&claim.request_hash));
            idem.insert("run_id".into(), s(run.id.as_str()));
            idem.insert("expires_at".into(), s(super::ts(claim.expires_at)));
            idem.insert("ttl".into(), n(claim.expires_at.timestamp()));
            let put_idem = build(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(idem))
                    .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                    .expression_attribute_values(":now", s(super::ts(Utc::now())))
                    .build(),
            )?;
            let res = self
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().put(put_idem).build())
                .transact_items(TransactWriteItem::builder().put(put_run.clone()).build())
                .send()
                .await;
            let e = match res {
                Ok(_) => return created(),
                Err(e) => e,
            };
            match cancelled_conditions(&e) {
                Some(failed) if failed.first() == Some(&true) => {
                    // Gone (expired and removed) in between: claim again.
                    let Some(item) = self.get(idem_key.clone()).await? else {
                        continue;
                    };
                    return Ok(CreateRun::Existing {
                        run_id: RunId::from_string(get_s(&item, "run_id")?),
                        request_hash: get_s(&item, "request_hash")?.to_owned(),
                    });
                }
                Some(failed) if failed.iter().any(|f| *f) => {
                    return Err(StoreError::Conflict("run already exists".into()));
                }
                _ => return Err(sdk(e)),
            }
        }
    }

    async fn get_run(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Option<RunRecord>> {
        match self.get(key(run_pk(ws, id), "RUN")).await? {
            Some(item) => Ok(Some(self.read_data(&item).await?)),
            None => Ok(None),
        }
    }

    async fn get_run_head(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Option<RunRecord>> {
        match self.get(key(run_pk(ws, id), "RUN")).await? {
            Some(item) => Ok(Some(
                self.read_data::<crate::domain::RunHead>(&item).await?.0,
            )),
            None => Ok(None),
        }
    }

    async fn get_steps(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Vec<StepRecord>> {
        let items = self.query_between(run_pk(ws, id), "RUN", "STEP$").await?;
        Ok(self.steps_from(&items).await?.unwrap_or_default())
    }

    async fn get_step_heads(&self, ws: &WorkspaceId, id: &RunId) -> StoreResult<Vec<StepRecord>> {
        let items = self.query_between(run_pk(ws, id), "RUN", "STEP$").await?;
        if let Some(run) = items
            .iter()
            .find(|i| get_s(i, "sk").is_ok_and(|sk| sk == "RUN"))
            && let Some(heads) = packed::heads(run)?
        {
            return Ok(heads);
        }
        let mut steps = Vec::new();
        for item in step_items(&items) {
            steps.push(self.read_data::<crate::domain::StepHead>(item).await?.0);
        }
        if let Some(run) = run_item(&items) {
            self.settle(run, &mut steps).await?;
        }
        Ok(steps)
    }

    async fn get_step_head(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
    ) -> StoreResult<Option<StepRecord>> {
        let (run, mut steps) = self.run_and_steps_at(ws, id, &[key.to_owned()]).await?;
        if let Some(heads) = run.as_ref().map(packed::heads).transpose()?.flatten() {
            return Ok(heads.into_iter().find(|h| h.key == key));
        }
        let Some(item) = steps.pop() else {
            return Ok(None);
        };
        let mut head = [self.read_data::<crate::domain::StepHead>(&item).await?.0];
        if let Some(run) = &run {
            self.settle(run, &mut head).await?;
        }
        Ok(head.into_iter().next())
    }

    async fn get_steps_by_keys(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        keys: &[String],
    ) -> StoreResult<Vec<StepRecord>> {
        let (run, items) = self.run_and_steps_at(ws, id, keys).await?;
        self.steps_at(run.as_ref(), &items, keys).await
    }

    async fn load_run_at(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        keys: &[String],
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        let (Some(run), items) = self.run_and_steps_at(ws, id, keys).await? else {
            return Ok(None);
        };
        let steps = self.steps_at(Some(&run), &items, keys).await?;
        Ok(Some((self.read_data(&run).await?, steps)))
    }

    async fn load_run(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>)>> {
        // "RUN" sorts just before "STEP#…": one Query reads both.
        let items = self.query_between(run_pk(ws, id), "RUN", "STEP$").await?;
        let Some(run) = self.run_from(&items).await? else {
            return Ok(None);
        };
        Ok(Some((
            run,
            self.steps_from(&items).await?.unwrap_or_default(),
        )))
    }

    async fn put_result(&self, ws: &WorkspaceId, id: &RunId, r: &PendingResult) -> StoreResult<()> {
        let mut item = result_key(ws, id, &r.key, r.attempt);
        self.set_data(&mut item, serde_json::to_string(r)?).await?;
        let expires = Utc::now() + chrono::Duration::days(RESULT_TTL_DAYS);
        item.insert("ttl".into(), n(expires.timestamp()));
        // The first result of an attempt stands (a retried request that
        // had been applied finds its own).
        match self.put(item, true).await {
            Ok(()) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn has_result(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        key: &str,
        attempt: u32,
    ) -> StoreResult<bool> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(result_key(ws, id, key, attempt)))
            .consistent_read(true)
            .projection_expression("sk")
            .send()
            .await
            .map_err(sdk)?
            .item
            .is_some())
    }

    async fn pending_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Vec<PendingResult>> {
        let mut results = Vec::new();
        for item in self
            .query_between(run_pk(ws, id), "RESULT#", "RESULT$")
            .await?
        {
            results.push(self.result_from(&item).await?);
        }
        Ok(results)
    }

    async fn clear_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        attempts: &[(String, u32)],
    ) -> StoreResult<()> {
        let mut reqs = Vec::with_capacity(attempts.len());
        for (k, a) in attempts {
            let del = build(
                DeleteRequest::builder()
                    .set_key(Some(result_key(ws, id, k, *a)))
                    .build(),
            )?;
            reqs.push(WriteRequest::builder().delete_request(del).build());
        }
        self.batch_write(reqs).await
    }

    async fn load_run_with_results(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
    ) -> StoreResult<Option<(RunRecord, Vec<StepRecord>, Vec<PendingResult>)>> {
        // "RESULT#…" < "RUN" < "STEP#…": one Query reads all three.
        let items = self
            .query_between(run_pk(ws, id), "RESULT#", "STEP$")
            .await?;
        let Some(run) = self.run_from(&items).await? else {
            return Ok(None);
        };
        let steps = self.steps_from(&items).await?.unwrap_or_default();
        let mut results = Vec::new();
        for item in &items {
            if get_s(item, "sk")?.starts_with("RESULT#") {
                results.push(self.result_from(item).await?);
            }
        }
        Ok(Some((run, steps, results)))
    }

    async fn list_runs(
        &self,
        ws: &WorkspaceId,
        filter: &RunFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<RunRecord>> {
        let before = page
            .cursor
            .as_ref()
            .map_or_else(|| "~".to_owned(), |c| c.position().to_owned());
        let want = page.limit as usize + 1;
        let mut filters = Vec::new();
        if filter.status.is_some() {
            filters.push("#st = :st");
        }
        if filter.workflow_id.is_some() {
            filters.push("workflow_id = :wf");
        }
        let mut keys: Vec<Item> = Vec::new();
        let mut start = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi1")
                .key_condition_expression("gsi1pk = :pk AND gsi1sk < :before")
                .expression_attribute_values(":pk", s(format!("{ws}#RUNS")))
                .expression_attribute_values(":before", s(before.clone()))
                .scan_index_forward(false)
                .limit(want as i32)
                .set_exclusive_start_key(start.take());
            if let Some(st) = filter.status {
                q = q
                    .expression_attribute_names("#st", "status")
                    .expression_attribute_values(":st", s(st.as_str()));
            }
            if let Some(wf) = &filter.workflow_id {
                q = q.expression_attribute_values(":wf", s(wf.as_str()));
            }
            if !filters.is_empty() {
                q = q.filter_expression(filters.join(" AND "));
            }
            let out = q.send().await.map_err(sdk)?;
            for item in out.items() {
                keys.push(key(get_s(item, "pk")?, get_s(item, "sk")?));
            }
            match out.last_evaluated_key {
                Some(k) if keys.len() < want => start = Some(k),
                _ => break,
            }
        }
        keys.truncate(want);
        let mut runs: Vec<RunRecord> = Vec::new();
        for item in self.batch_get(keys).await? {
            runs.push(self.read_data::<crate::domain::RunHead>(&item).await?.0);
        }
        Ok(Page::from_overfetch(runs, page.limit, |r| r.id.to_string()))
    }

    async fn save_run(&self, w: &RunWrite) -> StoreResult<()> {
        let run = &w.run;
        let pk = run_pk(&run.workspace_id, &run.id);
        let prev = run.revision.saturating_sub(1);
        let known = self.layouts.get(&pk, prev);
        let res = if w.steps.is_empty() {
            // The run item alone: its steps stay as they are.
            self.update_run(w, Packing::Keep).await.map(|()| known)
        } else {
            let layout = match known {
                Some(l) => l,
                None => self.layout_at(run, prev).await?,
            };
            self.save_steps(w, layout).await.map(Some)
        };
        match res {
            Ok(Some(layout)) => {
                self.layouts.keep(&pk, run.revision, layout);
                Ok(())
            }
            Ok(None) => {
                self.layouts.forget(&pk);
                Ok(())
            }
            Err(e) => {
                self.layouts.forget(&pk);
                Err(e)
            }
        }
    }

    async fn list_logs(
        &self,
        ws: &WorkspaceId,
        id: &RunId,
        page: &PageRequest,
    ) -> StoreResult<Page<LogEntry>> {
        // A line's position is its item's key and its index there; the
        // cursor's item is read again and its lines up to the cursor skipped.
        let after = page.cursor.as_ref().map(|c| c.position().to_owned());
        let from = after
            .as_deref()
            .and_then(|p| p.rsplit_once('#'))
            .map_or_else(|| "LOG#".to_owned(), |(item, _)| item.to_owned());
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
            .expression_attribute_values(":pk", s(run_pk(ws, id)))
            .expression_attribute_values(":a", s(from))
            .expression_attribute_values(":b", s("LOG$"))
            .consistent_read(true)
            // Every item holds a line; the first may hold only skipped ones.
            .limit(page.limit as i32 + 2)
            .send()
            .await
            .map_err(sdk)?;
        // Lines at the same position (kept lines copied into an item while
        // still kept) are the same line.
        let mut rows: std::collections::BTreeMap<String, LogEntry> = Default::default();
        for item in out.items() {
            let sk = get_s(item, "sk")?;
            let lines: Vec<LogEntry> = data(item)?;
            for (i, l) in lines.into_iter().enumerate() {
                rows.insert(log_chunks::position(sk, i), l);
            }
        }
        // The lines the run item keeps, up to the last item read when the
        // Query stopped short (items past it are not read yet).
        let read_to = out
            .last_evaluated_key()
            .and(rows.last_key_value())
            .map(|(p, _)| p.clone());
        if let Some(run) = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(run_pk(ws, id), "RUN")))
            .consistent_read(true)
            .projection_expression("#lg")
            .expression_attribute_names("#lg", log_chunks::ATTR)
            .send()
            .await
            .map_err(sdk)?
            .item
        {
            for chunk in log_chunks::chunks(&run)? {
                for (position, l) in chunk.lines()? {
                    if read_to.as_ref().is_none_or(|r| position <= *r) {
                        rows.entry(position).or_insert(l);
                    }
                }
            }
        }
        let rows: Vec<(String, LogEntry)> = rows
            .into_iter()
            .filter(|(position, _)| after.as_ref().is_none_or(|a| position > a))
            .collect();
        let page = Page::from_overfetch(rows, page.limit, |(position, _)| position.clone());
        Ok(Page {
            items: page.items.into_iter().map(|(_, l)| l).collect(),
            next_cursor: page.next_cursor,
        })
    }
}

#[async_trait]
impl StalledRuns for DynamoStore {
    async fn stalled_runs(
        &self,
        now: chrono::DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<(WorkspaceId, RunId)>> {
        // Keys end with `#ws#run`; every key before `now` is a lease that ran
        // out (timestamps sort as text).
        let before = super::ts(now);
        let mut found = Vec::new();
        for item in self
            .index_below("ACTIVE#", ACTIVE_SHARDS, &before, limit)
            .await?
        {
            let sk = get_s(&item, "gsi2sk")?;
            let mut parts = sk.rsplitn(3, '#');
            if let (Some(run), Some(ws), Some(_until)) = (parts.next(), parts.next(), parts.next())
            {
                found.push((WorkspaceId::from_string(ws), RunId::from_string(run)));
            }
        }
        Ok(found)
    }
}
