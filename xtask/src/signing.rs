//! The release signing key: systemd-sysupdate on the device accepts a channel only when its
//! `SHA256SUMS` carries a detached OpenPGP signature by a key in the image's keyring
//! (`/usr/lib/systemd/import-pubring.pgp`, which the builder replaces with this key alone).
//!
//! The key is a GnuPG home directory: `$HELLAS_SIGNING_KEY`, or else a development key made once
//! in `$HELLAS_CACHE/signing-key`, which is fine for boxes of your own and wrong for a fleet
//! anyone else trusts.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use duct::cmd;

use crate::{cache, deps};

pub struct SigningKey {
    home: PathBuf,
}

impl SigningKey {
    /// `$HELLAS_SIGNING_KEY`, or the development key (made when missing).
    pub fn find() -> Result<SigningKey> {
        deps::ensure(&[deps::GNUPG])?;
        if let Some(home) = std::env::var_os("HELLAS_SIGNING_KEY").filter(|h| !h.is_empty()) {
            let key = SigningKey { home: PathBuf::from(home) };
            if key.public_key().map(|k| k.is_empty()).unwrap_or(true) {
                bail!("HELLAS_SIGNING_KEY={} holds no OpenPGP key: point it at the GnuPG home of the release key", key.home.display());
            }
            return Ok(key);
        }
        let home = cache::root()?.join("signing-key");
        if !home.join("pubring.kbx").exists() {
            make_development_key(&home)?;
        }
        Ok(SigningKey { home })
    }

    /// The public key, binary, as the image's keyring.
    pub fn public_key(&self) -> Result<Vec<u8>> {
        let key = self.gpg(&["--export"]).stdout_capture().stderr_null().unchecked().run().context("gpg --export")?;
        Ok(key.stdout)
    }

    /// Writes `<file>.gpg`, a detached binary signature of `file`.
    pub fn sign(&self, file: &Path) -> Result<PathBuf> {
        let signature = PathBuf::from(format!("{}.gpg", file.display()));
        let tmp = cache::temp_path(&signature, "tmp");
        let args = ["--batch", "--yes", "--detach-sign", "--output"];
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        all.push(tmp.as_os_str());
        all.push(file.as_os_str());
        self.gpg(&all).run().with_context(|| format!("signing {} with the key in {}", file.display(), self.home.display()))?;
        std::fs::rename(&tmp, &signature).with_context(|| format!("renaming {} into place", tmp.display()))?;
        Ok(signature)
    }

    fn gpg<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> duct::Expression {
        let mut all: Vec<std::ffi::OsString> = vec!["--homedir".into(), self.home.clone().into_os_string(), "--quiet".into()];
        all.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        cmd("gpg", all)
    }
}

fn make_development_key(home: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    eprintln!("==> signing: making a development release key in {} (set HELLAS_SIGNING_KEY for real releases)", home.display());
    let tmp = cache::temp_path(home, "tmp");
    cache::remove_any(&tmp)?;
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))?;
    cmd!("gpg", "--homedir", &tmp, "--batch", "--quiet", "--passphrase", "", "--quick-generate-key", "Hellas development release key", "ed25519", "sign", "never")
        .run()
        .context("gpg could not make the development release key")?;
    // The agent gpg started for the new home must not outlive it.
    let _ = cmd!("gpgconf", "--homedir", &tmp, "--kill", "gpg-agent").stderr_null().unchecked().run();
    std::fs::rename(&tmp, home).with_context(|| format!("moving the new key to {}", home.display()))
}
