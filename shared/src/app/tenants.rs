//! Creating workspaces and their owner keys (for operators: `weft dev`
//! makes its development workspace with it, the AWS admin function any).

use chrono::Utc;

use super::{generate_api_key, hash_api_key};
use crate::domain::{ApiKeyId, ApiKeyRecord, Role, Workspace, WorkspaceId};
use crate::ports::{ApiKeyStore, StoreError, WorkspaceStore};

/// Creates a workspace with an owner key (`key`, or a new one); returns the
/// workspace and the key.
pub async fn create_workspace(
    workspaces: &dyn WorkspaceStore,
    keys: &dyn ApiKeyStore,
    name: &str,
    key: Option<String>,
) -> anyhow::Result<(WorkspaceId, String)> {
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

/// Makes `key` an owner key of the workspace (idempotent for that
/// workspace; refused if another workspace has it).
pub async fn add_owner_key(
    keys: &dyn ApiKeyStore,
    ws: &WorkspaceId,
    key: &str,
) -> anyhow::Result<()> {
    let rec = ApiKeyRecord {
        id: ApiKeyId::generate(),
        workspace_id: ws.clone(),
        name: "owner".into(),
        role: Role::Owner,
        key_hash: hash_api_key(key),
        created_at: Utc::now(),
    };
    match keys.insert_api_key(&rec).await {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict(_)) => match keys.find_api_key(&rec.key_hash).await? {
            Some(existing) if existing.workspace_id == *ws => Ok(()),
            _ => anyhow::bail!("that API key already belongs to another workspace"),
        },
        Err(e) => Err(e.into()),
    }
}
