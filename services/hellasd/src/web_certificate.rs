//! The certificate the web pages are served with over HTTPS: a key pair and a self-signed
//! certificate made on the box at first start (never in the image, so no two boxes share one),
//! kept in `tls/` in the state directory. No authority vouches for it, so a browser warns on the
//! first visit; the owner checks the fingerprint the box shows on its own screen and in the
//! setup before accepting it (docs/security.md).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::state_file::write_atomically;

pub struct WebCertificate {
    pub cert_der: Vec<u8>,
    /// PKCS#8.
    pub key_der: Vec<u8>,
}

fn paths(state_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = state_dir.join("tls");
    (dir.join("web.key"), dir.join("web.crt"))
}

impl WebCertificate {
    /// The box's certificate, made now if it has none: for `<box_name>.local`, `hellas.local`
    /// and `localhost`. Run as the daemon's user, who must be able to read it.
    pub fn load_or_create(state_dir: &Path, box_name: &str) -> Result<WebCertificate> {
        if let Some(existing) = WebCertificate::load(state_dir)? {
            return Ok(existing);
        }
        let (key_path, cert_path) = paths(state_dir);
        let dir = key_path.parent().expect("in tls/");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = rcgen::KeyPair::generate().context("making the web key pair")?;
        let names: Vec<String> = [format!("{box_name}.local"), "hellas.local".into(), "localhost".into()].into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let mut params = rcgen::CertificateParams::new(names).context("the web certificate's names")?;
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("Hellas box {box_name}"));
        // Browsers refuse certificates valid for more than about a year only when an authority
        // issued them; a self-signed one the owner accepted stays accepted for its life.
        params.not_before = rcgen::date_time_ymd(2025, 1, 1);
        params.not_after = rcgen::date_time_ymd(2045, 1, 1);
        let cert = params.self_signed(&key).context("signing the web certificate")?;
        // The key goes first: a certificate without its key is what `load` treats as none.
        write_atomically(&key_path, &key.serialize_der())?;
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).with_context(|| format!("restricting {}", key_path.display()))?;
        write_atomically(&cert_path, cert.der())?;
        let made = WebCertificate { cert_der: cert.der().to_vec(), key_der: key.serialize_der() };
        tracing::info!(fingerprint = %made.fingerprint(), "made this box's web certificate");
        Ok(made)
    }

    /// The box's certificate, if it has one.
    pub fn load(state_dir: &Path) -> Result<Option<WebCertificate>> {
        let (key_path, cert_path) = paths(state_dir);
        if !key_path.exists() || !cert_path.exists() {
            return Ok(None);
        }
        let key_der = fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let cert_der = fs::read(&cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        Ok(Some(WebCertificate { cert_der, key_der }))
    }

    /// SHA-256 of the certificate, as browsers show it: `AB:CD:…`.
    pub fn fingerprint(&self) -> String {
        Sha256::digest(&self.cert_der).iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }
}
