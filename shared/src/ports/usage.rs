//! Ports for model spending: workspace settings, the usage ledger with its
//! budget reservations, and the LLM result cache.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

use super::StoreResult;
use crate::domain::{
    CapHit, Caps, Charge, RunId, Usage, UsageRow, Usd, WorkspaceId, WorkspaceSettings,
};

#[async_trait]
pub trait SettingsStore: Send + Sync {
    /// The defaults if the workspace never saved any.
    async fn get_settings(&self, ws: &WorkspaceId) -> StoreResult<WorkspaceSettings>;
    async fn put_settings(&self, ws: &WorkspaceId, s: &WorkspaceSettings) -> StoreResult<()>;
}

#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Records a call about to be made at its worst-case cost, provided the
    /// run and the workspace's calendar month (of `charge.at`) stay within
    /// `caps` counting every charge so far, settled or reserved. The check and
    /// the reservation are one atomic step, so calls made side by side cannot
    /// together pass a cap. Returns the cap that would be passed instead.
    async fn reserve(
        &self,
        charge: &Charge,
        worst_usd: Usd,
        caps: &Caps,
    ) -> StoreResult<Result<(), CapHit>>;
    /// Records what the call really used, replacing its reservation (or
    /// adding the charge, for a call made without one such as a cache hit).
    async fn settle(&self, charge: &Charge, used: &Usage) -> StoreResult<()>;
    /// Every charge of a run, summed.
    async fn run_usage(&self, ws: &WorkspaceId, run: &RunId) -> StoreResult<Usage>;
    /// Totals per day and workflow for `from..=to`, by day then workflow.
    async fn usage_by_day(
        &self,
        ws: &WorkspaceId,
        from: NaiveDate,
        to: NaiveDate,
    ) -> StoreResult<Vec<UsageRow>>;
}

#[async_trait]
pub trait ResultCache: Send + Sync {
    /// The stored value, unless it has expired by `now`.
    async fn cached(
        &self,
        ws: &WorkspaceId,
        key: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Value>>;
    async fn put_cached(
        &self,
        ws: &WorkspaceId,
        key: &str,
        value: &Value,
        expires_at: DateTime<Utc>,
    ) -> StoreResult<()>;
}
