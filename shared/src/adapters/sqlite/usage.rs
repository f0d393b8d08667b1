//! Workspace settings, the usage ledger and the LLM result cache.

use async_trait::async_trait;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::SqliteStore;
use super::ts;
use crate::domain::*;
use crate::ports::{ResultCache, SettingsStore, StoreError, StoreResult, UsageStore};

/// Fixed-width timestamps, so that string order is time order.
#[async_trait]
impl SettingsStore for SqliteStore {
    async fn get_settings(&self, ws: &WorkspaceId) -> StoreResult<WorkspaceSettings> {
        let ws = ws.to_string();
        self.db
            .read(move |c| {
                let data: Option<String> = c
                    .query_row(
                        "SELECT data FROM workspace_settings WHERE workspace_id = ?1",
                        [ws],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(data
                    .map(|d| serde_json::from_str(&d))
                    .transpose()?
                    .unwrap_or_default())
            })
            .await
    }

    async fn put_settings(&self, ws: &WorkspaceId, s: &WorkspaceSettings) -> StoreResult<()> {
        let (ws, data) = (ws.to_string(), serde_json::to_string(s)?);
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO workspace_settings (workspace_id, data) VALUES (?1, ?2)
                     ON CONFLICT (workspace_id) DO UPDATE SET data = excluded.data",
                    params![ws, data],
                )?;
                Ok(())
            })
            .await
    }
}

fn month_bounds(day: NaiveDate) -> (String, String) {
    let first = day.with_day(1).unwrap_or(day);
    (
        first.to_string(),
        format!("{}-{:02}-31", first.year(), first.month()),
    )
}

fn sum(c: &Connection, sql: &str, args: impl rusqlite::Params) -> StoreResult<Usd> {
    Ok(Usd::from_micros(
        c.query_row(sql, args, |r| r.get::<_, Option<i64>>(0))?
            .unwrap_or(0),
    ))
}

fn upsert(c: &Connection, ch: &Charge, settled: bool, u: &Usage) -> StoreResult<()> {
    c.execute(
        "INSERT INTO usage_charges (workspace_id, run_id, step_key, attempt, try_index, workflow_id,
            day, provider, model, settled, input_tokens, output_tokens, cost_micros, saved_micros, cache_hit)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
         ON CONFLICT (workspace_id, run_id, step_key, attempt, try_index) DO UPDATE SET
            settled = excluded.settled, input_tokens = excluded.input_tokens,
            output_tokens = excluded.output_tokens, cost_micros = excluded.cost_micros,
            saved_micros = excluded.saved_micros, cache_hit = excluded.cache_hit",
        params![
            ch.workspace_id.as_str(),
            ch.run_id.as_str(),
            ch.step_key,
            ch.attempt,
            ch.try_index,
            ch.workflow_id.as_str(),
            ch.at.date_naive().to_string(),
            ch.provider,
            ch.model,
            settled,
            u.input_tokens as i64,
            u.output_tokens as i64,
            u.cost_usd.micros(),
            u.cost_saved_usd.micros(),
            u.cache_hits > 0,
        ],
    )?;
    Ok(())
}

fn usage_of(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Usage> {
    Ok(Usage {
        calls: r.get::<_, i64>(at)? as u64,
        input_tokens: r.get::<_, Option<i64>>(at + 1)?.unwrap_or(0) as u64,
        output_tokens: r.get::<_, Option<i64>>(at + 2)?.unwrap_or(0) as u64,
        cost_usd: Usd::from_micros(r.get::<_, Option<i64>>(at + 3)?.unwrap_or(0)),
        cost_saved_usd: Usd::from_micros(r.get::<_, Option<i64>>(at + 4)?.unwrap_or(0)),
        cache_hits: r.get::<_, Option<i64>>(at + 5)?.unwrap_or(0) as u64,
    })
}

const TOTALS: &str = "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cost_micros), \
                      SUM(saved_micros), SUM(cache_hit)";

#[async_trait]
impl UsageStore for SqliteStore {
    async fn reserve(
        &self,
        charge: &Charge,
        worst_usd: Usd,
        caps: &Caps,
    ) -> StoreResult<Result<(), CapHit>> {
        let (ch, caps) = (charge.clone(), *caps);
        self.db
            .write(move |tx| {
                let ws = ch.workspace_id.as_str();
                if let Some(cap) = caps.run_usd {
                    let spent = sum(
                        tx,
                        "SELECT SUM(cost_micros) FROM usage_charges WHERE workspace_id = ?1 AND run_id = ?2",
                        params![ws, ch.run_id.as_str()],
                    )?;
                    if spent + worst_usd > cap {
                        return Ok(Err(CapHit::Run { cap_usd: cap, spent_usd: spent }));
                    }
                }
                if let Some(cap) = caps.month_usd {
                    let (first, last) = month_bounds(ch.at.date_naive());
                    let spent = sum(
                        tx,
                        "SELECT SUM(cost_micros) FROM usage_charges
                         WHERE workspace_id = ?1 AND day >= ?2 AND day <= ?3",
                        params![ws, first, last],
                    )?;
                    if spent + worst_usd > cap {
                        return Ok(Err(CapHit::Month { cap_usd: cap, spent_usd: spent }));
                    }
                }
                let worst = Usage {
                    cost_usd: worst_usd,
                    ..Usage::default()
                };
                upsert(tx, &ch, false, &worst)?;
                Ok(Ok(()))
            })
            .await
    }

    async fn settle(&self, charge: &Charge, used: &Usage) -> StoreResult<()> {
        let (ch, u) = (charge.clone(), *used);
        self.db.write(move |tx| upsert(tx, &ch, true, &u)).await
    }

    async fn run_usage(&self, ws: &WorkspaceId, run: &RunId) -> StoreResult<Usage> {
        let (ws, run) = (ws.to_string(), run.to_string());
        self.db
            .read(move |c| {
                Ok(c.query_row(
                    &format!(
                        "SELECT {TOTALS} FROM usage_charges WHERE workspace_id = ?1 AND run_id = ?2"
                    ),
                    params![ws, run],
                    |r| usage_of(r, 0),
                )?)
            })
            .await
    }

    async fn usage_by_day(
        &self,
        ws: &WorkspaceId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<UsageRow>> {
        let ws = ws.to_string();
        self.db
            .read(move |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT day, workflow_id, {TOTALS} FROM usage_charges
                     WHERE workspace_id = ?1 AND day >= ?2 AND day <= ?3
                     GROUP BY day, workflow_id ORDER BY day, workflow_id"
                ))?;
                let rows = stmt.query_map(params![ws, from.to_string(), to.to_string()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        usage_of(r, 2)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (day, wf, usage) = row?;
                    out.push(UsageRow {
                        day: day
                            .parse()
                            .map_err(|e| StoreError::Unavailable(format!("corrupt day: {e}")))?,
                        workflow_id: WorkflowId::from_string(wf),
                        usage,
                    });
                }
                Ok(out)
            })
            .await
    }
}

#[async_trait]
impl ResultCache for SqliteStore {
    async fn cached(
        &self,
        ws: &WorkspaceId,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Value>> {
        let (ws, key) = (ws.to_string(), key.to_owned());
        self.db
            .read(move |c| {
                let row: Option<(String, String)> = c
                    .query_row(
                        "SELECT value, expires_at FROM result_cache WHERE workspace_id = ?1 AND key = ?2",
                        params![ws, key],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                match row {
                    Some((value, expires)) if expires > ts(now) => {
                        Ok(Some(serde_json::from_str(&value)?))
                    }
                    _ => Ok(None),
                }
            })
            .await
    }

    async fn put_cached(
        &self,
        ws: &WorkspaceId,
        key: &str,
        value: &Value,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (ws, key, value) = (ws.to_string(), key.to_owned(), value.to_string());
        let now = ts(Utc::now());
        self.db
            .write(move |tx| {
                tx.execute(
                    "INSERT INTO result_cache (workspace_id, key, value, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (workspace_id, key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at",
                    params![ws, key, value, ts(expires_at)],
                )?;
                // Expired entries of the workspace go as new ones arrive.
                tx.execute(
                    "DELETE FROM result_cache WHERE workspace_id = ?1 AND expires_at <= ?2",
                    params![ws, now],
                )?;
                Ok(())
            })
            .await
    }
}
