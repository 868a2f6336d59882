//! `hellasd network-watch` (hellas-network.service, as root): keeps a box with Wi-Fi reachable.
//!
//! - While the box has no network (no usable address on any interface but the hotspot's and the
//!   ignored ones) for `network.hotspot_after_secs`, it opens the setup hotspot on the first
//!   Wi-Fi radio: "Hellas-XXXX" (the radio's MAC), WPA2 with a passphrase made this boot and
//!   shown on the box's screen, the setup page at http://10.42.0.1/ (networkd gives the address
//!   and DHCP: 80-hellas-hotspot.network), where every name is the box (`captive_dns`) so that
//!   phones find the page as a captive portal.
//! - Once the box has a network, the hotspot closes. While no one is on the hotspot, the known
//!   networks are tried again every `network.retry_known_secs`.
//! - A Wi-Fi network the owner gives (hellasd leaves it in `settings/wifi.request`) is saved for
//!   iwd and joined; the hotspot closes for that. When joining fails, the network is forgotten
//!   again, the reason goes to the status, and the hotspot comes back at once.
//!
//! What it sees and does goes to `network.json` in the runtime directory ([`NetworkStatus`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hellas_contract::network::{Wifi, IWD_DIR};
use rand::Rng;

use super::{iwd, save_wifi, Hotspot, JoinState, NetworkStatus, WifiJoin};
use crate::config::Config;
use crate::state_file::{give_to_directory_owner, write_atomically_with_mode};

/// The hotspot's own address and network (networkd's 80-hellas-hotspot.network gives them).
pub const HOTSPOT_ADDRESS: &str = "10.42.0.1";
pub const HOTSPOT_NETWORK: &str = "10.42.0.0/24";
const TICK: Duration = Duration::from_secs(2);
const SYS_CLASS_NET: &str = "/sys/class/net";

struct Watch {
    iwd_dir: PathBuf,
    status_path: PathBuf,
    request_path: PathBuf,
    hotspot_after: Duration,
    join_timeout: Duration,
    retry_known: Duration,
    ignore: Vec<String>,
    /// Since when the box has had no network; none while it has one.
    offline_since: Option<Instant>,
    /// The hotspot's passphrase, made once a boot.
    passphrase: String,
    /// The radio the hotspot is open on, and since when.
    hotspot_on: Option<String>,
    hotspot_since: Instant,
    /// Keeps the hotspot's name server answering while true.
    dns_running: Arc<AtomicBool>,
    status: NetworkStatus,
}

pub fn run(config: &Config) -> Result<()> {
    let mut watch = Watch {
        iwd_dir: PathBuf::from(IWD_DIR),
        status_path: super::status_path(&config.web.runtime_dir),
        request_path: super::wifi_request_path(&config.state_dir),
        hotspot_after: Duration::from_secs(config.network.hotspot_after_secs),
        join_timeout: Duration::from_secs(config.network.join_timeout_secs),
        retry_known: Duration::from_secs(config.network.retry_known_secs),
        ignore: config.network.ignore_interfaces.clone(),
        offline_since: Some(Instant::now()),
        passphrase: hotspot_passphrase(),
        hotspot_on: None,
        hotspot_since: Instant::now(),
        dns_running: Arc::new(AtomicBool::new(false)),
        status: NetworkStatus::default(),
    };
    watch.publish()?;
    tracing::info!("watching the network: the setup hotspot opens after {} s without one", watch.hotspot_after.as_secs());
    loop {
        if let Err(e) = watch.tick() {
            tracing::warn!("network: {e:#}");
        }
        std::thread::sleep(TICK);
    }
}

impl Watch {
    fn tick(&mut self) -> Result<()> {
        let radios = iwd::wifi_interfaces(Path::new(SYS_CLASS_NET));
        if let Some(wifi) = self.take_request()? {
            self.join(&radios, wifi)?;
        }
        let online = is_online(&super::addresses(), &self.ignored());
        match (online, self.offline_since) {
            (true, _) => {
                self.offline_since = None;
                if let Some(radio) = self.hotspot_on.clone() {
                    tracing::info!("the box has a network: closing the setup hotspot");
                    self.close_hotspot(&radio)?;
                }
            }
            (false, None) => self.offline_since = Some(Instant::now()),
            (false, Some(since)) => match self.hotspot_on.clone() {
                None if since.elapsed() >= self.hotspot_after => {
                    if let Some(radio) = radios.first() {
                        self.open_hotspot(radio)?;
                    }
                }
                Some(radio) if self.hotspot_since.elapsed() >= self.retry_known && self.knows_networks() && !iwd::ap_has_clients(&radio) => {
                    // A router that came up after the box: give iwd its known networks for a
                    // while; the hotspot opens again after that if none answered.
                    tracing::info!("no one is on the setup hotspot: trying the known Wi-Fi networks again");
                    self.close_hotspot(&radio)?;
                    self.offline_since = Instant::now().checked_sub(self.hotspot_after.saturating_sub(self.join_timeout));
                }
                _ => {}
            },
        }
        self.publish()
    }

    /// The interfaces whose addresses do not count: the configured ones and the hotspot's.
    fn ignored(&self) -> Vec<String> {
        self.ignore.iter().cloned().chain(self.hotspot_on.clone()).collect()
    }

    fn open_hotspot(&mut self, radio: &str) -> Result<()> {
        let mac = iwd::mac_address(Path::new(SYS_CLASS_NET), radio).unwrap_or_default();
        let hotspot = Hotspot { ssid: hotspot_ssid(&mac), passphrase: self.passphrase.clone(), url: format!("http://{HOTSPOT_ADDRESS}/") };
        iwd::start_ap(&self.iwd_dir, radio, &hotspot.ssid, &hotspot.passphrase).with_context(|| format!("opening the setup hotspot on {radio}"))?;
        tracing::info!("no network for {} s: the setup hotspot {} is open on {radio} ({})", self.hotspot_after.as_secs(), hotspot.ssid, hotspot.url);
        self.hotspot_on = Some(radio.to_string());
        self.hotspot_since = Instant::now();
        self.status.hotspot = Some(hotspot);
        self.dns_running = Arc::new(AtomicBool::new(true));
        super::captive_dns::start(HOTSPOT_ADDRESS.parse().expect("an address"), self.dns_running.clone());
        Ok(())
    }

    fn close_hotspot(&mut self, radio: &str) -> Result<()> {
        self.dns_running.store(false, Ordering::Relaxed);
        self.hotspot_on = None;
        self.status.hotspot = None;
        iwd::stop_ap(radio)
    }

    /// Whether iwd's store holds a network to join.
    fn knows_networks(&self) -> bool {
        std::fs::read_dir(&self.iwd_dir).is_ok_and(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| e.path().extension().is_some_and(|x| x == "psk" || x == "open"))
        })
    }

    /// The owner's Wi-Fi network from hellasd, taken (removed) whether or not it checks out.
    fn take_request(&mut self) -> Result<Option<Wifi>> {
        let text = match std::fs::read_to_string(&self.request_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.request_path.display())),
        };
        std::fs::remove_file(&self.request_path).with_context(|| format!("removing {}", self.request_path.display()))?;
        let wifi: Wifi = match toml::from_str(&text).map_err(|e| e.to_string()).and_then(|w: Wifi| w.check().map(|()| w)) {
            Ok(wifi) => wifi,
            Err(problem) => {
                // hellasd checks it before writing: this one was not written by hellasd.
                tracing::warn!("{}: refused: {problem}", self.request_path.display());
                return Ok(None);
            }
        };
        Ok(Some(wifi))
    }

    /// Saves and joins `wifi`, waiting until the radio has an address or the time is up.
    fn join(&mut self, radios: &[String], wifi: Wifi) -> Result<()> {
        let Some(radio) = radios.first() else {
            self.finish_join(&wifi, Some("this box has no Wi-Fi radio that Linux knows: use a network cable".into()));
            return Ok(());
        };
        self.status.wifi = Some(WifiJoin { ssid: wifi.ssid.clone(), state: JoinState::Joining, problem: None });
        self.publish()?;
        save_wifi(&self.iwd_dir, &wifi)?;
        if self.hotspot_on.is_some() {
            tracing::info!("joining {:?}: closing the setup hotspot", wifi.ssid);
            self.close_hotspot(radio)?;
        }
        let deadline = Instant::now() + self.join_timeout;
        let mut refused = None;
        loop {
            if radio_has_address(&super::addresses(), radio) {
                tracing::info!("joined the Wi-Fi network {:?} on {radio}", wifi.ssid);
                self.finish_join(&wifi, None);
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            if let Err(e) = iwd::connect(radio, &wifi.ssid) {
                refused = Some(format!("{e:#}"));
            }
            std::thread::sleep(TICK);
        }
        let problem = join_problem(&wifi.ssid, refused.as_deref());
        tracing::warn!("{problem}");
        // Forgotten (through iwd, which also drops what it remembered of the attempt), so that
        // iwd does not keep trying a wrong passphrase instead of the hotspot.
        let _ = iwd::iwctl(&["station", radio, "disconnect"]);
        if let Err(e) = iwd::iwctl(&["known-networks", &wifi.ssid, "forget"]) {
            tracing::warn!("{e:#}");
        }
        let file = self.iwd_dir.join(wifi.iwd_file_name());
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("removing {}", file.display())),
            _ => {}
        }
        self.finish_join(&wifi, Some(problem));
        // Back to the hotspot at once: the owner is waiting to try again.
        self.offline_since = Some(Instant::now() - self.hotspot_after);
        Ok(())
    }

    fn finish_join(&mut self, wifi: &Wifi, problem: Option<String>) {
        let state = if problem.is_some() { JoinState::Failed } else { JoinState::Joined };
        self.status.wifi = Some(WifiJoin { ssid: wifi.ssid.clone(), state, problem });
    }

    /// Writes the status for hellasd (readable by it, 0640) when it changed.
    fn publish(&self) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.status).context("writing the network status")?;
        if std::fs::read_to_string(&self.status_path).is_ok_and(|t| t == text) {
            return Ok(());
        }
        write_atomically_with_mode(&self.status_path, text.as_bytes(), 0o640)?;
        give_to_directory_owner(self.status_path.parent().expect("in the runtime directory"), std::slice::from_ref(&self.status_path))
    }
}

/// Whether an interface other than the ignored ones has an address that reaches a network:
/// IPv4 other than link-local, or IPv6 other than link-local.
fn is_online(addresses: &[(String, IpAddr)], ignored: &[String]) -> bool {
    let hotspot: IpAddr = HOTSPOT_ADDRESS.parse().expect("an address");
    // The hotspot's address may linger a moment after it closed.
    addresses.iter().filter(|(name, ip)| !ignored.contains(name) && *ip != hotspot).any(|(_, ip)| match ip {
        IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
        IpAddr::V6(v6) => !v6.is_loopback() && (v6.segments()[0] & 0xffc0) != 0xfe80,
    })
}

fn radio_has_address(addresses: &[(String, IpAddr)], radio: &str) -> bool {
    is_online(&addresses.iter().filter(|(name, _)| name == radio).cloned().collect::<Vec<_>>(), &[])
}

/// "Hellas-" and the last two bytes of the radio's MAC, so that two boxes' hotspots differ.
fn hotspot_ssid(mac: &str) -> String {
    let hex: String = mac.chars().filter(char::is_ascii_hexdigit).collect::<String>().to_uppercase();
    format!("Hellas-{}", hex.get(hex.len().saturating_sub(4)..).filter(|s| s.len() == 4).unwrap_or("0000"))
}

/// Three groups of four from the claim code's alphabet (no 0/O, 1/I): 60 bits, easy to type.
fn hotspot_passphrase() -> String {
    use hellas_contract::claim_code::ALPHABET;
    let mut rng = rand::rngs::OsRng;
    (0..3).map(|_| (0..4).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect::<String>()).collect::<Vec<_>>().join("-")
}

/// Why joining failed, in words that say what to do.
fn join_problem(ssid: &str, refused: Option<&str>) -> String {
    match refused {
        Some(text) if text.contains("not found") || text.contains("Not found") => {
            format!("could not join {ssid:?}: no network of that name is in range. Check the name (it is case-sensitive) and that the router is on")
        }
        Some(text) => format!("could not join {ssid:?}: it refused the box. Check the passphrase and try again ({})", text.trim()),
        None => format!("could not join {ssid:?}: the box joined but got no address from it (DHCP). Check the router"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, ip: &str) -> (String, IpAddr) {
        (name.into(), ip.parse().unwrap())
    }

    #[test]
    fn only_usable_addresses_on_counted_interfaces_are_a_network() {
        assert!(!is_online(&[], &[]));
        assert!(!is_online(&[at("enp1s0", "169.254.3.4"), at("enp1s0", "fe80::1")], &[]), "link-local alone is no network");
        assert!(is_online(&[at("enp1s0", "192.168.1.20")], &[]));
        assert!(is_online(&[at("wlan0", "2001:db8::5")], &[]));
        assert!(!is_online(&[at("wlan0", "10.42.0.7")], &["wlan0".into()]), "an ignored interface does not count");
        assert!(!is_online(&[at("wlan0", "10.42.0.1")], &[]), "the hotspot's own address is not the owner's network");
        assert!(radio_has_address(&[at("enp1s0", "192.168.1.20"), at("wlan0", "10.0.0.7")], "wlan0"));
        assert!(!radio_has_address(&[at("enp1s0", "192.168.1.20")], "wlan0"));
    }

    #[test]
    fn the_hotspot_is_named_for_the_radio_and_its_passphrase_is_wpa_ready() {
        assert_eq!(hotspot_ssid("02:00:00:00:ab:1f"), "Hellas-AB1F");
        assert_eq!(hotspot_ssid(""), "Hellas-0000");
        let passphrase = hotspot_passphrase();
        assert_eq!(passphrase.len(), 14, "{passphrase}");
        hellas_contract::network::check_passphrase(&passphrase).unwrap();
        assert_ne!(passphrase, hotspot_passphrase());
        let hotspot = Hotspot { ssid: "Hellas-AB1F".into(), passphrase: "ABCD-EFGH;JKLM".into(), url: String::new() };
        assert_eq!(hotspot.join_code(), "WIFI:T:WPA;S:Hellas-AB1F;P:ABCD-EFGH\\;JKLM;;");
    }

    #[test]
    fn a_failed_join_says_what_to_check() {
        assert!(join_problem("Home", Some("`iwctl station wlan0 connect Home` failed (exit status: 1): Network not found")).contains("no network of that name is in range"));
        assert!(join_problem("Home", Some("Operation failed")).contains("Check the passphrase"));
        assert!(join_problem("Home", None).contains("DHCP"));
    }
}
