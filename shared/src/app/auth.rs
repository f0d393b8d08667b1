use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

use super::{App, AppError};
use crate::domain::{ApiKeyId, Role, WorkspaceId};

/// Who is calling: the workspace an API key acts for.
#[derive(Clone, Debug)]
pub struct Principal {
    pub workspace_id: WorkspaceId,
    pub key_id: ApiKeyId,
    pub role: Role,
}

/// A new API key: `weft_` and 40 random alphanumerics (about 238 bits).
pub fn generate_api_key() -> String {
    format!("weft_{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}

/// Keys are stored only as their SHA-256 (they are random and long, so a
/// slow password hash would add nothing).
pub fn hash_api_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl App {
    pub async fn authenticate(&self, key: &str) -> Result<Principal, AppError> {
        if key.is_empty() || key.len() > 200 {
            return Err(AppError::Unauthorized);
        }
        let rec = self
            .api_keys
            .find_api_key(&hash_api_key(key))
            .await?
            .ok_or(AppError::Unauthorized)?;
        Ok(Principal {
            workspace_id: rec.workspace_id,
            key_id: rec.id,
            role: rec.role,
        })
    }
}
