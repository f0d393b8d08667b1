//! The AWS store: every store port on one DynamoDB table (`pk`, `sk`, the
//! index `gsi1` on `gsi1pk`/`gsi1sk` for listings, and `gsi2` on
//! `gsi2pk`/`gsi2sk` for active runs). Partition keys start with the
//! workspace id, and each run is a partition of its own (run item, steps,
//! logs, model-call charges), so a busy workspace spreads its step writes
//! over as many partitions as it has runs. Records are stored as JSON in
//! `data`, next to the attributes that keys and conditions need.

mod audit;
mod counted;
mod events;
mod hooks;
mod log_chunks;
mod packed;
mod payloads;
mod rates;
mod runs;
mod schedules;
mod tenants;
mod tokens;
mod usage;
mod webhooks;
mod workflows;

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;

pub use payloads::INLINE_MAX_BYTES;

use crate::ports::{StoreError, StoreResult};

/// Implements the store ports on one DynamoDB table.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    payloads: Option<payloads::Payloads>,
    /// How the runs this process last read or wrote keep their steps.
    layouts: packed::Layouts,
    /// Whether workspaces have webhook endpoints, as lately read.
    endpoint_flags: webhooks::EndpointFlags,
}

impl DynamoStore {
    /// One item by key, read consistently.
    async fn get(&self, key: Item) -> StoreResult<Option<Item>> {
        Ok(self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(sdk)?
            .item)
    }

    /// Every item of a partition between two sort keys (inclusive), read
    /// consistently, all pages.
    async fn query_between(&self, pk: String, from: &str, to: &str) -> StoreResult<Vec<Item>> {
        let mut all = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                .expression_attribute_values(":pk", s(pk.clone()))
                .expression_attribute_values(":a", s(from))
                .expression_attribute_values(":b", s(to))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(sdk)?;
            all.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => return Ok(all),
            }
        }
    }

    /// The keys in index `gsi2` under `{prefix}0` … `{prefix}{shards - 1}`
    /// whose sort key is below `before`: at most `limit` from each
    /// partition, then the first `limit` of all by sort key. (Sharded
    /// partitions spread the writes of a busy index; a reader visits each.)
    async fn index_below(
        &self,
        prefix: &str,
        shards: u32,
        before: &str,
        limit: usize,
    ) -> StoreResult<Vec<Item>> {
        let mut found: Vec<Item> = Vec::new();
        for shard in 0..shards {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("gsi2")
                .key_condition_expression("gsi2pk = :pk AND gsi2sk < :before")
                .expression_attribute_values(":pk", s(format!("{prefix}{shard}")))
                .expression_attribute_values(":before", s(before))
                .limit(limit as i32)
                .send()
                .await
                .map_err(sdk)?;
            found.extend(out.items.unwrap_or_default());
        }
        let sk = |i: &Item| get_s(i, "gsi2sk").map(str::to_owned).unwrap_or_default();
        found.sort_by_key(sk);
        found.truncate(limit);
        Ok(found)
    }

    /// Writes an item; with `only_new`, only if no item has its key.
    async fn put(&self, item: Item, only_new: bool) -> StoreResult<()> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        if only_new {
            req = req.condition_expression("attribute_not_exists(pk)");
        }
        req.send().await.map_err(sdk)?;
        Ok(())
    }

    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            payloads: None,
            layouts: packed::Layouts::default(),
            endpoint_flags: Default::default(),
        }
    }
}

type Item = HashMap<String, AttributeValue>;

/// The partition of a run: its item, steps, logs and model-call charges.
fn run_pk(ws: &crate::domain::WorkspaceId, run: &crate::domain::RunId) -> String {
    format!("{ws}#RUN#{run}")
}

/// A request builder's error (a missing required field: a bug here).
fn build<T, E: std::fmt::Display>(r: Result<T, E>) -> StoreResult<T> {
    r.map_err(|e| StoreError::Unavailable(e.to_string()))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn get_s<'a>(item: &'a Item, name: &str) -> StoreResult<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(StoreError::Unavailable(format!(
            "stored item lacks the string `{name}`"
        ))),
    }
}

fn get_n(item: &Item, name: &str) -> f64 {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// A whole number attribute (0 when absent or not a whole number).
fn get_i(item: &Item, name: &str) -> i64 {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().unwrap_or(0),
        _ => 0,
    }
}

fn data<T: serde::de::DeserializeOwned>(item: &Item) -> StoreResult<T> {
    Ok(serde_json::from_str(get_s(item, "data")?)?)
}

/// Any SDK failure: a lost condition is a Conflict, the rest Unavailable.
fn sdk<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = e.code().unwrap_or_default().to_owned();
    if code == "ConditionalCheckFailedException" {
        return StoreError::Conflict("a conditional write lost".into());
    }
    match e.message() {
        Some(msg) => StoreError::Unavailable(format!("DynamoDB: {code}: {msg}")),
        None => StoreError::Unavailable(format!("DynamoDB: {}", DisplayErrorContext(&e))),
    }
}

/// Which items of a cancelled transaction failed their condition.
fn cancelled_conditions(
    e: &SdkError<
        aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError,
        impl std::fmt::Debug,
    >,
) -> Option<Vec<bool>> {
    use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError as E;
    match e.as_service_error() {
        Some(E::TransactionCanceledException(t)) => Some(
            t.cancellation_reasons()
                .iter()
                .map(|r| r.code() == Some("ConditionalCheckFailed"))
                .collect(),
        ),
        _ => None,
    }
}

/// Timestamps stored for comparison in conditions: fixed width, so that
/// string order is time order.
fn ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Creates the table as template.yaml declares it (for emulated AWS and
/// tests; a deployment gets it from the stack).
pub async fn create_table(client: &Client, name: &str) -> anyhow::Result<()> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
        Projection, ProjectionType, ScalarAttributeType,
    };
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let ks = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
    };
    client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .attribute_definitions(attr("gsi1pk")?)
        .attribute_definitions(attr("gsi1sk")?)
        .attribute_definitions(attr("gsi2pk")?)
        .attribute_definitions(attr("gsi2sk")?)
        .key_schema(ks("pk", KeyType::Hash)?)
        .key_schema(ks("sk", KeyType::Range)?)
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("gsi1")
                .key_schema(ks("gsi1pk", KeyType::Hash)?)
                .key_schema(ks("gsi1sk", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::Include)
                        .non_key_attributes("status")
                        .non_key_attributes("workflow_id")
                        .build(),
                )
                .build()?,
        )
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name("gsi2")
                .key_schema(ks("gsi2pk", KeyType::Hash)?)
                .key_schema(ks("gsi2sk", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()?,
        )
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating table {name}: {}", DisplayErrorContext(&e)))?;
    Ok(())
}

#[cfg(all(test, feature = "emulated-aws-tests"))]
mod tests;
