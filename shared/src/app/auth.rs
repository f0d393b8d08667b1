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
    /// The key's own rate, if it has one below the deployment's.
    pub rate_limit: Option<crate::domain::Rate>,
    /// The first key of its rotation chain: what its rate is counted by
    /// (a rotation gives no fresh allowance).
    pub lineage: ApiKeyId,
}

impl Principal {
    /// Whether the caller may see the workflow's runs (another
    /// workflow's are "not found" to a limited key).
    pub fn may_see(&self, wf: &WorkflowId) -> bool {
        self.workflows.as_ref().is_none_or(|l| l.contains(wf))
    }

    /// Who this is across rotations (the first key of the chain): what
    /// `created_by` of the workflows it makes names.
    pub fn actor(&self) -> String {
        format!("key:{}", self.lineage)
    }

    pub fn of(rec: &ApiKeyRecord) -> Self {
        Principal {
            workspace_id: rec.workspace_id.clone(),
            key_id: rec.id.clone(),
            role: rec.role,
            workflows: rec.workflows.clone(),
            rate_limit: rec.rate_limit,
            lineage: rec.rotated_from.clone().unwrap_or_else(|| rec.id.clone()),
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
/// by zxcvbn's estimate, summed over its 16-character pieces (about 100
/// bits; 32 random hex digits make 10^32).
const MIN_CHOSEN_KEY_GUESSES_LOG10: f64 = 30.0;

/// zxcvbn's estimate of a key: the guesses its pieces take (as a power of
/// ten, summed), and the share of its characters in words (plain, of 3
/// letters or more) or in keyboard walks, sequences and repeats of 4 or
/// more.
///
/// zxcvbn is made for passwords: on a long string it gives up and counts
/// the whole as random, so it reads the key 16 characters at a time — and
/// again from the 9th, so that no word hides across a cut.
fn key_estimate(key: &str) -> (f64, f64) {
    use zxcvbn::matching::patterns::MatchPattern as P;
    let chars: Vec<char> = key.chars().collect();
    let mut covered = vec![false; chars.len()];
    let mut guesses = 0.0;
    for offset in [0, 8] {
        let mut start = if offset == 0 {
            0
        } else {
            offset.min(chars.len())
        };
        if offset > 0 {
            // The first piece of this reading is the head before the offset.
            mark(&chars[..start], 0, &mut covered);
        }
        while start < chars.len() {
            let end = (start + 16).min(chars.len());
            let g = mark(&chars[start..end], start, &mut covered);
            if offset == 0 {
                guesses += g;
            }
            start = end;
        }
    }
    /// Marks the patterned characters of one piece; its guesses.
    fn mark(piece: &[char], at: usize, covered: &mut [bool]) -> f64 {
        if piece.is_empty() {
            return 0.0;
        }
        let text: String = piece.iter().collect();
        let e = zxcvbn::zxcvbn(&text, &[]);
        for m in e.sequence() {
            let len = m.j + 1 - m.i;
            let patterned = match &m.pattern {
                P::Dictionary(d) => !d.l33t && !d.reversed && len >= 3,
                P::Spatial(_) | P::Repeat(_) | P::Sequence(_) => len >= 4,
                _ => false,
            };
            if patterned {
                for c in covered.iter_mut().skip(at + m.i).take(len) {
                    *c = true;
                }
            }
        }
        e.guesses_log10()
    }
    let share = covered.iter().filter(|c| **c).count() as f64 / chars.len().max(1) as f64;
    (guesses, share)
}

/// A key chosen by an operator (not generated) must be long and look
/// random: 32 to 200 visible ASCII characters, at most 30% of them in
/// patterns zxcvbn knows (words, keyboard walks, sequences, repeats), and
/// about 100 bits by its estimate.
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
    let (guesses, patterned) = key_estimate(key);
    if guesses < MIN_CHOSEN_KEY_GUESSES_LOG10 || patterned > 0.3 {
        return Err("this API key is too easy to guess (words, sequences, keyboard walks or repeats): use a random one, e.g. `openssl rand -hex 24`".into());
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
    fn chosen_keys_must_be_long_and_look_random() {
        assert!(check_key_strength(&generate_api_key()).is_ok());
        for random in [
            "3f9c1a7be04d52c8a6e19f0b7d3c25e8a4b6",
            "b5e1f0c3a9d24e7f8a6b1c0d3e2f4a59",
            "Xk9#mP2$vL7@qR4!nT8%wY3^zB6&cD1*",
            "weft_4VeNm4amlUk1JRE2LqVw23AyUsTf2KYkywjNSXJZ",
            "9c4f2e81b07a3d56e2c1f8a94b3d07e6a15f2c8d9e0b4a73",
        ] {
            assert!(check_key_strength(random).is_ok(), "{random}");
        }
        for weak in [
            "dev-key",
            "password1234567890password1234567890",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abababababababababababababababababab",
            "has a space in it 0123456789abcdefghijkl",
            "correcthorsebatterystaplecorrecthorse",
            "thequickbrownfoxjumpsoverthelazydog",
            "weft-dev-api-key-for-local-testing",
            "supersecretpasswordforweftdevserver",
            "MyCompanyProductionApiKey2024Secure!",
            "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
            "2024-01-01T00:00:00Z2024-01-01T00:00",
            "0123456789abcdef0123456789abcdef01",
            "weft_test_key_for_the_crash_test_aaaa",
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
