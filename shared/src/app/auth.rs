//! Who is calling: API keys turned into principals, with a cache short
//! enough that a revoked key stops working within a second everywhere.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

use super::{App, AppError};
use crate::domain::{ApiKeyId, ApiKeyRecord, Role, WorkflowId, WorkspaceId};

/// Who is calling: the workspace an API key acts for, its role, and the
/// workflows it is limited to (if any).
#[derive(Clone, Debug)]
pub struct Principal {
    pub workspace_id: WorkspaceId,
    pub key_id: ApiKeyId,
    pub role: Role,
    /// Set: the key may only start and read runs of these workflows.
    pub workflows: Option<Vec<WorkflowId>>,
    /// Who this is across rotations (the first key of the chain): what
    /// `created_by` of the workflows it makes names.
    pub actor: String,
}

impl Principal {
    /// Whether the caller may see the workflow's runs (another
    /// workflow's are "not found" to a limited key).
    pub fn may_see(&self, wf: &WorkflowId) -> bool {
        self.workflows.as_ref().is_none_or(|l| l.contains(wf))
    }

    pub fn of(rec: &ApiKeyRecord) -> Self {
        Principal {
            workspace_id: rec.workspace_id.clone(),
            key_id: rec.id.clone(),
            role: rec.role,
            workflows: rec.workflows.clone(),
            actor: format!("key:{}", rec.rotated_from.as_ref().unwrap_or(&rec.id)),
        }
    }
}

/// A new API key: `weft_` and 40 random alphanumerics (about 238 bits).
pub fn generate_api_key() -> String {
    format!("weft_{}", Alphanumeric.sample_string(&mut rand::rng(), 40))
}

/// Keys are stored only as their SHA-256 (they are random and long, so a
/// slow password hash would add nothing; keys an operator chooses must
/// pass `check_key_strength`).
pub fn hash_api_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The start of a key shown to tell keys apart: at most a quarter of it,
/// and never more than 12 characters (`weft_` and 6 of a generated key's
/// 40 random ones).
pub fn key_prefix(key: &str) -> String {
    key.chars()
        .take((key.chars().count() / 4).min(12))
        .collect()
}

/// Shortest key an operator may choose.
pub const MIN_CHOSEN_KEY_CHARS: usize = 32;

/// Least guesses (as a power of ten) an operator's chosen key must take
/// by zxcvbn's estimate: the top of its scale (its count saturates a
/// 64-bit integer near 10^19.3; length does the rest).
const MIN_CHOSEN_KEY_GUESSES_LOG10: f64 = 19.0;

/// A key chosen by an operator (not generated) must be long and hard to
/// guess: 32 to 200 visible ASCII characters that zxcvbn (dictionary words,
/// sequences, repeats, keyboard patterns) rates at the top of its scale.
pub fn check_key_strength(key: &str) -> Result<(), String> {
    if key.chars().any(|c| !c.is_ascii_graphic()) {
        return Err("an API key may hold only visible ASCII characters (no spaces)".into());
    }
    if key.len() < MIN_CHOSEN_KEY_CHARS || key.len() > 200 {
        return Err(format!(
            "an API key must be {MIN_CHOSEN_KEY_CHARS} to 200 characters long (this one has {})",
            key.len()
        ));
    }
    if zxcvbn::zxcvbn(key, &[]).guesses_log10() < MIN_CHOSEN_KEY_GUESSES_LOG10 {
        return Err("this API key is too easy to guess (words, sequences or repeats): use a random one, e.g. `openssl rand -hex 24`".into());
    }
    Ok(())
}

/// Keys recently found valid, so most requests skip the store. A key
/// revoked in the store stays usable here for at most `AUTH_CACHE_TTL`
/// (in this process, revoking evicts it at once); unknown keys are never
/// cached.
#[derive(Default)]
pub struct AuthCache {
    entries: Mutex<HashMap<String, (ApiKeyRecord, Instant)>>,
    /// When this process last recorded each key's use.
    touched: Mutex<HashMap<ApiKeyId, Instant>>,
}

pub const AUTH_CACHE_TTL: Duration = Duration::from_millis(900);
const AUTH_CACHE_CAPACITY: usize = 10_000;
/// How often a key's `last_used_at` is written (by each process).
const TOUCH_EVERY: Duration = Duration::from_secs(60);

impl AuthCache {
    fn get(&self, hash: &str) -> Option<ApiKeyRecord> {
        let entries = self.entries.lock().ok()?;
        let (rec, at) = entries.get(hash)?;
        (at.elapsed() < AUTH_CACHE_TTL).then(|| rec.clone())
    }

    fn put(&self, hash: String, rec: ApiKeyRecord) {
        if let Ok(mut e) = self.entries.lock() {
            if e.len() >= AUTH_CACHE_CAPACITY {
                e.retain(|_, (_, at)| at.elapsed() < AUTH_CACHE_TTL);
                if e.len() >= AUTH_CACHE_CAPACITY {
                    e.clear();
                }
            }
            e.insert(hash, (rec, Instant::now()));
        }
    }

    /// Forgets a key (revoked or changed here).
    pub(super) fn forget(&self, hash: &str) {
        if let Ok(mut e) = self.entries.lock() {
            e.remove(hash);
        }
    }

    /// Whether this key's use is due to be recorded (and, if so, it now
    /// counts as recorded).
    fn touch_due(&self, id: &ApiKeyId) -> bool {
        let Ok(mut t) = self.touched.lock() else {
            return false;
        };
        if t.get(id).is_some_and(|at| at.elapsed() < TOUCH_EVERY) {
            return false;
        }
        if t.len() >= AUTH_CACHE_CAPACITY {
            t.retain(|_, at| at.elapsed() < TOUCH_EVERY);
        }
        t.insert(id.clone(), Instant::now());
        true
    }
}

impl App {
    pub async fn authenticate(&self, key: &str) -> Result<Principal, AppError> {
        if key.is_empty() || key.len() > 200 {
            return Err(AppError::Unauthorized);
        }
        let hash = hash_api_key(key);
        let rec = match self.auth_cache.get(&hash) {
            Some(rec) => rec,
            None => {
                let rec = self
                    .stores
                    .api_keys
                    .find_api_key(&hash)
                    .await?
                    .ok_or(AppError::Unauthorized)?;
                self.auth_cache.put(hash, rec.clone());
                rec
            }
        };
        let now = Utc::now();
        if rec.expired(now) {
            return Err(AppError::Unauthorized);
        }
        if self.auth_cache.touch_due(&rec.id)
            && let Err(e) = self
                .stores
                .api_keys
                .touch_api_key(&rec.workspace_id, &rec.id, now)
                .await
        {
            tracing::warn!(workspace_id = %rec.workspace_id, error = %e, "recording a key's use failed");
        }
        Ok(Principal::of(&rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_keys_must_be_long_and_varied() {
        assert!(check_key_strength(&generate_api_key()).is_ok());
        assert!(check_key_strength("3f9c1a7be04d52c8a6e19f0b7d3c25e8a4b6").is_ok());
        for weak in [
            "dev-key",
            "password1234567890password1234567890",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababababab",
            "has a space in it 0123456789abcdefghijkl",
        ] {
            assert!(check_key_strength(weak).is_err(), "{weak}");
        }
    }

    #[test]
    fn a_prefix_shows_at_most_a_quarter_of_a_key() {
        let k = generate_api_key();
        assert_eq!(key_prefix(&k).len(), 11);
        assert!(k.starts_with(&key_prefix(&k)));
        assert_eq!(key_prefix("0123456789abcdefghijklmnopqrstuv").len(), 8);
    }
}
