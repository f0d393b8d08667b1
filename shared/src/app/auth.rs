use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// Keys recently found valid, so most requests skip the store. A key
/// removed from the store stays usable here for up to `AUTH_CACHE_TTL`;
/// unknown keys are never cached.
#[derive(Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<String, (Principal, Instant)>>,
}

pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(30);
const AUTH_CACHE_CAPACITY: usize = 10_000;

impl AuthCache {
    fn get(&self, hash: &str) -> Option<Principal> {
        let entries = self.entries.lock().ok()?;
        let (p, at) = entries.get(hash)?;
        (at.elapsed() < AUTH_CACHE_TTL).then(|| p.clone())
    }

    fn put(&self, hash: String, p: Principal) {
        if let Ok(mut e) = self.entries.lock() {
            if e.len() >= AUTH_CACHE_CAPACITY {
                e.retain(|_, (_, at)| at.elapsed() < AUTH_CACHE_TTL);
                if e.len() >= AUTH_CACHE_CAPACITY {
                    e.clear();
                }
            }
            e.insert(hash, (p, Instant::now()));
        }
    }
}

impl App {
    pub async fn authenticate(&self, key: &str) -> Result<Principal, AppError> {
        if key.is_empty() || key.len() > 200 {
            return Err(AppError::Unauthorized);
        }
        let hash = hash_api_key(key);
        if let Some(p) = self.auth_cache.get(&hash) {
            return Ok(p);
        }
        let rec = self
            .stores
            .api_keys
            .find_api_key(&hash)
            .await?
            .ok_or(AppError::Unauthorized)?;
        let p = Principal {
            workspace_id: rec.workspace_id,
            key_id: rec.id,
            role: rec.role,
        };
        self.auth_cache.put(hash, p.clone());
        Ok(p)
    }
}
