//! Request rates: one item per workspace (`{ws}#RATE`) holding the
//! workspace's TAT (`w`) and each key's (`k_<id>`), read and then written
//! on the condition that neither changed between (GCRA decides in between),
//! so every Lambda instance shares one limiter. A request costs a
//! consistent read and, if allowed, one write.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{DynamoStore, key, n, sdk};
use crate::domain::{ApiKeyId, Rate, Verdict, WorkspaceId, gcra};
use crate::ports::{RateStore, StoreError, StoreResult, Taken};

/// How many times a request re-reads a limiter another request changed.
const TRIES: usize = 8;

fn tat(item: Option<&super::Item>, name: &str) -> Option<i64> {
    item?.get(name)?.as_n().ok()?.parse().ok()
}

#[async_trait]
impl RateStore for DynamoStore {
    async fn take_request(
        &self,
        ws: &WorkspaceId,
        api_key: &ApiKeyId,
        (ws_rate, key_rate): (Rate, Rate),
        now: i64,
    ) -> StoreResult<Taken> {
        let k_name = format!("k_{api_key}");
        for _ in 0..TRIES {
            let item = self.get(key(format!("{ws}#RATE"), "RATE")).await?;
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
                .set_key(Some(key(format!("{ws}#RATE"), "RATE")))
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
                // Kept a day past its last use.
                .expression_attribute_values(":ttl", n(now / 1_000_000 + 86_400));
            if let Some(o) = old_w {
                req = req.expression_attribute_values(":ow", AttributeValue::N(o.to_string()));
            }
            if let Some(o) = old_k {
                req = req.expression_attribute_values(":ok", AttributeValue::N(o.to_string()));
            }
            match req.send().await.map_err(sdk) {
                Ok(_) => return Ok(taken),
                // Another request moved a limiter on: decide again.
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        // The workspace's limiter is that busy: it is over its rate.
        Ok(Taken {
            workspace: Verdict::Denied {
                retry_after_secs: 1,
            },
            key: Verdict::Denied {
                retry_after_secs: 1,
            },
        })
    }
}
