//! iwd, driven through `iwctl` (its own client, over D-Bus): the radio's mode, the setup
//! hotspot, and joining a network. Every call is bounded in time and its failure names the
//! command and what iwctl said.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long one iwctl call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// The Wi-Fi interfaces, from sysfs (those with a `phy80211`), sorted.
pub fn wifi_interfaces(sys_class_net: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(sys_class_net)
        .map(|entries| entries.filter_map(|e| e.ok()).filter(|e| e.path().join("phy80211").exists()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    found.sort();
    found
}

/// The interface's MAC address, from sysfs.
pub fn mac_address(sys_class_net: &Path, interface: &str) -> Option<String> {
    std::fs::read_to_string(sys_class_net.join(interface).join("address")).ok().map(|a| a.trim().to_string())
}

/// Runs `iwctl <args>`; returns what it printed.
pub fn iwctl(args: &[&str]) -> Result<String> {
    let shown = format!("iwctl {}", args.join(" "));
    let mut child = Command::new("iwctl")
        .arg("--dont-ask")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let deadline = Instant::now() + CALL_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for `{shown}`"))? {
            let output = child.wait_with_output().with_context(|| format!("reading `{shown}`"))?;
            let text = strip_ansi(&(String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)));
            if !status.success() {
                bail!("`{shown}` failed ({status}): {}", text.trim());
            }
            return Ok(text);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("`{shown}` did not finish in {} s (is iwd running?)", CALL_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// iwctl colours its output even into a pipe.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The hotspot's profile in iwd's store: `ap/<ssid>.ap`, root's alone.
pub fn ap_profile_path(iwd_dir: &Path, ssid: &str) -> PathBuf {
    iwd_dir.join("ap").join(format!("{ssid}.ap"))
}

/// Opens the hotspot `ssid` (its profile saved first) on `interface`.
pub fn start_ap(iwd_dir: &Path, interface: &str, ssid: &str, passphrase: &str) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let path = ap_profile_path(iwd_dir, ssid);
    let dir = path.parent().expect("ap/");
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))?;
    let profile = format!("# The setup hotspot, written by Hellas.\n[Security]\nPassphrase={passphrase}\n");
    crate::state_file::write_atomically_with_mode(&path, profile.as_bytes(), 0o600)?;
    iwctl(&["device", interface, "set-property", "Mode", "ap"])?;
    iwctl(&["ap", interface, "start-profile", ssid])?;
    reconfigure(interface);
    Ok(())
}

/// networkd matches the radio's units by its mode (80-hellas-hotspot.network for an access
/// point, 80-hellas-wifi.network for a station): have it match again now the mode changed.
fn reconfigure(interface: &str) {
    let done = Command::new("networkctl").args(["reconfigure", interface]).stdin(Stdio::null()).output();
    if let Err(e) = done.as_ref().map_err(|e| e.to_string()).and_then(|o| if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).trim().to_string()) }) {
        tracing::warn!("`networkctl reconfigure {interface}` failed: {e}");
    }
}

/// Closes the hotspot and gives the radio back to station mode, where iwd joins known networks.
pub fn stop_ap(interface: &str) -> Result<()> {
    // Stopping an AP that is not running fails; the mode change is what matters.
    let _ = iwctl(&["ap", interface, "stop"]);
    iwctl(&["device", interface, "set-property", "Mode", "station"])?;
    reconfigure(interface);
    Ok(())
}

/// Whether a device is associated with the access point on `interface` (`iw`'s station list).
pub fn ap_has_clients(interface: &str) -> bool {
    Command::new("iw")
        .args(["dev", interface, "station", "dump"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("Station "))
        // Unknown: keep the hotspot for whoever may be on it.
        .unwrap_or(true)
}

/// Asks iwd to join `ssid` (a network it knows from its store), scanning first so that a
/// network that just came into range is found.
pub fn connect(interface: &str, ssid: &str) -> Result<()> {
    let _ = iwctl(&["station", interface, "scan"]);
    std::thread::sleep(Duration::from_secs(3));
    iwctl(&["station", interface, "connect", ssid]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_taken_out_of_iwctl_output() {
        assert_eq!(strip_ansi("\u{1b}[1;90mOperation failed\u{1b}[0m\n"), "Operation failed\n");
    }

    #[test]
    fn wifi_interfaces_are_those_with_a_radio() {
        let dir = tempfile::tempdir().unwrap();
        for (name, radio) in [("enp1s0", false), ("wlan0", true), ("wlp2s0", true)] {
            std::fs::create_dir_all(dir.path().join(name)).unwrap();
            if radio {
                std::fs::create_dir_all(dir.path().join(name).join("phy80211")).unwrap();
            }
        }
        std::fs::write(dir.path().join("wlan0/address"), "02:00:00:00:00:00\n").unwrap();
        assert_eq!(wifi_interfaces(dir.path()), ["wlan0", "wlp2s0"]);
        assert_eq!(mac_address(dir.path(), "wlan0").as_deref(), Some("02:00:00:00:00:00"));
    }
}
