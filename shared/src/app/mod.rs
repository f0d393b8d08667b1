//! The application: every operation the API offers, written once against the
//! ports, so the embedded server and the AWS API function behave the same.

mod auth;
pub mod commands;
mod definitions;
mod error;
mod events;
mod hooks;
mod keys;
mod rates;
mod runs;
mod schedules;
mod secrets;
mod tenants;
pub mod usage;
mod webhooks;
#[cfg(test)]
mod webhooks_tests;
mod workflows;

use std::sync::Arc;

pub use auth::{
    AuthCache, Principal, check_key_strength, generate_api_key, hash_api_key, key_prefix,
};
pub use commands::{IdempotencyKey, StartRun, UsageRange};
pub use definitions::{DefinitionCache, DefinitionError};
pub use error::AppError;
pub use events::{EventOutcome, EventRun, MAX_WORKFLOWS_MATCHED, SendEvent};
pub use hooks::{HookFields, MAX_HOOKS_PER_WORKFLOW, Processed};
pub use keys::{
    DEFAULT_ROTATION_OVERLAP, MAX_KEY_WORKFLOWS, MAX_KEYS_PER_WORKSPACE, MAX_ROTATION_OVERLAP,
    NewKey,
};
pub use rates::{RateAnswer, Rates};
pub use runs::{IDEMPOTENCY_TTL_HOURS, RunView};
pub use schedules::{
    FireReport, MAX_SCHEDULE_INPUT_BYTES, MAX_SCHEDULES_PER_WORKFLOW, ScheduleFields,
};
pub use tenants::{add_owner_key, create_workspace};
pub use webhooks::{
    DELIVERY_RETENTION_DAYS, DUE_BATCH as WEBHOOK_DUE_BATCH, Delivered, EndpointFields,
    MAX_ENDPOINTS_PER_WORKSPACE,
};

use crate::ports::{RunDriver, StoreSet};

pub struct App {
    pub stores: StoreSet,
    pub driver: Arc<dyn RunDriver>,
    pub definitions: Arc<DefinitionCache>,
    pub auth_cache: AuthCache,
    /// What step outputs read for answers may take in memory at once
    /// (requests past it wait their turn).
    pub reads: Arc<crate::memory::Budget>,
    /// Where webhook deliveries may go (`with_egress`).
    pub egress: crate::adapters::http::EgressPolicy,
    /// The webhook client, made on first use under `egress`.
    webhook_sender: std::sync::OnceLock<Result<crate::webhooks::send::Sender, String>>,
    /// The webhook deliveries being sent now.
    sending: webhooks::Sending,
    /// Webhook signing keys read from the secret store, by name.
    signing_cache: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Where deliveries go to be sent (None: `deliver_due` sends them).
    delivery_queue: Option<Arc<dyn crate::ports::DeliveryQueue>>,
    /// Request rates (None: requests are not limited).
    rates: Option<Rates>,
}

/// Longest reason an answer or a log line gives for something that could
/// not be done (it may quote tenant data: a refused input's values).
const MAX_DETAIL_CHARS: usize = 300;

/// `s`, cut to `MAX_DETAIL_CHARS`.
pub(crate) fn cut(mut s: String) -> String {
    if let Some((i, _)) = s.char_indices().nth(MAX_DETAIL_CHARS) {
        s.truncate(i);
        s.push('…');
    }
    s
}

/// Step outputs the API's answers may hold in memory at once, in all.
pub const READ_MEMORY: u64 = 512 << 20;

impl App {
    /// The application on these stores, telling `driver` about runs.
    pub fn new(
        stores: StoreSet,
        driver: Arc<dyn RunDriver>,
        definitions: Arc<DefinitionCache>,
    ) -> Self {
        Self {
            stores,
            driver,
            definitions,
            auth_cache: Default::default(),
            reads: crate::memory::Budget::new(crate::memory::share_of_machine(READ_MEMORY)),
            egress: Default::default(),
            webhook_sender: Default::default(),
            sending: Default::default(),
            delivery_queue: None,
            signing_cache: Default::default(),
            rates: None,
        }
    }

    /// Limits each key's and each workspace's request rate.
    pub fn with_rates(mut self, rates: Rates) -> Self {
        self.rates = Some(rates);
        self
    }

    /// Hands webhook deliveries to `queue` (another process sends them)
    /// instead of sending them itself.
    pub fn with_delivery_queue(mut self, queue: Arc<dyn crate::ports::DeliveryQueue>) -> Self {
        self.delivery_queue = Some(queue);
        self
    }

    /// The ranges of internal addresses webhook deliveries may reach.
    pub fn with_egress(mut self, egress: crate::adapters::http::EgressPolicy) -> Self {
        self.egress = egress;
        self.webhook_sender = Default::default();
        self
    }
}
