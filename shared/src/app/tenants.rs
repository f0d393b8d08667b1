//! Creating workspaces and their owner keys (for operators: `weft dev`
//! makes its development workspace with it, the AWS admin function any).

use chrono::Utc;

use super::{
    MAX_KEYS_PER_WORKSPACE, check_key_strength, generate_api_key, hash_api_key, key_prefix,
};
use crate::domain::{ApiKeyId, ApiKeyRecord, Role, Workspace, WorkspaceId};
use crate::ports::{ApiKeyStore, StoreError, WorkspaceStore};

/// Creates a workspace with an owner key (`key`, which must pass
/// `check_key_strength`, or a new one); returns the workspace and the key.
pub async fn create_workspace(
    workspaces: &dyn WorkspaceStore,
    keys: &dyn ApiKeyStore,
    name: &str,
    key: Option<String>,
) -> anyhow::Result<(WorkspaceId, String)> {
    if let Some(k) = &key {
        check_key_strength(k).map_err(|e| anyhow::anyhow!("the chosen API key is refused: {e}"))?;
    }
    let ws = Workspace {
        id: WorkspaceId::generate(),
        name: name.to_owned(),
        created_at: Utc::now(),
    };
    workspaces.create_workspace(&ws).await?;
    let key = key.unwrap_or_else(generate_api_key);
    add_owner_key(keys, &ws.id, &key).await?;
    Ok((ws.id, key))
}

/// Makes `key` (which must pass `check_key_strength`) an owner key of the
/// workspace (idempotent for that workspace; refused if another workspace
/// has it).
pub async fn add_owner_key(
    keys: &dyn ApiKeyStore,
    ws: &WorkspaceId,
    key: &str,
) -> anyhow::Result<()> {
    check_key_strength(key).map_err(|e| anyhow::anyhow!("the chosen API key is refused: {e}"))?;
    let rec = ApiKeyRecord {
        id: ApiKeyId::generate(),
        workspace_id: ws.clone(),
        name: "owner".into(),
        role: Role::Owner,
        key_hash: hash_api_key(key),
        prefix: key_prefix(key),
        workflows: None,
        expires_at: None,
        rotated_from: None,
        replaced_by: None,
        rate_limit: None,
        created_at: Utc::now(),
        last_used_at: None,
    };
    match keys.insert_api_key(&rec, MAX_KEYS_PER_WORKSPACE).await {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!(
            "the workspace holds {MAX_KEYS_PER_WORKSPACE} keys already; delete one first"
        ),
        Err(StoreError::Conflict(_)) => match keys.find_api_key(&rec.key_hash).await? {
            Some(existing) if existing.workspace_id == *ws && existing.expired(Utc::now()) => {
                anyhow::bail!(
                    "that API key was rotated away or has expired in this workspace; choose another"
                )
            }
            Some(existing) if existing.workspace_id == *ws => Ok(()),
            _ => anyhow::bail!("that API key already belongs to another workspace"),
        },
        Err(e) => Err(e.into()),
    }
}
