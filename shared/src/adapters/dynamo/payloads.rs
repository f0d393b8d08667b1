//! Large records: a run or step whose JSON would not fit a DynamoDB item
//! (400 KB, and 4 MB per transaction) is written to the S3 payload bucket
//! and the item names it in `data_ref` instead of holding `data`. Readers
//! get the same record either way.

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_s3::primitives::ByteStream;

use super::{DynamoStore, Item, data, get_s, s};
use crate::ports::{StoreError, StoreResult};

/// Largest JSON kept in the item itself. Well under the item limit so that a
/// transaction of many steps stays under its own limit, and small records
/// (nearly all) cost no S3 request.
pub const INLINE_MAX_BYTES: usize = 64 * 1024;

#[derive(Clone)]
pub(super) struct Payloads {
    client: aws_sdk_s3::Client,
    bucket: String,
}

fn s3_error<E: std::fmt::Debug>(what: &str, e: E) -> StoreError {
    StoreError::Unavailable(format!("S3 {what}: {e:?}"))
}

impl DynamoStore {
    /// Stores records too large for an item in `bucket`.
    pub fn with_payloads(mut self, client: aws_sdk_s3::Client, bucket: impl Into<String>) -> Self {
        self.payloads = Some(Payloads {
            client,
            bucket: bucket.into(),
        });
        self
    }

    /// Puts `json` into the item: inline, or in S3 when large.
    pub(super) async fn set_data(&self, item: &mut Item, json: String) -> StoreResult<()> {
        if json.len() <= INLINE_MAX_BYTES {
            item.insert("data".into(), s(json));
            return Ok(());
        }
        let Some(p) = &self.payloads else {
            return Err(StoreError::Unavailable(format!(
                "a record of {} bytes does not fit an item and no payload bucket is configured (WEFT_BUCKET)",
                json.len()
            )));
        };
        // Under the item's partition (workspace first), new for each write:
        // a reader of the previous item version still finds its object.
        let key = format!(
            "{}/{}/{}.json",
            get_s(item, "pk")?.replace('#', "/"),
            get_s(item, "sk")?.replace('#', "/"),
            ulid::Ulid::new()
        );
        p.client
            .put_object()
            .bucket(&p.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(json.into_bytes()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", e))?;
        item.insert("data_ref".into(), s(key));
        Ok(())
    }

    /// The record an item holds, fetched from S3 when it is there.
    pub(super) async fn read_data<T: serde::de::DeserializeOwned>(
        &self,
        item: &Item,
    ) -> StoreResult<T> {
        if !item.contains_key("data_ref") {
            return data(item);
        }
        Ok(serde_json::from_slice(&self.read_raw(item).await?)?)
    }

    /// The JSON of the record an item holds, unparsed.
    pub(super) async fn read_raw(&self, item: &Item) -> StoreResult<Vec<u8>> {
        let Some(AttributeValue::S(key)) = item.get("data_ref") else {
            return Ok(super::get_s(item, "data")?.as_bytes().to_vec());
        };
        let p = self.payloads.as_ref().ok_or_else(|| {
            StoreError::Unavailable("a record is in S3 but no payload bucket is configured".into())
        })?;
        let out = p
            .client
            .get_object()
            .bucket(&p.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error("GetObject", e))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| s3_error("GetObject body", e))?
            .into_bytes();
        Ok(bytes.to_vec())
    }
}
