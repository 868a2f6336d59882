//! This box's cluster identity: a key pair made on first start (never baked into the image) and
//! a self-signed certificate for it. Peers pin the certificate's SHA-256, which is also where the
//! node id comes from, so an id cannot be claimed without the key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::state_file::write_atomically;

pub struct Identity {
    /// The first 16 hex digits of the fingerprint.
    pub node_id: String,
    /// SHA-256 of the certificate (DER), in hex.
    pub fingerprint: String,
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

impl Identity {
    /// The identity kept in `dir`, made there first if it has none.
    pub fn load_or_create(dir: &Path) -> Result<Identity> {
        let (key_path, cert_path) = (dir.join("node.key"), dir.join("node.crt"));
        if !key_path.exists() || !cert_path.exists() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = rcgen::KeyPair::generate().context("making the cluster key pair")?;
            let params = rcgen::CertificateParams::new(vec!["hellas".to_string()])
                .context("certificate parameters")?;
            let cert = params
                .self_signed(&key)
                .context("signing the cluster certificate")?;
            Identity::save(dir, &key.serialize_der(), cert.der())?;
            tracing::info!(dir = %dir.display(), "made this box's cluster key");
        }
        let key_der =
            fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let cert_der =
            fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        let fingerprint = fingerprint(&cert_der);
        Ok(Identity {
            node_id: fingerprint[..16].to_string(),
            fingerprint,
            cert_der,
            key_der,
        })
    }
}

impl Identity {
    /// Keeps a key pair and its certificate in `dir` (a backup's, restored), for the next start.
    pub fn save(dir: &Path, key_der: &[u8], cert_der: &[u8]) -> Result<()> {
        let (key_path, cert_path) = (dir.join("node.key"), dir.join("node.crt"));
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // The key goes first: a certificate without its key is what `load_or_create` redoes.
        write_atomically(&key_path, key_der)?;
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", key_path.display()))?;
        write_atomically(&cert_path, cert_der)
    }
}

pub fn fingerprint(cert_der: &[u8]) -> String {
    hex::encode(Sha256::digest(cert_der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.node_id.len(), 16);
        let mode = fs::metadata(dir.path().join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            Identity::load_or_create(other.path()).unwrap().fingerprint,
            a.fingerprint
        );
    }
}
