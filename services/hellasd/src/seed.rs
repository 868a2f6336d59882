//! First-boot settings seeded on the stick: `/hellas/seed.toml` on the ESP, written by
//! `cargo xtask flash` (`xtask/src/flash/seed.rs`) or by hand, and applied once by
//! `hellasd apply-seed` as root (hellas-seed.service, before the claim code and hellasd).
//!
//! This module owns reading and checking that file, applying it to a box that has no owner yet
//! (`hostname` becomes the box name, `ssh_authorized_keys` the owner's SSH keys, `claim_code`
//! the claim code of every boot until the box is claimed) and removing it afterwards. A file
//! that does not check out is renamed `seed.toml.rejected`, with nothing of it applied, so it is
//! not tried again at every boot; the error says what to fix.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use hellas_contract::network::IWD_DIR;
use hellas_contract::seed::{self, Seed, MAX_LEN};

use crate::config::Config;
use crate::owner::{owner_store, ClaimFiles};
use crate::state_file::{give_to_directory_owner, sync_dir};

/// What [`apply`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// There is no seed file: every boot after the first.
    Absent,
    /// The seed was applied and removed.
    Applied,
    /// The box has an owner already: the seed was removed without being applied.
    IgnoredClaimed,
}

/// The seed file below the ESP mount point.
pub fn seed_path(esp: &Path) -> PathBuf {
    esp.join(seed::PATH)
}

/// Applies `<esp>/hellas/seed.toml`, when there is one, and removes it. Running it again does
/// nothing, and a crash before the removal applies the same settings again.
pub fn apply(config: &Config, esp: &Path) -> Result<Outcome> {
    apply_with_iwd(config, esp, Path::new(IWD_DIR))
}

fn apply_with_iwd(config: &Config, esp: &Path, iwd_dir: &Path) -> Result<Outcome> {
    let path = seed_path(esp);
    let Some(bytes) = read(&path)? else { return Ok(Outcome::Absent) };
    let store = owner_store(&config.state_dir);
    if store.is_claimed()? {
        tracing::info!("{}: this box has an owner already, so the seed is ignored and removed", path.display());
        remove(&path)?;
        return Ok(Outcome::IgnoredClaimed);
    }
    let seed = match Seed::parse(&bytes) {
        Ok(seed) => seed,
        Err(problem) => {
            let rejected = path.with_extension("toml.rejected");
            fs::rename(&path, &rejected).with_context(|| format!("renaming {} to {}", path.display(), rejected.display()))?;
            sync_dir(rejected.parent().expect("below the ESP"))?;
            let message = format!(
                "{}: {problem}. Nothing of it was applied; it is now {}: fix it and rename it back to seed.toml, or remove it \
                 (docs/operator-guide.md, \"Seed file\")",
                path.display(),
                rejected.display()
            );
            // The box's screen and the setup page say so too, this boot.
            if let Err(e) = record_refusal(&config.web.runtime_dir, &message) {
                tracing::warn!("{e:#}");
            }
            bail!(message);
        }
    };

    // The Wi-Fi passphrase goes to root's iwd store, never to the owner's state.
    if let Some(wifi) = &seed.wifi {
        crate::network::save_wifi(iwd_dir, wifi)?;
    }
    store.seed(&seed)?;
    give_to_directory_owner(&config.state_dir, &[store.path().to_path_buf(), store.path().with_extension("lock")])?;
    if let Some(code) = &seed.claim_code {
        // hellas-seed.service runs before the claim code is made; this is for a hand-run
        // apply-seed after it, so the console and the web setup agree at once.
        let runtime = &config.web.runtime_dir;
        if runtime.is_dir() {
            let fingerprint = crate::web_certificate::WebCertificate::load(&config.state_dir)?.map(|c| c.fingerprint());
            let claim = ClaimFiles::new(runtime).with_fingerprint(fingerprint);
            claim.set(code)?;
            give_to_directory_owner(runtime, &[claim.code_path(), claim.issue_path()])?;
        }
    }
    remove(&path)?;
    tracing::info!(
        "{}: applied and removed (box name: {}, SSH keys: {}, claim code: {}, Wi-Fi: {}, wired: {})",
        path.display(),
        seed.hostname.as_deref().unwrap_or("unchanged"),
        seed.ssh_authorized_keys.as_ref().map_or("unchanged".to_string(), |k| k.len().to_string()),
        if seed.claim_code.is_some() { "seeded" } else { "random" },
        seed.wifi.as_ref().map_or("none", |w| w.ssid.as_str()),
        seed.wired.as_ref().map_or("DHCP", |w| w.address.as_str()),
    );
    Ok(Outcome::Applied)
}

/// Where this boot's refused seed is described, for the box's screen and the setup page.
pub fn refusal_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("seed.refused")
}

/// Why this boot's seed was refused, if it was.
pub fn refusal(runtime_dir: &Path) -> Option<String> {
    fs::read_to_string(refusal_path(runtime_dir)).ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty())
}

fn record_refusal(runtime_dir: &Path, message: &str) -> Result<()> {
    let path = refusal_path(runtime_dir);
    crate::state_file::write_atomically(&path, message.as_bytes())?;
    give_to_directory_owner(runtime_dir, &[path])
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.len() > MAX_LEN {
        // Not read whole: it is rejected by `parse` as too long.
        return Ok(Some(vec![0; MAX_LEN as usize + 1]));
    }
    fs::read(path).map(Some).with_context(|| format!("reading {}", path.display()))
}

fn remove(path: &Path) -> Result<()> {
    fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    sync_dir(path.parent().expect("below the ESP"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop";

    struct Device {
        _dirs: [tempfile::TempDir; 3],
        config: Config,
        esp: PathBuf,
    }

    /// A box on its first boot: an ESP, an empty state directory and this boot's runtime one.
    fn first_boot() -> Device {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut config = Config { state_dir: dirs[1].path().join("state"), ..Config::default() };
        config.web.runtime_dir = dirs[2].path().to_path_buf();
        fs::create_dir_all(dirs[0].path().join("hellas")).unwrap();
        Device { esp: dirs[0].path().to_path_buf(), config, _dirs: dirs }
    }

    impl Device {
        fn write_seed(&self, text: &str) {
            fs::write(seed_path(&self.esp), text).unwrap();
        }

        fn owner(&self) -> crate::owner::OwnerStore {
            owner_store(&self.config.state_dir)
        }

        /// What `hellasd claim-code --ensure` prints at a boot: hellas-claim-code.service.
        fn claim_code_at_boot(&self, runtime: &Path) -> String {
            ClaimFiles::new(runtime).ensure(self.owner().load().unwrap().claim_code.as_deref()).unwrap()
        }
    }

    fn good_seed() -> String {
        format!("# a comment\nhostname = \"kitchen\"\nssh_authorized_keys = [\"{KEY}\"]\nclaim_code = \"ABCD-EF23\"\n")
    }

    #[test]
    fn a_good_seed_is_applied_once_then_removed() {
        let b = first_boot();
        b.write_seed(&good_seed());
        assert_eq!(apply(&b.config, &b.esp).unwrap(), Outcome::Applied);
        assert!(!seed_path(&b.esp).exists());
        let file = b.owner().load().unwrap();
        assert!(file.owner.is_none());
        assert_eq!(file.settings.box_name, "kitchen");
        assert_eq!(file.settings.ssh_keys, vec![KEY.to_string()]);
        assert_eq!(file.settings.timezone, "UTC");
        assert_eq!(file.claim_code.as_deref(), Some("ABCD-EF23"));

        let before = fs::read(b.owner().path()).unwrap();
        assert_eq!(apply(&b.config, &b.esp).unwrap(), Outcome::Absent);
        assert_eq!(fs::read(b.owner().path()).unwrap(), before);
    }

    #[test]
    fn the_wifi_passphrase_goes_to_iwd_alone_and_the_wired_address_to_the_settings() {
        let b = first_boot();
        let iwd = tempfile::tempdir().unwrap();
        b.write_seed("[wifi]\nssid = \"Home Net\"\npassphrase = \"a long and private phrase\"\n\n[wired]\naddress = \"192.168.7.2/24\"\n");
        assert_eq!(apply_with_iwd(&b.config, &b.esp, iwd.path()).unwrap(), Outcome::Applied);
        let network = fs::read_to_string(iwd.path().join("Home Net.psk")).unwrap();
        assert!(network.contains("Passphrase=a\\slong"), "{network}");
        let state = fs::read_to_string(b.owner().path()).unwrap();
        assert!(!state.contains("private phrase"), "the passphrase is not in the owner's state: {state}");
        assert_eq!(b.owner().load().unwrap().settings.static_wired.unwrap().address, "192.168.7.2/24");
    }

    #[test]
    fn the_seeded_claim_code_is_the_one_claim_code_reports_until_the_box_is_claimed() {
        let b = first_boot();
        b.write_seed("claim_code = \"ABCD-EF23\"\n");
        apply(&b.config, &b.esp).unwrap();
        // This boot (the runtime directory was there) and a later one (a fresh /run).
        assert_eq!(ClaimFiles::new(&b.config.web.runtime_dir).current().unwrap().as_deref(), Some("ABCD-EF23"));
        assert_eq!(b.claim_code_at_boot(&b.config.web.runtime_dir), "ABCD-EF23");
        let later = tempfile::tempdir().unwrap();
        assert_eq!(b.claim_code_at_boot(later.path()), "ABCD-EF23");
        assert_eq!(b.owner().load().unwrap().settings.box_name, "hellas", "a seed without a hostname keeps the name");

        b.owner().claim("correct horse battery").unwrap();
        assert_eq!(b.owner().load().unwrap().claim_code, None, "claiming spends the seeded code");
        let after_claim = tempfile::tempdir().unwrap();
        assert_ne!(b.claim_code_at_boot(after_claim.path()), "ABCD-EF23");
    }

    #[test]
    fn a_claimed_box_ignores_the_seed_and_removes_it() {
        let b = first_boot();
        b.owner().claim("correct horse battery").unwrap();
        let before = fs::read(b.owner().path()).unwrap();
        b.write_seed(&good_seed());
        assert_eq!(apply(&b.config, &b.esp).unwrap(), Outcome::IgnoredClaimed);
        assert!(!seed_path(&b.esp).exists());
        assert_eq!(fs::read(b.owner().path()).unwrap(), before);
        assert_eq!(ClaimFiles::new(&b.config.web.runtime_dir).current().unwrap(), None);
    }

    #[test]
    fn a_bad_seed_is_refused_whole_renamed_and_not_retried() {
        // Each with a good value beside the bad one: nothing of a bad file is applied.
        let cases = [
            ("claim_code = \"ABCD-EF23\"\nwifi_password = \"x\"\n", "line 2 (`wifi_password = \"x\"`): unknown field `wifi_password`"),
            ("claim_code = \"ABCD-EF23\"\nhostname = \"Kitchen\"\n", "key `hostname`: 'Kitchen' cannot be a box name"),
            ("claim_code = \"ABCD-EF23\"\nhostname = \"kitchen-\"\n", "key `hostname`"),
            ("claim_code = \"ABCD-EF23\"\nhostname = 7\n", "line 2 (`hostname = 7`)"),
            ("hostname = \"kitchen\"\nclaim_code = \"ABCD-EF20\"\n", "key `claim_code`: 'ABCD-EF20' is not a claim code: use XXXX-XXXX"),
            ("hostname = \"kitchen\"\nclaim_code = \"abcd-ef23\"\n", "key `claim_code`"),
            ("hostname = \"kitchen\"\nssh_authorized_keys = [\"ssh-ed25519 notbase64\"]\n", "key `ssh_authorized_keys`, entry 1: not an OpenSSH public key"),
            ("hostname = \"kitchen\"\nssh_authorized_keys = []\n", "key `ssh_authorized_keys`: the list is empty"),
            ("hostname = \"kitchen\"\nssh_authorized_keys = \"ssh-ed25519 AAAA\"\n", "line 2"),
            ("hostname = \"kitchen\"\n[wifi]\nssid = \"Home\"\npassphrase = \"short\"\n", "section [wifi]: the Wi-Fi passphrase is 5 characters long"),
            ("hostname = \"kitchen\"\n[wifi]\nname = \"Home\"\n", "unknown field `name`"),
        ];
        for (text, expected) in cases {
            let b = first_boot();
            b.write_seed(text);
            let err = format!("{:#}", apply(&b.config, &b.esp).unwrap_err());
            assert!(err.contains(expected), "{text:?}: {err}");
            assert!(err.contains("seed.toml") && err.contains("rename it back"), "{err}");
            assert!(!seed_path(&b.esp).exists());
            assert!(b.esp.join("hellas/seed.toml.rejected").exists());
            assert!(!b.owner().path().exists(), "{text:?}: nothing is applied");
            assert_eq!(refusal(&b.config.web.runtime_dir).as_deref(), Some(err.as_str()), "the screen and the setup page say why");
            assert_eq!(ClaimFiles::new(&b.config.web.runtime_dir).current().unwrap(), None);
            assert_eq!(apply(&b.config, &b.esp).unwrap(), Outcome::Absent, "a rejected seed is not retried");
        }
    }

    #[test]
    fn written_files_go_to_the_state_directorys_owner() {
        // Only root can hand files to another user.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let b = first_boot();
        fs::create_dir_all(&b.config.state_dir).unwrap();
        std::os::unix::fs::chown(&b.config.state_dir, Some(4242), Some(4243)).unwrap();
        std::os::unix::fs::chown(&b.config.web.runtime_dir, Some(4242), Some(4243)).unwrap();
        b.write_seed(&good_seed());
        apply(&b.config, &b.esp).unwrap();
        let claim = ClaimFiles::new(&b.config.web.runtime_dir);
        for path in [b.owner().path().to_path_buf(), b.owner().path().with_extension("lock"), claim.code_path(), claim.issue_path()] {
            let meta = fs::metadata(&path).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4242, 4243), "{}", path.display());
        }
    }
}
