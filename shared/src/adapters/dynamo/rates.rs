//! Request rates: one item per workspace (`{ws}#RATE`) holding the
//! workspace's TAT (`w`) and each key's (`k_<id>`), read and then written
//! on the condition that neither changed between (GCRA decides in between),
//! so every Lambda instance shares one limiter. A request costs a
//! consistent read (of its two attributes) and, if allowed, one write. A
//! key's limiter is its rotation chain's (`ApiKeyId` of the first key):
//! rotating gives no fresh allowance, and the item holds only live keys'
//! (a deleted key's is removed).

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::AttributeValue;
use aws_smithy_runtime_api::http::Response as HttpResponse;

use super::{DynamoStore, key, n, sdk};
use crate::domain::{ApiKeyId, Rate, Verdict, WorkspaceId, gcra};
use crate::ports::{RateStore, StoreError, StoreResult, Taken};

/// How many times a request re-reads a limiter another request changed.
const TRIES: u32 = 8;

fn tat(item: Option<&super::Item>, name: &str) -> Option<i64> {
    item?.get(name)?.as_n().ok()?.parse().ok()
}

/// DynamoDB refused for load: the workspace's own flood, most likely.
fn throttled<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| {
            matches!(
                c,
                "ProvisionedThroughputExceededException"
                    | "ThrottlingException"
                    | "RequestLimitExceeded"
            )
        })
}

fn refused_workspace() -> Taken {
    Taken {
        workspace: Verdict::Denied {
            retry_after_secs: 1,
        },
        key: Verdict::Allowed {
            tat: 0,
            remaining: 0,
            reset_secs: 0,
        },
    }
}

impl DynamoStore {
    /// A deleted key's limiter goes with it (the item holds those of
    /// live keys only).
    pub(super) async fn forget_rate(&self, ws: &WorkspaceId, limiter: &str) -> StoreResult<()> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(format!("{ws}#RATE"), "RATE")))
            .update_expression("REMOVE #k")
            .expression_attribute_names("#k", format!("k_{limiter}"))
            .send()
            .await
            .map_err(sdk)?;
        Ok(())
    }
}

#[async_trait]
impl RateStore for DynamoStore {
    async fn take_request(
        &self,
        ws: &WorkspaceId,
        limiter: &ApiKeyId,
        (ws_rate, key_rate): (Rate, Rate),
        now: i64,
    ) -> StoreResult<Taken> {
        let k_name = format!("k_{limiter}");
        let item_key = key(format!("{ws}#RATE"), "RATE");
        for attempt in 0..TRIES {
            if attempt > 0 {
                // Lost to another request of the workspace: a jittered
                // pause before reading again.
                let ms = rand::random_range(0..(2 << attempt.min(5)));
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            let read = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(item_key.clone()))
                .consistent_read(true)
                .projection_expression("w, #k")
                .expression_attribute_names("#k", &k_name)
                .send()
                .await;
            let item = match read {
                Ok(out) => out.item,
                Err(e) if throttled(&e) => return Ok(refused_workspace()),
                Err(e) => return Err(sdk(e)),
            };
            let (old_w, old_k) = (tat(item.as_ref(), "w"), tat(item.as_ref(), &k_name));
            let taken = Taken {
                workspace: gcra(old_w, now, ws_rate),
                key: gcra(old_k, now, key_rate),
            };
            let (Verdict::Allowed { tat: w, .. }, Verdict::Allowed { tat: k, .. }) =
                (taken.workspace, taken.key)
            else {
                return Ok(taken);
            };
            let same = |attr: &str, placeholder: &str, old: Option<i64>| match old {
                Some(_) => format!("{attr} = {placeholder}"),
                None => format!("attribute_not_exists({attr})"),
            };
            let mut req = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(item_key.clone()))
                .update_expression("SET w = :w, #k = :k, #ttl = :ttl")
                .condition_expression(format!(
                    "{} AND {}",
                    same("w", ":ow", old_w),
                    same("#k", ":ok", old_k)
                ))
                .expression_attribute_names("#k", &k_name)
                .expression_attribute_names("#ttl", "ttl")
                .expression_attribute_values(":w", n(w))
                .expression_attribute_values(":k", n(k))
                // Kept a day past the last time any limiter in it refills.
                .expression_attribute_values(":ttl", n(w.max(k) / 1_000_000 + 86_400));
            if let Some(o) = old_w {
                req = req.expression_attribute_values(":ow", AttributeValue::N(o.to_string()));
            }
            if let Some(o) = old_k {
                req = req.expression_attribute_values(":ok", AttributeValue::N(o.to_string()));
            }
            match req.send().await {
                Ok(_) => return Ok(taken),
                Err(e) if throttled(&e) => return Ok(refused_workspace()),
                Err(e) => match sdk(e) {
                    // Another request moved a limiter on: decide again.
                    StoreError::Conflict(_) => continue,
                    e => return Err(e),
                },
            }
        }
        // The workspace's limiter is that busy: it is over what it can
        // take.
        Ok(refused_workspace())
    }
}
