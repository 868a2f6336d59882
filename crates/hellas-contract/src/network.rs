//! The box's network settings, given alike by the stick's seed (`cargo xtask flash`) and by the
//! owner's settings page: a Wi-Fi network to join, and a static wired address for a network
//! without DHCP. The rules are the standards' (an 802.11 SSID, a WPA passphrase), so whatever
//! one side accepts the box can use; the files they become are iwd's and systemd-networkd's.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Where iwd keeps the networks it knows (root's only; on the data partition).
pub const IWD_DIR: &str = "/var/lib/iwd";
/// The networkd unit a static wired address becomes, written at every boot (the root is
/// read-only) before networkd starts; it wins over the image's DHCP unit by its name.
pub const STATIC_WIRED_UNIT: &str = "/run/systemd/network/50-hellas-static.network";

/// A Wi-Fi network to join. `Debug` never shows the passphrase.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wifi {
    /// The network's name, as its router announces it.
    pub ssid: String,
    /// The WPA2/WPA3 passphrase (8 to 63 printable ASCII characters, or the 64 hex digits of
    /// the key itself); left out for an open network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<String>,
}

impl fmt::Debug for Wifi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wifi").field("ssid", &self.ssid).field("passphrase", &self.passphrase.as_ref().map(|_| "(hidden)")).finish()
    }
}

impl Wifi {
    pub fn check(&self) -> Result<(), String> {
        check_ssid(&self.ssid)?;
        if let Some(passphrase) = &self.passphrase {
            check_passphrase(passphrase)?;
        }
        Ok(())
    }

    /// iwd's file for this network, named as iwd looks it up: the SSID itself when it is only
    /// letters, digits, spaces, `-` and `_`, else `=` and its bytes in hex; `.psk` for a
    /// protected network, `.open` for an open one.
    pub fn iwd_file_name(&self) -> String {
        let plain = self.ssid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b' ' || b == b'-' || b == b'_');
        let stem = if plain { self.ssid.clone() } else { format!("={}", hex(self.ssid.as_bytes())) };
        format!("{stem}.{}", if self.passphrase.is_some() { "psk" } else { "open" })
    }

    /// The file's contents: the passphrase with `\` and spaces escaped as iwd's settings
    /// format reads them (it trims unescaped spaces at the ends), or the raw key given as hex.
    pub fn iwd_file(&self) -> String {
        let mut text = String::from("# Written by Hellas from the owner's Wi-Fi settings.\n[Settings]\nAutoConnect=true\n");
        if let Some(passphrase) = &self.passphrase {
            if is_raw_key(passphrase) {
                text += &format!("\n[Security]\nPreSharedKey={}\n", passphrase.to_ascii_lowercase());
            } else {
                text += &format!("\n[Security]\nPassphrase={}\n", passphrase.replace('\\', "\\\\").replace(' ', "\\s"));
            }
        }
        text
    }
}

/// An SSID is 1 to 32 bytes; here also text without control characters, as it must be typed.
pub fn check_ssid(ssid: &str) -> Result<(), String> {
    if ssid.is_empty() || ssid.len() > 32 {
        return Err(format!("the network name {ssid:?} is {} bytes long; a Wi-Fi network name is 1 to 32 bytes", ssid.len()));
    }
    if ssid.chars().any(char::is_control) {
        return Err(format!("the network name {ssid:?} holds a control character; type it as the router shows it"));
    }
    Ok(())
}

/// A WPA passphrase is 8 to 63 printable ASCII characters; 64 hex digits are the key itself.
/// The message never repeats the passphrase.
pub fn check_passphrase(passphrase: &str) -> Result<(), String> {
    if is_raw_key(passphrase) {
        return Ok(());
    }
    if !passphrase.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err("the Wi-Fi passphrase holds a character outside printable ASCII, which WPA passphrases cannot".into());
    }
    if !(8..=63).contains(&passphrase.len()) {
        return Err(format!("the Wi-Fi passphrase is {} characters long; WPA passphrases are 8 to 63", passphrase.len()));
    }
    Ok(())
}

fn is_raw_key(passphrase: &str) -> bool {
    passphrase.len() == 64 && passphrase.bytes().all(|b| b.is_ascii_hexdigit())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A static address for the wired network, for a network without a DHCP server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticWired {
    /// The box's address with its prefix length: `192.168.1.50/24`, `2001:db8::50/64`.
    pub address: String,
    /// The router, when the network has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Name servers; none means the box resolves only with mDNS on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
}

impl StaticWired {
    pub fn check(&self) -> Result<(), String> {
        let (ip, prefix) = self
            .address
            .split_once('/')
            .ok_or_else(|| format!("address {:?} has no prefix length: write it as e.g. 192.168.1.50/24", self.address))?;
        let ip: IpAddr = ip.parse().map_err(|_| format!("address {:?}: {ip:?} is not an IP address", self.address))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if (1..=max).contains(&p) => {}
            _ => return Err(format!("address {:?}: the prefix length must be 1 to {max}", self.address)),
        }
        if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
            return Err(format!("address {:?} cannot be a host's address", self.address));
        }
        for (what, value) in self.gateway.iter().map(|g| ("gateway", g)).chain(self.dns.iter().map(|d| ("dns", d))) {
            value.parse::<IpAddr>().map_err(|_| format!("{what} {value:?} is not an IP address"))?;
        }
        Ok(())
    }

    /// The networkd unit: every wired interface takes this address (a box has one cable in
    /// use) and keeps its link-local addresses, so mDNS and direct links still work.
    pub fn networkd_unit(&self) -> String {
        let mut text = format!(
            "# Written at boot by Hellas from the owner's static wired address.\n[Match]\nType=ether\nKind=!*\n\n[Network]\nAddress={}\nLinkLocalAddressing=yes\nIPv6AcceptRA=no\n",
            self.address
        );
        if let Some(gateway) = &self.gateway {
            text += &format!("Gateway={gateway}\n");
        }
        for dns in &self.dns {
            text += &format!("DNS={dns}\n");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wifi(ssid: &str, passphrase: Option<&str>) -> Wifi {
        Wifi { ssid: ssid.into(), passphrase: passphrase.map(str::to_string) }
    }

    #[test]
    fn iwd_names_the_file_by_the_ssid_or_its_hex() {
        assert_eq!(wifi("Home Net_5-G", Some("correct horse")).iwd_file_name(), "Home Net_5-G.psk");
        assert_eq!(wifi("Café", None).iwd_file_name(), "=436166c3a9.open");
        assert_eq!(wifi("a.b", Some("12345678")).iwd_file_name(), "=612e62.psk");
    }

    #[test]
    fn the_passphrase_is_escaped_and_never_shown() {
        let w = wifi("Home", Some(" a\\b c "));
        assert!(w.iwd_file().contains("Passphrase=\\sa\\\\b\\sc\\s\n"), "{}", w.iwd_file());
        assert!(!format!("{w:?}").contains("a\\b"), "{w:?}");
        let key = "0123456789ABCDEF".repeat(4);
        assert!(wifi("Home", Some(&key)).iwd_file().contains(&format!("PreSharedKey={}\n", key.to_lowercase())));
        assert!(!wifi("Home", None).iwd_file().contains("[Security]"));
    }

    #[test]
    fn bad_settings_say_what_is_wrong_without_the_passphrase() {
        assert!(wifi("", None).check().unwrap_err().contains("1 to 32 bytes"));
        assert!(wifi(&"x".repeat(33), None).check().unwrap_err().contains("1 to 32 bytes"));
        assert!(wifi("a\nb", None).check().unwrap_err().contains("control character"));
        let short = wifi("Home", Some("seven77")).check().unwrap_err();
        assert!(short.contains("7 characters long") && !short.contains("seven77"), "{short}");
        assert!(wifi("Home", Some("pässwörd1")).check().unwrap_err().contains("printable ASCII"));
        assert!(wifi("Home", Some("a long and private phrase")).check().is_ok());
    }

    #[test]
    fn a_static_address_is_checked_and_becomes_a_networkd_unit() {
        let wired = StaticWired { address: "192.168.1.50/24".into(), gateway: Some("192.168.1.1".into()), dns: vec!["192.168.1.1".into(), "2001:db8::1".into()] };
        wired.check().unwrap();
        let unit = wired.networkd_unit();
        assert!(unit.contains("Address=192.168.1.50/24\n") && unit.contains("Gateway=192.168.1.1\n") && unit.contains("DNS=2001:db8::1\n"), "{unit}");
        for (address, expected) in [
            ("192.168.1.50", "no prefix length"),
            ("192.168.1.500/24", "not an IP address"),
            ("192.168.1.50/33", "1 to 32"),
            ("2001:db8::50/129", "1 to 128"),
            ("0.0.0.0/8", "cannot be a host's address"),
        ] {
            let err = StaticWired { address: address.into(), gateway: None, dns: vec![] }.check().unwrap_err();
            assert!(err.contains(expected), "{address}: {err}");
        }
        let err = StaticWired { address: "10.0.0.2/8".into(), gateway: Some("router".into()), dns: vec![] }.check().unwrap_err();
        assert!(err.contains("gateway \"router\""), "{err}");
    }
}
