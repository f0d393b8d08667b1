//! Envelope encryption for secrets at rest: each workspace has its own random
//! data key, stored wrapped (AES-256-GCM) by the master key; each secret is
//! sealed with its workspace's data key. The associated data binds every
//! ciphertext to its row, so sealed values cannot be moved between
//! workspaces or names.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;

use crate::ports::StoreError;

const NONCE_LEN: usize = 12;

/// The key that wraps every workspace's data key.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self(k)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

pub(super) fn new_data_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand::rng().fill_bytes(&mut k);
    k
}

/// Encrypts `plain`; the result is nonce || ciphertext.
pub(super) fn seal(key: &[u8; 32], plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key));
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| StoreError::Unavailable("encryption failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    Ok(out)
}

pub(super) fn open(key: &[u8; 32], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
    if sealed.len() < NONCE_LEN {
        return Err(StoreError::Unavailable(
            "a sealed value is truncated".into(),
        ));
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map_err(|_| {
            StoreError::Unavailable(
                "a sealed value could not be decrypted (wrong master key?)".into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_and_binds_the_associated_data() {
        let k = new_data_key();
        let sealed = seal(&k, b"hunter2", b"ws_a/API").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(open(&k, &sealed, b"ws_a/API").unwrap(), b"hunter2");
        assert!(open(&k, &sealed, b"ws_b/API").is_err());
        assert!(open(&new_data_key(), &sealed, b"ws_a/API").is_err());
    }
}
