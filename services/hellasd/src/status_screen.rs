//! The box's own screen (the console, and the serial port): what an owner standing at the box
//! needs to know. agetty shows `/etc/issue.d/*.issue` above its login prompt; the image links
//! `60-hellas-status.issue` to `status.issue` in the runtime directory, which hellasd keeps
//! current: the box name, its addresses, its Wi-Fi, where the engine runs, the memory tuning,
//! the setup hotspot with a QR code that joins it while the box has no network, and, until
//! the box has an owner, a QR code of the setup page (the claim code itself is the claim text
//! above it, `crate::owner::ClaimFiles`). When the text changes, hellasd touches
//! `/run/agetty.reload` and every agetty draws it again.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::app::AppState;
use crate::network::{addresses, JoinState, NetworkStatus};
use crate::state_file::write_atomically;

/// agetty draws its issue again when this file changes (util-linux's `agetty --reload`).
const AGETTY_RELOAD: &str = "/run/agetty.reload";
/// How often the screen's facts are read again (addresses come and go with the network).
const REFRESH: Duration = Duration::from_secs(3);

/// What the screen shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub box_name: String,
    pub claimed: bool,
    /// Interface and address, loopback aside.
    pub addresses: Vec<(String, IpAddr)>,
    /// Where the engine runs, in words.
    pub engine: String,
    /// The memory tuning's state, in words.
    pub tuning: String,
    /// The network watcher's hotspot and Wi-Fi.
    pub network: NetworkStatus,
    /// Why this boot's seed was refused, if it was.
    pub seed_refused: Option<String>,
}

impl Status {
    /// The setup page's address: the first IPv4 address (a phone's camera reaches it without
    /// mDNS), else `<name>.local`.
    pub fn setup_url(&self) -> String {
        match self.addresses.iter().find(|(_, ip)| ip.is_ipv4()) {
            Some((_, ip)) => format!("http://{ip}/"),
            None => format!("http://{}.local/", self.box_name),
        }
    }

    /// The text agetty shows, with agetty's escape character doubled.
    pub fn render(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(text, "Box:       {}.local", self.box_name);
        if let Some(refused) = &self.seed_refused {
            let _ = writeln!(text, "Seed:      refused: {refused}");
        }
        if self.addresses.is_empty() {
            let _ = writeln!(text, "Network:   no address yet: plug in a network cable with DHCP (docs/operator-guide.md)");
        }
        for (interface, ip) in &self.addresses {
            let _ = writeln!(text, "Network:   {ip} ({interface})");
        }
        if let Some(wifi) = &self.network.wifi {
            let _ = match (&wifi.state, &wifi.problem) {
                (_, Some(problem)) => writeln!(text, "Wi-Fi:     {problem}"),
                (JoinState::Joining, None) => writeln!(text, "Wi-Fi:     joining {:?}…", wifi.ssid),
                _ => writeln!(text, "Wi-Fi:     joined {:?}", wifi.ssid),
            };
        }
        let _ = writeln!(text, "Engine:    {}", self.engine);
        let _ = writeln!(text, "Memory:    {}", self.tuning);
        if let Some(hotspot) = &self.network.hotspot {
            let _ = writeln!(text, "\nNo network: join the setup hotspot {:?} with the passphrase {}", hotspot.ssid, hotspot.passphrase);
            let _ = writeln!(text, "and open {} (the box joins your Wi-Fi from there). Scan to join:", hotspot.url);
            text += &qr_code(&hotspot.join_code());
        } else if !self.claimed {
            let url = self.setup_url();
            let _ = writeln!(text, "\nScan to set up this box ({url}):");
            text += &qr_code(&url);
        }
        text.replace('\\', "\\\\")
    }
}

/// The QR code of `text` in half blocks, dark modules as spaces so it reads dark on light on a
/// console's dark background, with the quiet zone scanners need.
fn qr_code(text: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code.render::<Dense1x2>().dark_color(Dense1x2::Light).light_color(Dense1x2::Dark).quiet_zone(true).build() + "\n",
        Err(e) => format!("(no QR code: {e})\n"),
    }
}

/// Where this box's engines run, as the planner places them.
fn engine_words(state: &AppState) -> String {
    if crate::memory_budget::engines_on_gpu(&state.config.engine) {
        "on the GPU (Vulkan)".to_string()
    } else if state.config.engine.gpu_layers == Some(0) {
        "on the CPU (engine.gpu_layers = 0)".to_string()
    } else {
        "on the CPU: no AMD GPU found".to_string()
    }
}

/// The status file and the reload trigger agetty watches.
pub struct Screen {
    issue: PathBuf,
    reload: PathBuf,
}

impl Screen {
    pub fn new(runtime_dir: &Path) -> Screen {
        Screen { issue: runtime_dir.join("status.issue"), reload: PathBuf::from(AGETTY_RELOAD) }
    }

    /// Writes the text when it differs from what is shown; true when it did.
    pub fn show(&self, text: &str) -> Result<bool> {
        if std::fs::read_to_string(&self.issue).is_ok_and(|shown| shown == text) {
            return Ok(false);
        }
        write_atomically(&self.issue, text.as_bytes())?;
        // agetty watches the file for a change of its times; without it (a host, a test) the
        // text is shown at the next prompt.
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&self.reload) {
            file.set_modified(std::time::SystemTime::now()).with_context(|| format!("touching {}", self.reload.display()))?;
        }
        Ok(true)
    }
}

/// Keeps the screen current while hellasd runs.
pub async fn run(state: Arc<AppState>) {
    let screen = Screen::new(&state.config.web.runtime_dir);
    // systemd makes it (RuntimeDirectory=); a daemon started by hand may have to.
    if let Err(e) = std::fs::create_dir_all(&state.config.web.runtime_dir) {
        tracing::warn!("the box's screen stays blank: creating {}: {e}", state.config.web.runtime_dir.display());
    }
    let os_reserve = state.config.memory.os_reserve_bytes;
    let engine = engine_words(&state);
    let mut tuning = None;
    loop {
        // The tuning changes only with a reboot: read once.
        if tuning.is_none() {
            tuning = tokio::task::spawn_blocking(move || crate::tune::status(os_reserve)["state"].as_str().unwrap_or("unknown").to_string()).await.ok();
        }
        let owner = state.owner.load();
        let status = Status {
            box_name: owner.as_ref().map_or_else(|_| "hellas".into(), |f| f.settings.box_name.clone()),
            claimed: owner.as_ref().is_ok_and(|f| f.owner.is_some()),
            addresses: addresses(),
            engine: engine.clone(),
            tuning: tuning.clone().unwrap_or_default(),
            network: crate::network::read_status(&state.config.web.runtime_dir),
            seed_refused: crate::seed::refusal(&state.config.web.runtime_dir),
        };
        let text = status.render();
        match screen.show(&text) {
            Ok(true) => tracing::info!("the box's screen shows: {}", text.lines().take(4).collect::<Vec<_>>().join(" | ")),
            Ok(false) => {}
            Err(e) => tracing::warn!("updating the box's screen: {e:#}"),
        }
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(claimed: bool, addresses: Vec<(String, IpAddr)>) -> Status {
        Status { box_name: "kitchen".into(), claimed, addresses, engine: "on the GPU (Vulkan)".into(), tuning: "tuned".into(), network: NetworkStatus::default(), seed_refused: None }
    }

    #[test]
    fn an_unclaimed_box_shows_its_addresses_and_a_qr_code_of_the_setup_page() {
        let s = status(false, vec![("enp1s0".into(), "192.168.1.20".parse().unwrap()), ("enp1s0".into(), "2001:db8::20".parse().unwrap())]);
        let text = s.render();
        assert!(text.contains("Box:       kitchen.local\n"), "{text}");
        assert!(text.contains("Network:   192.168.1.20 (enp1s0)\n") && text.contains("Network:   2001:db8::20 (enp1s0)\n"), "{text}");
        assert!(text.contains("Scan to set up this box (http://192.168.1.20/)"), "{text}");
        assert_eq!(decode_qr(&text), "http://192.168.1.20/", "a camera reads the setup page from the screen");
        let claimed = Status { seed_refused: Some("/boot/hellas/seed.toml: section [wifi]: …".into()), ..status(true, vec![]) }.render();
        assert!(claimed.contains("Seed:      refused: /boot/hellas/seed.toml: section [wifi]: …\n"), "{claimed}");
        assert!(!claimed.contains('█') && claimed.contains("no address yet"), "{claimed}");
        assert_eq!(status(false, vec![]).setup_url(), "http://kitchen.local/");
    }

    /// Reads the half-block QR code in `text` back as a camera would (light: a lit cell half).
    pub(crate) fn decode_qr(text: &str) -> String {
        const SCALE: usize = 4;
        let rows: Vec<Vec<char>> = text.lines().filter(|l| l.contains('█')).map(|l| l.chars().collect()).collect();
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let light = |x: usize, y: usize| {
            let c = rows[y / 2].get(x).copied().unwrap_or(' ');
            c == '█' || (y.is_multiple_of(2) && c == '▀') || (!y.is_multiple_of(2) && c == '▄')
        };
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(width * SCALE, rows.len() * 2 * SCALE, |x, y| if light(x / SCALE, y / SCALE) { 255 } else { 0 });
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "one QR code on the screen:\n{text}");
        grids[0].decode().expect("the QR code decodes").1
    }

    #[test]
    fn without_a_network_the_screen_shows_the_hotspot_and_a_code_that_joins_it() {
        use crate::network::{Hotspot, WifiJoin};
        let mut s = status(false, vec![]);
        s.network.hotspot = Some(Hotspot { ssid: "Hellas-AB1F".into(), passphrase: "ABCD-EFGH-JKLM".into(), url: "http://10.42.0.1/".into() });
        s.network.wifi = Some(WifiJoin { ssid: "Home".into(), state: JoinState::Failed, problem: Some("could not join \"Home\": it refused the box. Check the passphrase".into()) });
        let text = s.render();
        assert!(text.contains("join the setup hotspot \"Hellas-AB1F\" with the passphrase ABCD-EFGH-JKLM"), "{text}");
        assert!(text.contains("Wi-Fi:     could not join \"Home\": it refused the box. Check the passphrase\n"), "{text}");
        assert_eq!(decode_qr(&text), "WIFI:T:WPA;S:Hellas-AB1F;P:ABCD-EFGH-JKLM;;");
    }

    #[test]
    fn the_screen_is_written_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let screen = Screen { issue: dir.path().join("status.issue"), reload: dir.path().join("agetty.reload") };
        std::fs::write(&screen.reload, b"").unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH;
        std::fs::File::options().write(true).open(&screen.reload).unwrap().set_modified(old).unwrap();
        assert!(screen.show("a\\\\b\n").unwrap());
        assert_ne!(std::fs::metadata(&screen.reload).unwrap().modified().unwrap(), old, "agetty is told");
        assert!(!screen.show("a\\\\b\n").unwrap());
        assert_eq!(std::fs::read_to_string(&screen.issue).unwrap(), "a\\\\b\n");
    }
}
