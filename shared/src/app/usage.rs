//! Workspace settings (monthly budget, prices) and the usage report.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, Utc};

use super::{App, AppError, UsageRange};
use crate::domain::{Usage, Usd, WorkflowId, WorkspaceId, WorkspaceSettings};

/// Tokens and cost over a range of days, with the month's spending.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageReport {
    pub range: UsageRange,
    pub total: Usage,
    pub days: BTreeMap<NaiveDate, Usage>,
    pub workflows: BTreeMap<WorkflowId, Usage>,
    /// The first day of the current calendar month (UTC).
    pub month_start: NaiveDate,
    pub month_spent: Usd,
    pub month_budget: Option<Usd>,
}

impl App {
    pub async fn get_settings(&self, ws: &WorkspaceId) -> Result<WorkspaceSettings, AppError> {
        Ok(self.stores.settings.get_settings(ws).await?)
    }

    /// Replaces the workspace's settings.
    pub async fn put_settings(
        &self,
        ws: &WorkspaceId,
        s: WorkspaceSettings,
    ) -> Result<WorkspaceSettings, AppError> {
        self.stores.settings.put_settings(ws, &s).await?;
        Ok(s)
    }

    /// Tokens and cost per day and per workflow over `range`, with the
    /// month's spending against its cap.
    pub async fn usage_report(
        &self,
        ws: &WorkspaceId,
        range: UsageRange,
    ) -> Result<UsageReport, AppError> {
        let today = Utc::now().date_naive();
        let month_start = today.with_day(1).unwrap_or(today);
        let rows = self
            .stores
            .usage
            .usage_by_day(ws, range.from, range.to)
            .await?;
        let mut total = Usage::default();
        let mut days: BTreeMap<NaiveDate, Usage> = BTreeMap::new();
        let mut workflows: BTreeMap<WorkflowId, Usage> = BTreeMap::new();
        for r in &rows {
            total.add(&r.usage);
            days.entry(r.day).or_default().add(&r.usage);
            workflows
                .entry(r.workflow_id.clone())
                .or_default()
                .add(&r.usage);
        }
        let month_spent = if range.from == month_start && range.to == today {
            total.cost_usd
        } else {
            self.stores
                .usage
                .usage_by_day(ws, month_start, today)
                .await?
                .iter()
                .map(|r| r.usage.cost_usd)
                .sum()
        };
        let settings = self.stores.settings.get_settings(ws).await?;
        Ok(UsageReport {
            range,
            total,
            days,
            workflows,
            month_start,
            month_spent,
            month_budget: settings.monthly_budget_usd,
        })
    }
}
