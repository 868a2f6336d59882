//! The owner of the box and the settings chosen in the setup: `owner.json` in the state
//! directory. The password is kept only as an argon2id hash (PHC string).
//!
//! Beside it: [`claim`], the code that proves whoever claims the box stands at it, and
//! [`session`], the browsers' sessions and the limits on guessing.

pub mod claim;
pub mod session;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};
use hellas_contract::network::StaticWired;
use hellas_contract::seed::Seed;

use crate::state_file::{unix_now, StateFile};

pub use claim::ClaimFiles;
pub use session::{Limiter, Session, Sessions};

pub const MIN_PASSWORD: usize = 10;
pub const MAX_PASSWORD: usize = 256;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OwnerFile {
    pub owner: Option<Owner>,
    #[serde(default)]
    pub settings: Settings,
    /// The owner finished the setup (has seen the first API key).
    #[serde(default)]
    pub setup_done: bool,
    /// A claim code seeded on the stick (`crate::seed`): every boot's code until the box is
    /// claimed, which spends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_code: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    /// argon2id, as a PHC string.
    pub password: String,
    pub claimed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// The host name announced over mDNS (`<box_name>.local`).
    pub box_name: String,
    pub timezone: String,
    /// OpenSSH public keys allowed to log in as the admin user; sshd stays off while empty.
    pub ssh_keys: Vec<String>,
    /// The release channel's URL; empty: `update.channel` from the configuration.
    pub update_channel: String,
    /// Paired boxes may wipe this one (re-image without the data) without asking; otherwise
    /// such a request waits for the owner on the Pool page.
    pub peers_may_wipe: bool,
    /// A static address for the wired network; none: DHCP.
    pub static_wired: Option<StaticWired>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            box_name: "hellas".into(),
            timezone: "UTC".into(),
            ssh_keys: Vec::new(),
            update_channel: String::new(),
            peers_may_wipe: false,
            static_wired: None,
        }
    }
}

/// Where the daemon asks root to apply the owner's settings (see [`OwnerStore::ask_root_to_apply`]).
pub fn apply_request_path(state_dir: &Path) -> PathBuf {
    state_dir.join("settings/apply")
}

/// The owner's store in `state_dir`.
pub fn owner_store(state_dir: &Path) -> OwnerStore {
    OwnerStore::open(state_dir.join("owner.json"))
}

pub struct OwnerStore {
    file: StateFile<OwnerFile>,
}

impl OwnerStore {
    pub fn open(path: PathBuf) -> OwnerStore {
        OwnerStore { file: StateFile::new(path) }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn load(&self) -> Result<OwnerFile> {
        Ok((*self.file.load()?).clone())
    }

    pub fn is_claimed(&self) -> Result<bool> {
        Ok(self.file.load()?.owner.is_some())
    }

    /// Makes the box the caller's. Fails when it has an owner already. Slow (argon2): call it
    /// off the async runtime.
    pub fn claim(&self, password: &str) -> Result<()> {
        check_password(password).map_err(anyhow::Error::msg)?;
        let hash = hash_password(password)?;
        self.file.update(|f| {
            if f.owner.is_some() {
                bail!("this box has an owner already: log in instead");
            }
            f.owner = Some(Owner { password: hash, claimed: unix_now() });
            f.claim_code = None;
            Ok(())
        })
    }

    /// Replaces the password of a claimed box. Slow (argon2).
    pub fn set_password(&self, password: &str) -> Result<()> {
        check_password(password).map_err(anyhow::Error::msg)?;
        let hash = hash_password(password)?;
        self.file.update(|f| {
            let owner = f.owner.as_mut().context("this box has no owner yet: claim it first")?;
            owner.password = hash;
            Ok(())
        })
    }

    /// Whether `password` is the owner's. Slow (argon2).
    pub fn verify_password(&self, password: &str) -> Result<bool> {
        let file = self.file.load()?;
        let Some(owner) = &file.owner else { return Ok(false) };
        let hash = PasswordHash::new(&owner.password)
            .map_err(|e| anyhow::anyhow!("the owner's password hash in {} is damaged: {e}", self.path().display()))?;
        Ok(Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
    }

    pub fn update_settings(&self, settings: Settings) -> Result<()> {
        self.file.update(|f| {
            f.settings = settings;
            Ok(())
        })?;
        self.ask_root_to_apply()
    }

    /// `settings/apply` beside `owner.json`: while it exists, hellas-settings.path has root apply
    /// the settings (`hellasd apply-settings` removes it first). A file that is there, not an
    /// edge on `owner.json`, so a change made while root applies the last one is not lost.
    pub fn ask_root_to_apply(&self) -> Result<()> {
        let flag = apply_request_path(self.path().parent().unwrap_or(Path::new(".")));
        let dir = flag.parent().expect("in settings/");
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(&flag, b"").with_context(|| format!("writing {}", flag.display()))
    }

    /// First-boot settings from the stick (`crate::seed`), in one write; refused once the box
    /// has an owner. Settings the seed leaves out keep their values.
    /// The seed's settings (its Wi-Fi network aside, which is root's: `seed::apply`).
    pub fn seed(&self, seed: &Seed) -> Result<()> {
        self.file.update(|f| {
            if f.owner.is_some() {
                bail!("this box has an owner already");
            }
            if let Some(name) = &seed.hostname {
                f.settings.box_name = name.clone();
            }
            if let Some(keys) = &seed.ssh_authorized_keys {
                f.settings.ssh_keys = keys.clone();
            }
            if let Some(code) = &seed.claim_code {
                f.claim_code = Some(code.clone());
            }
            if let Some(wired) = &seed.wired {
                f.settings.static_wired = Some(wired.clone());
            }
            Ok(())
        })
    }

    pub fn finish_setup(&self) -> Result<()> {
        self.file.update(|f| {
            f.setup_done = true;
            Ok(())
        })
    }
}

/// The rules a password must meet, as shown on the form.
pub fn check_password(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD {
        return Err(format!("the password needs at least {MIN_PASSWORD} characters ({chars} given)"));
    }
    if chars > MAX_PASSWORD {
        return Err(format!("the password may have at most {MAX_PASSWORD} characters"));
    }
    if password.chars().any(|c| c.is_control()) {
        return Err("the password may not contain control characters".into());
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))
}


/// A time zone from the tz database, e.g. `Europe/Athens`, that exists under `zoneinfo` when
/// that directory is present.
pub fn check_timezone(zone: &str, zoneinfo: &Path) -> Result<(), String> {
    let shaped = !zone.is_empty()
        && zone.len() <= 64
        && zone.split('/').all(|part| !part.is_empty() && part != "." && part != "..")
        && zone.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if !shaped || (zoneinfo.is_dir() && !zoneinfo.join(zone).is_file()) {
        return Err(format!("'{zone}' is not a known time zone: pick one from the list, e.g. Europe/Athens or UTC"));
    }
    Ok(())
}

/// The zones to offer: `zone1970.tab` when the tz database is installed, else only UTC.
pub fn timezones(zoneinfo: &Path) -> Vec<String> {
    let mut zones: Vec<String> = std::fs::read_to_string(zoneinfo.join("zone1970.tab"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split('\t').nth(2).map(str::to_string))
        .collect();
    zones.push("UTC".into());
    zones.sort();
    zones.dedup();
    zones
}

/// An update channel is empty (the configured one) or an http(s) URL of a directory: parsed as a
/// URL, with a host, and nothing the transfer files could read as more than a path (no spaces or
/// control characters, no user or password, query or fragment).
pub fn check_update_channel(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Ok(());
    }
    let refused = || "the update channel must be an http:// or https:// URL (the directory holding SHA256SUMS), or empty for the default".to_string();
    if url.len() > 512 || url.contains(|c: char| c.is_whitespace() || c.is_control()) {
        return Err(refused());
    }
    let parsed = reqwest::Url::parse(url).map_err(|_| refused())?;
    let plain = ["http", "https"].contains(&parsed.scheme())
        && parsed.host_str().is_some_and(|h| !h.is_empty())
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if plain { Ok(()) } else { Err(refused()) }
}

impl Settings {
    /// Checks every value as the web settings form does. `owner.json` is the daemon's to write,
    /// so root, which applies the settings (`apply-settings`, the updater), trusts nothing in it
    /// unchecked: a key with a line break or options, a host name or channel that would write
    /// more than itself into a system file, is refused with the reason.
    pub fn checked(&self) -> Result<(), String> {
        hellas_contract::box_name::check(&self.box_name).map_err(|e| format!("box name {:?}: {e}", self.box_name))?;
        check_timezone(&self.timezone, Path::new("/nonexistent")).map_err(|e| format!("time zone: {e}"))?;
        check_update_channel(&self.update_channel).map_err(|e| format!("update channel {:?}: {e}", self.update_channel))?;
        for (n, key) in self.ssh_keys.iter().enumerate() {
            let parsed = hellas_contract::ssh_keys::parse(key).map_err(|e| format!("SSH key {}: {e}", n + 1))?;
            if parsed.len() != 1 || parsed[0] != *key {
                return Err(format!("SSH key {} is not one key on one line", n + 1));
            }
        }
        if let Some(wired) = &self.static_wired {
            wired.check().map_err(|e| format!("static wired address: {e}"))?;
        }
        Ok(())
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_once_then_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnerStore::open(dir.path().join("owner.json"));
        assert!(!store.is_claimed().unwrap());
        assert!(store.claim("short").is_err());
        store.claim("correct horse battery").unwrap();
        assert!(store.is_claimed().unwrap());
        assert!(store.claim("another long password").is_err());
        assert!(store.verify_password("correct horse battery").unwrap());
        assert!(!store.verify_password("correct horse batterY").unwrap());
        let text = std::fs::read_to_string(store.path()).unwrap();
        assert!(text.contains("$argon2id$") && !text.contains("correct horse"));
    }

    #[test]
    fn a_settings_change_asks_root_to_apply_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = OwnerStore::open(dir.path().join("owner.json"));
        let request = apply_request_path(dir.path());
        assert!(!request.exists());
        store.update_settings(Settings { box_name: "kitchen".into(), ..Settings::default() }).unwrap();
        assert!(request.exists(), "the request stays until root takes it");
    }

    #[test]
    fn zones_are_checked() {
        let none = Path::new("/nonexistent");
        assert!(check_timezone("Europe/Athens", none).is_ok());
        for bad in ["", "../etc/passwd", "Europe/../x", "a b", "/abs"] {
            assert!(check_timezone(bad, none).is_err(), "{bad}");
        }
    }
}
