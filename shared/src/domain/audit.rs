//! The audit log: who changed what in a workspace, when and from where.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ids::{AuditId, WorkspaceId};

/// One change, as recorded (append-only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Ids sort by time.
    pub id: AuditId,
    pub workspace_id: WorkspaceId,
    pub at: DateTime<Utc>,
    /// Who: `key:<id>` (the key used), or `run:<id>/<step>` for a secret
    /// a run read.
    pub actor: String,
    /// What, such as `key.created`, `secret.updated`, `key.rotate`,
    /// `secret.read`.
    pub action: String,
    /// On which resource: its API path (`/v1/secrets/stripe`), or a
    /// secret's name for a read.
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

/// How long entries are kept.
pub const AUDIT_RETENTION_DAYS: i64 = 90;

impl AuditEntry {
    pub fn new(ws: &WorkspaceId, actor: String, action: String, resource: String) -> Self {
        let (id, at) = AuditId::generate_at();
        AuditEntry {
            id,
            workspace_id: ws.clone(),
            at,
            actor,
            action,
            resource,
            ip: None,
            user_agent: None,
        }
    }
}

/// Which entries a listing wants (newest first).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    /// Actions starting with this (`key.` for every key change).
    pub action: Option<String>,
    pub actor: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}
