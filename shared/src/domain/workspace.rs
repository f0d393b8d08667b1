//! Tenants (workspaces) and the API keys that act for them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{ApiKeyId, WorkflowId, WorkspaceId};
use super::rate::Rate;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// What a key (or member) may do in its workspace; each role may do all
/// that the roles before it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads workflows, runs, logs, settings and usage.
    Viewer,
    /// Also creates and runs workflows, sends events, approves and cancels
    /// runs, and edits the workflows it created.
    Editor,
    /// Also edits any workflow and manages keys, secrets, endpoints, hooks
    /// and schedules.
    Admin,
    /// Also the billing settings (budget and prices).
    Owner,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Editor, Role::Admin, Role::Owner];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// An API key as stored: only the SHA-256 of the secret is kept, with its
/// first characters (`prefix`) to tell keys apart in listings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub id: ApiKeyId,
    pub workspace_id: WorkspaceId,
    pub name: String,
    pub role: Role,
    pub key_hash: String,
    #[serde(default)]
    pub prefix: String,
    /// Set: the key may only start and read runs of these workflows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflows: Option<Vec<WorkflowId>>,
    /// From then on the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// A rate below the deployment's for keys (requests a second, burst).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Rate>,
    /// The key that replaced this one when it was rotated (this one then
    /// works only until its overlap ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<ApiKeyId>,
    /// The key whose rotation made this one (which then expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<ApiKeyId>,
    pub created_at: DateTime<Utc>,
    /// When a request last used it (to the minute; not part of the
    /// record's stored data in every store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// An owner key without an expiry: a workspace always keeps one.
    pub fn lasting_owner(&self) -> bool {
        self.role == Role::Owner && self.expires_at.is_none()
    }

    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}
