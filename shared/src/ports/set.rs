//! The bundle of every store port, for wiring and for the contract.

use std::sync::Arc;

use super::*;

/// Every store port, as one deployment provides them.
#[derive(Clone)]
pub struct StoreSet {
    pub workspaces: Arc<dyn WorkspaceStore>,
    pub api_keys: Arc<dyn ApiKeyStore>,
    pub audit: Arc<dyn AuditStore>,
    pub workflows: Arc<dyn WorkflowStore>,
    pub runs: Arc<dyn RunStore>,
    pub secrets: Arc<dyn SecretStore>,
    pub settings: Arc<dyn SettingsStore>,
    pub usage: Arc<dyn UsageStore>,
    pub cache: Arc<dyn ResultCache>,
    pub schedules: Arc<dyn ScheduleStore>,
    pub hooks: Arc<dyn HookStore>,
    pub webhooks: Arc<dyn WebhookStore>,
    /// The events sent lately (what `lookback` reads).
    pub events: Arc<dyn EventLog>,
    /// Verified requests to hooks, until a run is started from each.
    pub hook_inbox: Arc<dyn HookInbox>,
}

/// A database that holds every table (all ports but secrets).
pub trait Tables:
    WorkspaceStore
    + ApiKeyStore
    + AuditStore
    + WorkflowStore
    + RunStore
    + SettingsStore
    + UsageStore
    + ResultCache
    + ScheduleStore
    + HookStore
    + WebhookStore
    + EventLog
    + 'static
{
}

impl<T> Tables for T where
    T: WorkspaceStore
        + ApiKeyStore
        + AuditStore
        + WorkflowStore
        + RunStore
        + SettingsStore
        + UsageStore
        + ResultCache
        + ScheduleStore
        + HookStore
        + WebhookStore
        + EventLog
        + 'static
{
}

impl StoreSet {
    /// The tables from one database, secrets from another store, verified
    /// hook requests handed to `hook_inbox`.
    pub fn with_secrets<S: Tables>(
        s: Arc<S>,
        secrets: Arc<dyn SecretStore>,
        hook_inbox: Arc<dyn HookInbox>,
    ) -> Self {
        Self {
            workspaces: s.clone(),
            api_keys: s.clone(),
            audit: s.clone(),
            workflows: s.clone(),
            runs: s.clone(),
            secrets,
            settings: s.clone(),
            usage: s.clone(),
            cache: s.clone(),
            schedules: s.clone(),
            hooks: s.clone(),
            webhooks: s.clone(),
            events: s,
            hook_inbox,
        }
    }

    /// Everything from one store.
    pub fn from_one<S: Tables + SecretStore + HookInbox>(s: Arc<S>) -> Self {
        Self::with_secrets(s.clone(), s.clone(), s)
    }
}
