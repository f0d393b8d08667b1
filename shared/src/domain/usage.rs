//! Model usage and what it costs: the workspace's own settings (budget,
//! price overrides), one charge per model call, and totals.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::{RunId, Usd, WorkflowId, WorkspaceId};

/// USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelPrice {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// A workspace's own settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceSettings {
    /// Most the workspace may spend on model calls in a calendar month (UTC).
    #[serde(default)]
    pub monthly_budget_usd: Option<Usd>,
    /// Prices by model-name prefix; the longest matching prefix wins, and
    /// these take precedence over the shipped defaults.
    #[serde(default)]
    pub prices: BTreeMap<String, ModelPrice>,
}

/// One model call (one try of one attempt of one step), as charged.
#[derive(Clone, Debug, PartialEq)]
pub struct Charge {
    pub workspace_id: WorkspaceId,
    pub run_id: RunId,
    pub workflow_id: WorkflowId,
    pub step_key: String,
    pub attempt: u32,
    /// Position in the step's fallback chain (0 for a cache hit).
    pub try_index: u32,
    pub provider: String,
    pub model: String,
    pub at: DateTime<Utc>,
}

/// What a call used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: Usd,
    /// What cache hits would have cost.
    pub cost_saved_usd: Usd,
    pub cache_hits: u64,
}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.calls += o.calls;
        self.input_tokens += o.input_tokens;
        self.output_tokens += o.output_tokens;
        self.cost_usd += o.cost_usd;
        self.cost_saved_usd += o.cost_saved_usd;
        self.cache_hits += o.cache_hits;
    }
}

/// Totals of one day and workflow.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    pub day: NaiveDate,
    pub workflow_id: WorkflowId,
    pub usage: Usage,
}

/// Which spending cap a call would pass.
#[derive(Clone, Debug, PartialEq)]
pub enum CapHit {
    Run { cap_usd: Usd, spent_usd: Usd },
    Month { cap_usd: Usd, spent_usd: Usd },
}

/// The caps a reservation is checked against.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Caps {
    pub run_usd: Option<Usd>,
    pub month_usd: Option<Usd>,
}
