//! The owner's backup: one file with what makes this box theirs, to restore onto a reset or
//! replacement box while claiming it.
//!
//! It holds the settings, the API keys as stored (SHA-256 digests, never the keys), the pool
//! pairings with this box's cluster identity (its peers pin that key, so the file is as private
//! as an SSH key), and the model list with where each came from; not the owner's password (the
//! claim sets a new one) and not the weights (they are downloaded again).
//!
//! The file is JSON: a header (format, version, box, time) around `contents`, whose exact text
//! is covered by a SHA-256 in the header. A file that is not JSON, not a Hellas backup, of a
//! newer format, damaged (the digest differs) or holding a value the setup would refuse is
//! refused whole, before anything is changed.

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::cluster::peers::Peer;
use crate::keys::KeyRecord;
use crate::owner::Settings;

pub const FORMAT: &str = "hellas-backup";
/// The newest format this build writes and reads.
pub const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct File<'a> {
    format: String,
    version: u32,
    created: u64,
    box_name: String,
    /// SHA-256 of the text of `contents`, as written.
    sha256: String,
    #[serde(borrow)]
    contents: &'a RawValue,
}

/// What a backup carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    pub settings: Settings,
    pub api_keys: Vec<KeyRecord>,
    pub pool: Option<PoolBackup>,
    pub models: Vec<ModelBackup>,
}

/// This box's cluster identity and its pairings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolBackup {
    /// The key pair (PKCS#8 DER) and certificate (DER), base64.
    pub key: String,
    pub certificate: String,
    pub peers: Vec<Peer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelBackup {
    pub name: String,
    pub sha256: String,
    /// Where it came from (`hf.co/…@commit` or a catalog name); none for a file added by hand,
    /// which cannot be fetched again.
    pub source: Option<String>,
}

/// Writes `contents` as a backup file.
pub fn write(contents: &Contents, box_name: &str, created: u64) -> Result<Vec<u8>> {
    let text = serde_json::to_string_pretty(contents).context("writing the backup's contents")?;
    let raw = RawValue::from_string(text).context("the backup's contents")?;
    let file = File {
        format: FORMAT.into(),
        version: VERSION,
        created,
        box_name: box_name.into(),
        sha256: hex::encode(Sha256::digest(raw.get().as_bytes())),
        contents: &raw,
    };
    Ok(serde_json::to_vec_pretty(&file)?)
}

/// Reads and checks a backup file; the error says what is wrong with it, for the owner.
pub fn read(bytes: &[u8]) -> Result<Contents> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| anyhow::anyhow!("this is not a Hellas backup (not the JSON one is made of: {e})"))?;
    if file.format != FORMAT {
        bail!("this is not a Hellas backup (its format is '{}')", file.format);
    }
    if file.version > VERSION {
        bail!("this backup was made by a newer Hellas (format {}; this box reads up to {VERSION}): update this box first, then restore it", file.version);
    }
    if hex::encode(Sha256::digest(file.contents.get().as_bytes())) != file.sha256 {
        bail!("this backup is damaged: its contents do not match the checksum it was written with");
    }
    let contents: Contents = serde_json::from_str(file.contents.get()).context("this backup's contents are not what a Hellas backup holds")?;
    check(&contents)?;
    Ok(contents)
}

/// Every value checked as the setup would check it when entered.
fn check(contents: &Contents) -> Result<()> {
    contents.settings.checked().map_err(|why| anyhow::anyhow!("its settings would not be accepted: {why}"))?;
    let hex_of = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    for key in &contents.api_keys {
        if !hex_of(&key.sha256, 64) || !hex_of(&key.id, 8) || key.name.is_empty() || key.name.len() > 64 || key.name.chars().any(char::is_control) {
            bail!("its API key '{}' is not one a Hellas box writes", key.name.escape_debug());
        }
    }
    if let Some(pool) = &contents.pool {
        let (key, cert) = pool.decoded()?;
        rcgen::KeyPair::try_from(key.as_slice()).context("its cluster key is not a key")?;
        if cert.is_empty() {
            bail!("its cluster certificate is empty");
        }
        for peer in &pool.peers {
            if !hex_of(&peer.fingerprint, 64) || !hex_of(&peer.node_id, 16) || hellas_contract::box_name::check(&peer.name).is_err() {
                bail!("its pairing with '{}' is not one a Hellas box writes", peer.name.escape_debug());
            }
        }
    }
    for model in &contents.models {
        crate::library::validate_name(&model.name).with_context(|| format!("its model '{}'", model.name.escape_debug()))?;
        if !hex_of(&model.sha256, 64) {
            bail!("its model '{}' has no valid digest", model.name.escape_debug());
        }
    }
    Ok(())
}

impl PoolBackup {
    pub fn new(key_der: &[u8], cert_der: &[u8], peers: Vec<Peer>) -> PoolBackup {
        let b64 = base64::engine::general_purpose::STANDARD;
        PoolBackup { key: b64.encode(key_der), certificate: b64.encode(cert_der), peers }
    }

    /// The key pair and certificate, as DER.
    pub fn decoded(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(&self.key).context("its cluster key is not base64")?;
        let cert = b64.decode(&self.certificate).context("its cluster certificate is not base64")?;
        Ok((key, cert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents() -> Contents {
        Contents {
            settings: Settings { box_name: "alpha".into(), ..Settings::default() },
            api_keys: vec![KeyRecord { id: "0a1b2c3d".into(), name: "laptop".into(), sha256: "ab".repeat(32), created: 1 }],
            pool: None,
            models: vec![ModelBackup { name: "smollm2:135m".into(), sha256: "cd".repeat(32), source: Some("hf.co/a/b:Q4_K_M".into()) }],
        }
    }

    #[test]
    fn a_backup_reads_back_as_written() {
        let bytes = write(&contents(), "alpha", 7).unwrap();
        assert_eq!(read(&bytes).unwrap(), contents());
    }

    #[test]
    fn damaged_foreign_newer_and_hostile_files_are_refused() {
        let good = String::from_utf8(write(&contents(), "alpha", 7).unwrap()).unwrap();
        let refused = |text: &str, why: &str| {
            let err = format!("{:#}", read(text.as_bytes()).unwrap_err());
            assert!(err.contains(why), "{why}: {err}");
        };
        refused(&good[..good.len() / 2], "not a Hellas backup");
        refused(&good.replace("\"hellas-backup\"", "\"other-backup\""), "its format is 'other-backup'");
        refused(&good.replace("\"version\": 1", "\"version\": 2"), "made by a newer Hellas");
        refused(&good.replace("laptop", "laptoq"), "damaged");
        // A hostile value with its checksum recomputed, as an attacker would.
        let hostile = Contents { settings: Settings { box_name: "../../etc".into(), ..Settings::default() }, ..contents() };
        refused(&String::from_utf8(write(&hostile, "alpha", 7).unwrap()).unwrap(), "settings would not be accepted");
        let bad_key = Contents { api_keys: vec![KeyRecord { sha256: "x".into(), ..contents().api_keys[0].clone() }], ..contents() };
        refused(&String::from_utf8(write(&bad_key, "alpha", 7).unwrap()).unwrap(), "API key 'laptop'");
    }
}
