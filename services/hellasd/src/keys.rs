//! API keys for clients (`Authorization: Bearer hls_…`).
//!
//! Only a SHA-256 of each key is stored (`keys.json` in the state directory). Keys carry 256 bits
//! from the OS RNG, so a fast hash is enough to make a leaked file useless; a slow password hash
//! (argon2) is for the owner's password, whose entropy is low.

use std::path::PathBuf;

use anyhow::{bail, Result};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::state_file::{unix_now, StateFile};

const PREFIX: &str = "hls_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Short public identifier, safe to show and log.
    pub id: String,
    pub name: String,
    pub sha256: String,
    pub created: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyFile {
    pub keys: Vec<KeyRecord>,
}

pub struct KeyStore {
    file: StateFile<KeyFile>,
}

impl KeyStore {
    pub fn open(path: PathBuf) -> KeyStore {
        KeyStore { file: StateFile::new(path) }
    }

    /// Makes a key and returns it with its secret, which is shown once and never stored.
    pub fn create(&self, name: &str) -> Result<(KeyRecord, String)> {
        if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control()) {
            bail!("invalid key name {name:?}: 1 to 64 printable characters");
        }
        let mut secret_bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret_bytes);
        let secret = format!("{PREFIX}{}", hex::encode(secret_bytes));
        let record = KeyRecord {
            id: hex::encode(&Sha256::digest(secret.as_bytes())[..4]),
            name: name.to_string(),
            sha256: hash(&secret),
            created: unix_now(),
        };
        self.file.update(|f| {
            if f.keys.iter().any(|k| k.name == name) {
                bail!("a key named '{name}' exists already: pick another name or revoke it first");
            }
            f.keys.push(record.clone());
            Ok(())
        })?;
        Ok((record, secret))
    }

    /// Replaces every key with `records` (a backup's, already checked).
    pub fn replace_all(&self, records: Vec<KeyRecord>) -> Result<()> {
        self.file.update(|f| {
            f.keys = records;
            Ok(())
        })
    }

    pub fn list(&self) -> Result<Vec<KeyRecord>> {
        Ok(self.file.load()?.keys.clone())
    }

    /// Revokes by id or name.
    pub fn revoke(&self, id_or_name: &str) -> Result<KeyRecord> {
        self.file.update(|f| {
            let pos = f
                .keys
                .iter()
                .position(|k| k.id == id_or_name || k.name == id_or_name)
                .ok_or_else(|| anyhow::anyhow!("no API key with id or name '{id_or_name}' (see `hellasd keys list`)"))?;
            Ok(f.keys.remove(pos))
        })
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.file.load()?.keys.is_empty())
    }

    /// The key a bearer token belongs to, if any.
    pub fn verify(&self, token: &str) -> Result<Option<KeyRecord>> {
        if !token.starts_with(PREFIX) {
            return Ok(None);
        }
        let digest = hash(token);
        Ok(self.file.load()?.keys.iter().find(|k| k.sha256 == digest).cloned())
    }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let store = KeyStore::open(dir.path().join("keys.json"));
        assert!(store.is_empty().unwrap());
        let (record, secret) = store.create("laptop").unwrap();
        assert!(secret.starts_with("hls_"));
        assert!(!std::fs::read_to_string(dir.path().join("keys.json")).unwrap().contains(&secret));
        assert_eq!(store.verify(&secret).unwrap().unwrap().id, record.id);
        assert!(store.verify("hls_nope").unwrap().is_none());
        assert!(store.create("laptop").is_err());
        store.revoke(&record.id).unwrap();
        assert!(store.verify(&secret).unwrap().is_none());
        assert!(store.revoke("laptop").is_err());
    }
}
