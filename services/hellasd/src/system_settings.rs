//! The owner's settings applied to the system, as root (`hellasd apply-settings`, run by
//! hellas-settings.service at boot and by hellas-settings.path whenever `owner.json` changes):
//! the box name becomes this boot's host name, which avahi announces as `<name>.local`, and sshd
//! runs with the owner's public keys while there are any (never with passwords), and a static
//! wired address becomes networkd's unit (DHCP otherwise).
//!
//! Time zones are kept in the settings but not applied yet: the image ships no tz database and
//! `/etc/localtime` is on the read-only root.

use anyhow::{Context, Result};

use crate::owner::Settings;

/// Applies the owner's settings; needs root. Settings that fail the checks the web setup makes
/// are refused whole, with the reason, before anything is touched: the daemon writes them, and
/// an exploited engine runs as the daemon's user.
pub fn apply(settings: &Settings) -> Result<()> {
    if let Err(why) = settings.checked() {
        anyhow::bail!("refusing the owner's settings, which the web setup would not have saved: {why}; nothing applied");
    }
    apply_ssh_keys(&settings.ssh_keys)?;
    apply_static_wired(settings.static_wired.as_ref())?;
    apply_box_name(&settings.box_name)
}

/// At boot this runs before networkd, which then reads the unit; later, networkd reloads it.
fn apply_static_wired(wired: Option<&hellas_contract::network::StaticWired>) -> Result<()> {
    let unit = std::path::Path::new(hellas_contract::network::STATIC_WIRED_UNIT);
    if crate::network::write_static_wired(unit, wired)? {
        println!("wired network: {}", wired.map_or("DHCP".to_string(), |w| format!("static {}", w.address)));
        if let Err(e) = std::process::Command::new("networkctl").args(["reload"]).status().map_err(anyhow::Error::from).and_then(|s| {
            anyhow::ensure!(s.success(), "networkctl reload failed ({s})");
            Ok(())
        }) {
            eprintln!("warning: {e:#}; the wired network follows at the next boot");
        }
    }
    Ok(())
}

/// `/var/lib/hellas-ssh`, as `rootfs-overlay/etc/ssh/sshd_config.d/hellas.conf` names it.
const SSH_DIR: &str = "/var/lib/hellas-ssh";

fn apply_ssh_keys(keys: &[String]) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::path::Path::new(SSH_DIR);
    let authorized = dir.join("root.keys");
    if keys.is_empty() {
        systemctl(&["stop", "ssh.service"])?;
        match std::fs::remove_file(&authorized) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("removing {}", authorized.display())),
            _ => return Ok(()),
        }
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("creating {}", dir.display()))?;
    let host_key = dir.join("ssh_host_ed25519_key");
    if !host_key.exists() {
        // Made on the box, once: a key in the image would be every box's key.
        let made = std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "hellas host key", "-f"]).arg(&host_key).status();
        anyhow::ensure!(made.is_ok_and(|s| s.success()), "ssh-keygen could not make {}", host_key.display());
    }
    crate::state_file::write_atomically_with_mode(&authorized, (keys.join("\n") + "\n").as_bytes(), 0o600)?;
    systemctl(&["start", "ssh.service"])
}

fn systemctl(args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("systemctl").args(args).status().context("running systemctl")?;
    anyhow::ensure!(status.success(), "`systemctl {}` failed ({status})", args.join(" "));
    Ok(())
}

fn apply_box_name(name: &str) -> Result<()> {
    const HOSTNAME: &str = "/proc/sys/kernel/hostname";
    let current = std::fs::read_to_string(HOSTNAME).with_context(|| format!("reading {HOSTNAME}"))?;
    if current.trim() == name {
        return Ok(());
    }
    // The root file system is read-only: the name is set for this boot, at every boot.
    std::fs::write(HOSTNAME, name).with_context(|| format!("setting the host name to {name} (as root?)"))?;
    println!("host name: {name} (was {})", current.trim());
    // avahi reads the host name when it starts; at boot this runs before it.
    if let Err(e) = systemctl(&["try-restart", "avahi-daemon.service"]) {
        eprintln!("warning: {e:#}; {name}.local follows at the next boot");
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop";

    /// Values an exploited daemon could write into owner.json; each is refused before root
    /// touches sshd, the host name or anything else.
    #[test]
    fn hostile_settings_are_refused_before_anything_is_applied() {
        let good = Settings { ssh_keys: vec![KEY.into()], update_channel: "https://updates.example/hellas/".into(), ..Settings::default() };
        assert_eq!(good.checked(), Ok(()));
        let hostile = [
            Settings { ssh_keys: vec![format!("{KEY}\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAttackerKeyAttackerKeyAttackerKeyAttacker x")], ..good.clone() },
            Settings { ssh_keys: vec![format!("command=\"/bin/sh\" {KEY}")], ..good.clone() },
            Settings { ssh_keys: vec!["ssh-dss AAAAB3NzaC1kc3MAAACBAP x".into()], ..good.clone() },
            Settings { box_name: "box\nroot::0:0::/:/bin/sh".into(), ..good.clone() },
            Settings { box_name: "../../etc".into(), ..good.clone() },
            Settings { update_channel: "https://x.example/\n[Source]\nPath=/".into(), ..good.clone() },
            Settings { update_channel: "https://user:pass@x.example/".into(), ..good.clone() },
            Settings { update_channel: "file:///etc/".into(), ..good.clone() },
            Settings { update_channel: "https://x.example/?MatchPattern=*".into(), ..good.clone() },
            Settings { timezone: "../../etc/shadow".into(), ..good.clone() },
            Settings {
                static_wired: Some(hellas_contract::network::StaticWired { address: "10.0.0.2/24\n[Network]\nDHCP=yes".into(), gateway: None, dns: vec![] }),
                ..good.clone()
            },
        ];
        for settings in hostile {
            let refused = apply(&settings).unwrap_err();
            assert!(format!("{refused:#}").contains("nothing applied"), "{settings:?}: {refused:#}");
        }
    }
}
