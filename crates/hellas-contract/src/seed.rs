//! `/hellas/seed.toml` on the stick's ESP: first-boot settings that `cargo xtask flash` writes
//! (or an owner writes by hand, the ESP being FAT) and the box applies once, then removes.
//! Every key may be left out; unknown keys are refused, so a typo is an error, not a no-op.

use serde::{Deserialize, Serialize};

use crate::network::{StaticWired, Wifi};
use crate::{box_name, claim_code, ssh_keys};

/// Where the seed lies, relative to the ESP's root.
pub const PATH: &str = "hellas/seed.toml";
/// Larger than any honest seed by far: a bigger file is a mistake, not settings.
pub const MAX_LEN: u64 = 64 << 10;
/// The first line of a seed the builder writes.
const HEADER: &str = "# Applied once on the first boot, then removed (docs/operator-guide.md, \"Seed file\").\n";

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    /// The box's name, and so its host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The owner's SSH public keys, each the one line of a `.pub` file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_authorized_keys: Option<Vec<String>>,
    /// The claim code of every boot until the box is claimed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_code: Option<String>,
    /// A Wi-Fi network to join (`[wifi]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wifi: Option<Wifi>,
    /// A static wired address (`[wired]`), for a network without DHCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wired: Option<StaticWired>,
}

impl Seed {
    /// Reads and checks a seed file; the error names the line or key and what to fix.
    pub fn parse(bytes: &[u8]) -> Result<Seed, String> {
        if bytes.len() as u64 > MAX_LEN {
            return Err(format!("the file is larger than {} KiB, so it is not a seed file", MAX_LEN >> 10));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_string())?;
        let seed: Seed = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| text[..span.start].matches('\n').count() + 1);
            match line {
                Some(n) => format!("line {n} (`{}`): {}", text.lines().nth(n - 1).unwrap_or_default().trim(), e.message().trim()),
                None => e.message().trim().to_string(),
            }
        })?;
        seed.check()?;
        Ok(seed)
    }

    /// Checks every value by the rules the box applies to the same settings made in its web setup.
    pub fn check(&self) -> Result<(), String> {
        if let Some(name) = &self.hostname {
            box_name::check(name).map_err(|e| format!("key `hostname`: {e}"))?;
        }
        if let Some(keys) = &self.ssh_authorized_keys {
            if keys.is_empty() {
                return Err("key `ssh_authorized_keys`: the list is empty: give at least one public key, or leave the key out".into());
            }
            for (n, key) in keys.iter().enumerate() {
                let one = key.lines().count() == 1 && ssh_keys::parse(key).is_ok_and(|k| k.len() == 1) && key.trim() == key;
                if !one {
                    return Err(format!(
                        "key `ssh_authorized_keys`, entry {}: not an OpenSSH public key; give each key as one string, the one line of e.g. ~/.ssh/id_ed25519.pub",
                        n + 1
                    ));
                }
            }
        }
        if let Some(code) = &self.claim_code {
            claim_code::check(code).map_err(|e| format!("key `claim_code`: {e}"))?;
        }
        if let Some(wifi) = &self.wifi {
            wifi.check().map_err(|e| format!("section [wifi]: {e}"))?;
        }
        if let Some(wired) = &self.wired {
            wired.check().map_err(|e| format!("section [wired]: {e}"))?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Seed::default()
    }

    /// The file as the builder writes it.
    pub fn render(&self) -> String {
        HEADER.to_string() + &toml::to_string(self).expect("a seed is plain strings")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop";

    #[test]
    fn what_the_builder_writes_the_box_reads_back() {
        let seed = Seed {
            hostname: Some("box-2".into()),
            ssh_authorized_keys: Some(vec![KEY.into(), KEY.replace("me@laptop", "other")]),
            claim_code: Some("ZZZZ-2345".into()),
            wifi: Some(Wifi { ssid: "Home Net".into(), passphrase: Some(" spaces and \"quotes\" ".into()) }),
            wired: Some(StaticWired { address: "192.168.1.50/24".into(), gateway: Some("192.168.1.1".into()), dns: vec![] }),
        };
        assert_eq!(Seed::parse(seed.render().as_bytes()).unwrap(), seed);
        assert!(Seed::parse(b"").unwrap().is_empty(), "an empty seed is allowed and changes nothing");
        assert!(Seed::parse(&vec![b'#'; MAX_LEN as usize + 1]).unwrap_err().contains("larger than"));
        assert!(Seed::parse(b"hostname = \"\xff\"").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("wifi_password = \"x\"\n", "line 1 (`wifi_password = \"x\"`): unknown field `wifi_password`"),
            ("hostname = \"Kitchen\"\n", "key `hostname`: 'Kitchen' cannot be a box name"),
            ("hostname = 7\n", "line 1 (`hostname = 7`)"),
            ("claim_code = \"ABCD-EF20\"\n", "key `claim_code`: 'ABCD-EF20' is not a claim code"),
            ("ssh_authorized_keys = [\"ssh-ed25519 notbase64\"]\n", "key `ssh_authorized_keys`, entry 1"),
            ("ssh_authorized_keys = []\n", "the list is empty"),
            ("[wifi]\nssid = \"Home\"\npassphrase = \"short\"\n", "section [wifi]: the Wi-Fi passphrase is 5 characters long"),
            ("[wifi]\npassphrase = \"long enough\"\n", "missing field `ssid`"),
            ("[wifi]\nssid = \"Home\"\npassword = \"long enough\"\n", "unknown field `password`"),
            ("[wired]\naddress = \"10.0.0.5\"\n", "section [wired]: address \"10.0.0.5\" has no prefix length"),
        ];
        for (text, expected) in cases {
            let err = Seed::parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }
}
