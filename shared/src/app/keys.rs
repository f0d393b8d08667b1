//! API keys a workspace makes for itself: created with a role (never above
//! the creator's), optionally limited to workflows and an expiry; listed
//! without their secret; revoked; rotated with an overlap.

use chrono::{DateTime, Duration, Utc};

use super::auth::{generate_api_key, hash_api_key, key_prefix};
use super::{App, AppError, Principal};
use crate::domain::{ApiKeyId, ApiKeyRecord, Role, WorkflowId};
use crate::dsl::{Path, ValidationError};
use crate::ports::KeyChange;

/// Most keys a workspace may hold (each costs a lookup item).
pub const MAX_KEYS_PER_WORKSPACE: usize = 100;
/// Most workflows one key may be limited to.
pub const MAX_KEY_WORKFLOWS: usize = 50;
/// Longest a rotated key may keep working beside its successor.
pub const MAX_ROTATION_OVERLAP: Duration = Duration::days(7);
/// How long a rotated key keeps working when the request does not say.
pub const DEFAULT_ROTATION_OVERLAP: Duration = Duration::hours(24);

fn last_owner() -> AppError {
    AppError::Conflict(
        "this is the workspace's last owner key without an expiry; make another owner key first"
            .into(),
    )
}

/// A key to make (`POST /v1/keys`).
#[derive(Clone, Debug)]
pub struct NewKey {
    pub name: String,
    pub role: Role,
    pub workflows: Option<Vec<WorkflowId>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit: Option<crate::domain::Rate>,
}

impl App {
    /// Makes a key; returns it as stored and its secret (shown once).
    pub async fn create_key(
        &self,
        who: &Principal,
        new: NewKey,
    ) -> Result<(ApiKeyRecord, String), AppError> {
        if new.role > who.role {
            return Err(AppError::Forbidden(format!(
                "a key with the {} role cannot make a key with the {} role",
                who.role.as_str(),
                new.role.as_str()
            )));
        }
        if let (Some(asked), Some(rates)) = (new.rate_limit, &self.rates) {
            let most = rates.limits.key;
            if asked.per_second > most.per_second || asked.burst > most.burst {
                return Err(AppError::InvalidRequest(vec![ValidationError::new(
                    &Path::root().key("rate_limit"),
                    format!(
                        "a key's own rate may only be lower than this deployment's for keys: at most {} a second, bursts of {}",
                        most.per_second, most.burst
                    ),
                )]));
            }
        }
        if let Some(wfs) = &new.workflows {
            let mut errors = Vec::new();
            for (i, wf) in wfs.iter().enumerate() {
                let live = self
                    .stores
                    .workflows
                    .get_workflow(&who.workspace_id, wf, None)
                    .await?
                    .is_some_and(|w| w.archived_at.is_none());
                if !live {
                    errors.push(ValidationError::new(
                        &Path::root().key("workflows").index(i),
                        format!("no workflow `{wf}` in this workspace"),
                    ));
                }
            }
            if !errors.is_empty() {
                return Err(AppError::InvalidRequest(errors));
            }
        }
        let secret = generate_api_key();
        let rec = ApiKeyRecord {
            id: ApiKeyId::generate(),
            workspace_id: who.workspace_id.clone(),
            name: new.name,
            role: new.role,
            key_hash: hash_api_key(&secret),
            prefix: key_prefix(&secret),
            workflows: new.workflows,
            expires_at: new.expires_at,
            rotated_from: None,
            replaced_by: None,
            rate_limit: new.rate_limit,
            created_at: Utc::now(),
            last_used_at: None,
        };
        self.insert_key(&rec).await?;
        Ok((rec, secret))
    }

    /// Stores a new key; at the limit, keys that expired a day ago or more
    /// are removed first to make room.
    async fn insert_key(&self, rec: &ApiKeyRecord) -> Result<(), AppError> {
        let keys = &self.stores.api_keys;
        if keys.insert_api_key(rec, MAX_KEYS_PER_WORKSPACE).await? {
            return Ok(());
        }
        let long_ago = Utc::now() - Duration::days(1);
        for old in keys.list_api_keys(&rec.workspace_id).await? {
            if old.expires_at.is_some_and(|at| at <= long_ago) {
                keys.delete_api_key(&rec.workspace_id, &old.id).await?;
            }
        }
        if keys.insert_api_key(rec, MAX_KEYS_PER_WORKSPACE).await? {
            return Ok(());
        }
        Err(AppError::Conflict(format!(
            "a workspace may hold at most {MAX_KEYS_PER_WORKSPACE} keys; delete one first"
        )))
    }

    pub async fn list_keys(&self, who: &Principal) -> Result<Vec<ApiKeyRecord>, AppError> {
        Ok(self
            .stores
            .api_keys
            .list_api_keys(&who.workspace_id)
            .await?)
    }

    pub async fn get_key(&self, who: &Principal, id: &ApiKeyId) -> Result<ApiKeyRecord, AppError> {
        self.stores
            .api_keys
            .get_api_key(&who.workspace_id, id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("no key `{id}`")))
    }

    /// A key the caller may change: one whose role is not above its own.
    async fn key_to_change(
        &self,
        who: &Principal,
        id: &ApiKeyId,
    ) -> Result<ApiKeyRecord, AppError> {
        let rec = self.get_key(who, id).await?;
        if rec.role > who.role {
            return Err(AppError::Forbidden(format!(
                "a key with the {} role cannot change a key with the {} role",
                who.role.as_str(),
                rec.role.as_str()
            )));
        }
        Ok(rec)
    }

    /// Revokes a key: no request made with it is accepted from a second
    /// after this returns. The workspace's last lasting owner key stays.
    pub async fn delete_key(&self, who: &Principal, id: &ApiKeyId) -> Result<(), AppError> {
        let rec = self.key_to_change(who, id).await?;
        match self
            .stores
            .api_keys
            .delete_api_key(&who.workspace_id, id)
            .await?
        {
            KeyChange::Done => {
                self.auth_cache.forget(&rec.key_hash);
                Ok(())
            }
            KeyChange::NotFound => Err(AppError::NotFound(format!("no key `{id}`"))),
            KeyChange::LastOwner => Err(last_owner()),
        }
    }

    /// Makes a key like `id` (name, role, workflows, expiry) and lets the
    /// old one work for `overlap` more (never longer than it would have).
    pub async fn rotate_key(
        &self,
        who: &Principal,
        id: &ApiKeyId,
        overlap: Duration,
    ) -> Result<(ApiKeyRecord, String), AppError> {
        let old = self.key_to_change(who, id).await?;
        let now = Utc::now();
        if old.expired(now) {
            return Err(AppError::Conflict(format!(
                "key `{id}` has expired; make a new key instead"
            )));
        }
        if let Some(next) = &old.replaced_by {
            return Err(AppError::Conflict(format!(
                "key `{id}` was rotated already (its successor is `{next}`); rotate that one"
            )));
        }
        let secret = generate_api_key();
        let rec = ApiKeyRecord {
            id: ApiKeyId::generate(),
            key_hash: hash_api_key(&secret),
            prefix: key_prefix(&secret),
            rotated_from: Some(old.rotated_from.clone().unwrap_or_else(|| old.id.clone())),
            replaced_by: None,
            created_at: now,
            last_used_at: None,
            ..old.clone()
        };
        self.insert_key(&rec).await?;
        // The earliest end wins (two rotations at once, or one that asks
        // less than the key had).
        match self
            .stores
            .api_keys
            .set_api_key_expiry(&who.workspace_id, id, now + overlap, Some(&rec.id))
            .await?
        {
            KeyChange::Done => {}
            // Revoked meanwhile: the new key stands on its own.
            KeyChange::NotFound => {
                tracing::info!(workspace_id = %who.workspace_id, "a key was revoked while it was rotated");
            }
            // (Not while its successor, a lasting owner key too, exists.)
            KeyChange::LastOwner => return Err(last_owner()),
        }
        self.auth_cache.forget(&old.key_hash);
        Ok((rec, secret))
    }
}
