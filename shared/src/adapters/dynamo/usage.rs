//! Model spending: a ledger item per call in the run's partition
//! (`USE#step#attempt#try`), running totals per run (`SPEND` in the run's
//! partition) and per workspace month (`{ws}#MONTH#yyyy-mm`), and daily
//! totals per workflow (`{ws}#USAGE#yyyy-mm`, sk = `day#workflow`). Every
//! change of a charge moves all totals by the same delta in one
//! transaction; a cap is a condition on a total, so checking and reserving
//! are one atomic step. The result cache is `{ws}#CACHE#key`.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::Value;

use super::{
    DynamoStore, Item, build, cancelled_conditions, get_i, get_n, get_s, key, n, run_pk, s, sdk,
};
use crate::domain::*;
use crate::ports::{ResultCache, StoreError, StoreResult, UsageStore};

fn month(day: NaiveDate) -> String {
    format!("{:04}-{:02}", day.year(), day.month())
}

fn ledger_key(c: &Charge) -> Item {
    key(
        run_pk(&c.workspace_id, &c.run_id),
        format!("USE#{}#{:06}#{:03}", c.step_key, c.attempt, c.try_index),
    )
}

/// The fields a charge adds to every total.
fn usage_of(item: &Item) -> Usage {
    Usage {
        calls: 1,
        input_tokens: get_n(item, "input_tokens") as u64,
        output_tokens: get_n(item, "output_tokens") as u64,
        cost_usd: Usd::from_micros(get_i(item, "cost_micros")),
        cost_saved_usd: Usd::from_micros(get_i(item, "saved_micros")),
        cache_hits: get_n(item, "cache_hits") as u64,
    }
}

struct Delta {
    calls: i64,
    input: i64,
    output: i64,
    cost: Usd,
    saved: Usd,
    hits: i64,
}

fn delta(old: Option<&Usage>, new: &Usage) -> Delta {
    let o = old.copied().unwrap_or_default();
    Delta {
        calls: i64::from(old.is_none()),
        input: new.input_tokens as i64 - o.input_tokens as i64,
        output: new.output_tokens as i64 - o.output_tokens as i64,
        cost: new.cost_usd - o.cost_usd,
        saved: new.cost_saved_usd - o.cost_saved_usd,
        hits: new.cache_hits as i64 - o.cache_hits as i64,
    }
}

enum Applied {
    Done,
    Hit(CapHit),
}

impl DynamoStore {
    /// Sets the charge to `new`, moving every total by the difference, under
    /// the caps if given. Retries when the charge changed meanwhile.
    async fn apply(&self, c: &Charge, new: &Usage, caps: Option<&Caps>) -> StoreResult<Applied> {
        let day = c.at.date_naive();
        let spend_run = key(run_pk(&c.workspace_id, &c.run_id), "SPEND");
        let spend_month = key(format!("{}#MONTH#{}", c.workspace_id, month(day)), "SPEND");
        for _ in 0..8 {
            let old_item = self.get(ledger_key(c)).await?;
            let old = old_item.as_ref().map(usage_of);
            let old_rev = old_item.as_ref().map_or(0.0, |i| get_n(i, "rev")) as u64;
            let d = delta(old.as_ref(), new);

            let mut ledger = ledger_key(c);
            ledger.insert("rev".into(), n(old_rev + 1));
            ledger.insert("workflow_id".into(), s(c.workflow_id.as_str()));
            ledger.insert("day".into(), s(day.to_string()));
            ledger.insert("provider".into(), s(&c.provider));
            ledger.insert("model".into(), s(&c.model));
            ledger.insert("input_tokens".into(), n(new.input_tokens));
            ledger.insert("output_tokens".into(), n(new.output_tokens));
            ledger.insert("cost_micros".into(), n(new.cost_usd.micros()));
            ledger.insert("saved_micros".into(), n(new.cost_saved_usd.micros()));
            ledger.insert("cache_hits".into(), n(new.cache_hits));
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(ledger));
            let put = if old_item.is_some() {
                put.condition_expression("rev = :r")
                    .expression_attribute_values(":r", n(old_rev))
            } else {
                put.condition_expression("attribute_not_exists(pk)")
            };
            let mut items = vec![
                TransactWriteItem::builder()
                    .put(build(put.build())?)
                    .build(),
            ];
            let cap_of = |which: fn(&Caps) -> Option<Usd>| {
                caps.and_then(which).filter(|_| d.cost.is_positive())
            };
            let run_cap = cap_of(|c| c.run_usd);
            let month_cap = cap_of(|c| c.month_usd);
            // A call dearer than the cap itself never fits.
            if let Some(cap) = run_cap.filter(|cap| d.cost > *cap) {
                let spent = self.total(&spend_run).await?;
                return Ok(Applied::Hit(CapHit::Run {
                    cap_usd: cap,
                    spent_usd: spent,
                }));
            }
            if let Some(cap) = month_cap.filter(|cap| d.cost > *cap) {
                let spent = self.total(&spend_month).await?;
                return Ok(Applied::Hit(CapHit::Month {
                    cap_usd: cap,
                    spent_usd: spent,
                }));
            }
            for (k, cap) in [(&spend_run, run_cap), (&spend_month, month_cap)] {
                let mut u = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(k.clone()))
                    .update_expression("ADD spent_micros :d")
                    .expression_attribute_values(":d", n(d.cost.micros()));
                if let Some(cap) = cap {
                    u = u
                        .condition_expression(
                            "attribute_not_exists(spent_micros) OR spent_micros <= :room",
                        )
                        .expression_attribute_values(":room", n((cap - d.cost).micros()));
                }
                items.push(
                    TransactWriteItem::builder()
                        .update(build(u.build())?)
                        .build(),
                );
            }
            let agg = key(
                format!("{}#USAGE#{}", c.workspace_id, month(day)),
                format!("{day}#{}", c.workflow_id),
            );
            let u = Update::builder()
                .table_name(&self.table)
                .set_key(Some(agg))
                .update_expression(
                    "SET workflow_id = :wf, #day = :day ADD calls :c, input_tokens :i, output_tokens :o, cost_micros :cost, saved_micros :saved, cache_hits :h",
                )
                .expression_attribute_names("#day", "day")
                .expression_attribute_values(":wf", s(c.workflow_id.as_str()))
                .expression_attribute_values(":day", s(day.to_string()))
                .expression_attribute_values(":c", n(d.calls))
                .expression_attribute_values(":i", n(d.input))
                .expression_attribute_values(":o", n(d.output))
                .expression_attribute_values(":cost", n(d.cost.micros()))
                .expression_attribute_values(":saved", n(d.saved.micros()))
                .expression_attribute_values(":h", n(d.hits));
            items.push(
                TransactWriteItem::builder()
                    .update(build(u.build())?)
                    .build(),
            );

            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items))
                .send()
                .await;
            let e = match res {
                Ok(_) => return Ok(Applied::Done),
                Err(e) => e,
            };
            match cancelled_conditions(&e) {
                Some(f) if f.get(1) == Some(&true) => {
                    let spent = self.total(&spend_run).await?;
                    let cap_usd = run_cap.unwrap_or_default();
                    return Ok(Applied::Hit(CapHit::Run {
                        cap_usd,
                        spent_usd: spent,
                    }));
                }
                Some(f) if f.get(2) == Some(&true) => {
                    let spent = self.total(&spend_month).await?;
                    let cap_usd = month_cap.unwrap_or_default();
                    return Ok(Applied::Hit(CapHit::Month {
                        cap_usd,
                        spent_usd: spent,
                    }));
                }
                // The charge changed under us: read it again.
                Some(f) if f.first() == Some(&true) => continue,
                _ => return Err(sdk(e)),
            }
        }
        Err(StoreError::Conflict(
            "a model-call charge kept changing".into(),
        ))
    }

    async fn total(&self, k: &Item) -> StoreResult<Usd> {
        Ok(Usd::from_micros(
            self.get(k.clone())
                .await?
                .as_ref()
                .map_or(0, |i| get_i(i, "spent_micros")),
        ))
    }
}

#[async_trait]
impl UsageStore for DynamoStore {
    async fn reserve(
        &self,
        charge: &Charge,
        worst_usd: Usd,
        caps: &Caps,
    ) -> StoreResult<Result<(), CapHit>> {
        let worst = Usage {
            cost_usd: worst_usd,
            ..Usage::default()
        };
        Ok(match self.apply(charge, &worst, Some(caps)).await? {
            Applied::Done => Ok(()),
            Applied::Hit(h) => Err(h),
        })
    }

    async fn settle(&self, charge: &Charge, used: &Usage) -> StoreResult<()> {
        self.apply(charge, used, None).await.map(|_| ())
    }

    async fn run_usage(&self, ws: &WorkspaceId, run: &RunId) -> StoreResult<Usage> {
        let items = self.query_between(run_pk(ws, run), "USE#", "USE$").await?;
        let mut total = Usage::default();
        for item in &items {
            total.add(&usage_of(item));
        }
        Ok(total)
    }

    async fn usage_by_day(
        &self,
        ws: &WorkspaceId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<UsageRow>> {
        let mut rows = Vec::new();
        let mut m = from.with_day(1).unwrap_or(from);
        while m <= to {
            let pk = format!("{ws}#USAGE#{}", month(m));
            let items = self
                .query_between(pk, &from.to_string(), &format!("{to}~"))
                .await?;
            for item in &items {
                let calls = get_n(item, "calls") as u64;
                if calls == 0 {
                    continue;
                }
                rows.push(UsageRow {
                    day: get_s(item, "day")?
                        .parse()
                        .map_err(|e| StoreError::Unavailable(format!("corrupt day: {e}")))?,
                    workflow_id: WorkflowId::from_string(get_s(item, "workflow_id")?),
                    usage: Usage {
                        calls,
                        ..usage_of(item)
                    },
                });
            }
            let Some(next) = m.checked_add_months(chrono::Months::new(1)) else {
                break;
            };
            m = next;
        }
        Ok(rows)
    }
}

#[async_trait]
impl ResultCache for DynamoStore {
    async fn cached(
        &self,
        ws: &WorkspaceId,
        k: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Value>> {
        let Some(item) = self.get(key(format!("{ws}#CACHE#{k}"), "CACHE")).await? else {
            return Ok(None);
        };
        // TTL deletion lags: expiry is checked here.
        if get_s(&item, "expires_at")? <= super::ts(now).as_str() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(get_s(&item, "value")?)?))
    }

    async fn put_cached(
        &self,
        ws: &WorkspaceId,
        k: &str,
        value: &Value,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut item = key(format!("{ws}#CACHE#{k}"), "CACHE");
        item.insert("value".into(), s(value.to_string()));
        item.insert("expires_at".into(), s(super::ts(expires_at)));
        item.insert("ttl".into(), n(expires_at.timestamp()));
        self.put(item, false).await
    }
}
