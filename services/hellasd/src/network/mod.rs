//! The box's network, as root: a Wi-Fi network becomes a file in iwd's store (which iwd
//! watches, and then joins the network), a static wired address becomes a networkd unit in
//! /run, written at every boot because the root is read-only, and [`watch`] opens the setup
//! hotspot while the box has no network and joins the networks the owner gives. The rules and
//! the files' formats are `hellas_contract::network`'s; [`NetworkStatus`] is what the watcher
//! tells hellasd (the box's screen, the settings page).

pub mod captive_dns;
pub mod iwd;
pub mod watch;

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hellas_contract::network::{StaticWired, Wifi};
use serde::{Deserialize, Serialize};

use crate::state_file::{write_atomically, write_atomically_with_mode};

/// What the network watcher last saw and did, in the runtime directory for hellasd to show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// The setup hotspot, while it is open.
    pub hotspot: Option<Hotspot>,
    /// The last Wi-Fi network the owner gave this boot, and how joining it went.
    pub wifi: Option<WifiJoin>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hotspot {
    pub ssid: String,
    /// Shown on the box's screen only: whoever reads it stands at the box.
    pub passphrase: String,
    /// The setup page on the hotspot.
    pub url: String,
}

impl Hotspot {
    /// The text of a QR code that joins a phone to the hotspot (the Wi-Fi Alliance's format).
    pub fn join_code(&self) -> String {
        let escape = |s: &str| s.chars().flat_map(|c| if "\\;,:\"".contains(c) { vec!['\\', c] } else { vec![c] }).collect::<String>();
        format!("WIFI:T:WPA;S:{};P:{};;", escape(&self.ssid), escape(&self.passphrase))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WifiJoin {
    pub ssid: String,
    pub state: JoinState,
    /// Why joining failed, in words that say what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JoinState {
    Joining,
    Joined,
    Failed,
}

/// Where the watcher writes [`NetworkStatus`].
pub fn status_path(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("network.json")
}

/// Where hellasd leaves a Wi-Fi network for the watcher to join (removed once taken).
pub fn wifi_request_path(state_dir: &Path) -> PathBuf {
    state_dir.join("settings/wifi.request")
}

/// The watcher's last status; none when it has said nothing this boot.
pub fn read_status(runtime_dir: &Path) -> NetworkStatus {
    fs::read(status_path(runtime_dir)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// hellasd's side: asks the watcher to join `wifi`. The file is hellasd's alone (0600).
pub fn request_wifi(state_dir: &Path, wifi: &Wifi) -> Result<()> {
    let text = toml::to_string(wifi).context("writing the Wi-Fi request")?;
    write_atomically_with_mode(&wifi_request_path(state_dir), text.as_bytes(), 0o600)
}

/// The addresses of the box's interfaces, loopback aside: IPv4 first, then IPv6 that people
/// can use (link-local ones need the interface named).
pub fn addresses() -> Vec<(String, IpAddr)> {
    let mut found: Vec<(String, IpAddr)> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| (i.name.clone(), i.ip()))
        .filter(|(_, ip)| match ip {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    found.sort_by_key(|(name, ip)| (ip.is_ipv6(), name.clone()));
    found
}

/// Saves `wifi` in iwd's store at `iwd_dir`, readable by root only, replacing what iwd knew of
/// that network; iwd notices the file and joins the network when it is in range.
pub fn save_wifi(iwd_dir: &Path, wifi: &Wifi) -> Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(iwd_dir).with_context(|| format!("creating {}", iwd_dir.display()))?;
    fs::set_permissions(iwd_dir, fs::Permissions::from_mode(0o700)).with_context(|| format!("restricting {}", iwd_dir.display()))?;
    let path = iwd_dir.join(wifi.iwd_file_name());
    write_atomically_with_mode(&path, wifi.iwd_file().as_bytes(), 0o600)?;
    tracing::info!("Wi-Fi network {:?} saved for iwd ({})", wifi.ssid, path.display());
    Ok(())
}

/// Writes (or, with none, removes) the static wired unit at `unit`; true when it changed.
pub fn write_static_wired(unit: &Path, wired: Option<&StaticWired>) -> Result<bool> {
    let current = fs::read_to_string(unit).ok();
    let wanted = wired.map(StaticWired::networkd_unit);
    if current == wanted {
        return Ok(false);
    }
    match &wanted {
        Some(text) => {
            let dir = unit.parent().context("the unit path has no directory")?;
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            write_atomically(unit, text.as_bytes())?;
        }
        None => fs::remove_file(unit).with_context(|| format!("removing {}", unit.display()))?,
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn a_wifi_network_is_saved_for_root_alone() {
        let dir = tempfile::tempdir().unwrap();
        let iwd = dir.path().join("iwd");
        let wifi = Wifi { ssid: "Home".into(), passphrase: Some("a long and private phrase".into()) };
        save_wifi(&iwd, &wifi).unwrap();
        let file = iwd.join("Home.psk");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&iwd).unwrap().mode() & 0o777, 0o700);
        assert!(fs::read_to_string(&file).unwrap().contains("Passphrase=a\\slong\\sand\\sprivate\\sphrase\n"));
        assert_eq!(fs::read_dir(&iwd).unwrap().count(), 1, "nothing else is left beside it");
    }

    #[test]
    fn the_static_wired_unit_is_written_only_when_it_changes_and_removed_with_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path().join("network/50-hellas-static.network");
        let wired = StaticWired { address: "192.168.7.2/24".into(), gateway: None, dns: vec![] };
        assert!(write_static_wired(&unit, Some(&wired)).unwrap());
        assert!(fs::read_to_string(&unit).unwrap().contains("Address=192.168.7.2/24"));
        assert!(!write_static_wired(&unit, Some(&wired)).unwrap());
        assert!(write_static_wired(&unit, None).unwrap());
        assert!(!unit.exists());
        assert!(!write_static_wired(&unit, None).unwrap());
    }
}
