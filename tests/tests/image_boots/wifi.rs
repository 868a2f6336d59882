//! The box without a network, on the guest's virtual radios (the qemu-test image's
//! hellas-wifi-lab: a "phone" and a "home" access point, each in its own network namespace; the
//! guest's wired link is the test's own and does not count as the owner's network). The box
//! opens its setup hotspot and shows it on its screen; the phone joins it and gets the setup
//! page, and its connectivity check is sent there (a captive portal); after the claim, the owner on the phone gives a wrong passphrase for the home network,
//! sees why it failed on the box's screen and the settings page, gets the hotspot back, gives
//! the right one, and the box joins the home network (an address from its DHCP server) and
//! closes the hotspot; the phone goes home too and reaches the box there.

use std::time::{Duration, Instant};

use hellas_system_tests::vm::Vm;
use serde_json::Value;

use super::owner_web::OwnerWeb;
use super::{console_text, decode_qr, fingerprint_in, PASSWORD, SEEDED_HOSTNAME, SSH_KEY};

const HOME_SSID: &str = "HomeNet";
const HOME_PASSPHRASE: &str = "home network passphrase";
/// Joining under TCG: iwd's scan, the handshake, and DHCP, each slow on two emulated cores.
const JOIN_TIMEOUT: Duration = Duration::from_secs(240);

/// The boot report's Wi-Fi facts, the screen's hotspot and its QR code, and the setup page as
/// the phone gets it over the hotspot. Before the claim.
pub fn the_phone_finds_the_hotspot_and_the_setup_page(vm: &Vm, report: &Value) {
    let hotspot = report["hotspot"].as_str().unwrap_or_default();
    let phone = report["phone"].as_str().unwrap_or_default();
    assert!(hotspot.starts_with("Hellas-") && phone.starts_with("10.42.0."), "no setup hotspot, or the phone did not join it: {report}\n{}", vm.console_tail(60));
    let console = console_text(vm);
    let marker = format!("join the setup hotspot \"{hotspot}\" with the passphrase ");
    let (_, after) = console.rsplit_once(&marker).unwrap_or_else(|| panic!("the screen does not show the hotspot {hotspot}\n{}", vm.console_tail(60)));
    let passphrase = after.split_whitespace().next().unwrap().to_string();
    let lines: Vec<&str> = after.lines().take(40).collect();
    assert_eq!(decode_qr(&lines), format!("WIFI:T:WPA;S:{hotspot};P:{passphrase};;"), "the screen's QR code joins the hotspot");
    let mut phone_web = OwnerWeb::new(vm.phone_web_url());
    let (status, _, page) = phone_web.get("/setup/claim");
    assert!(status == 200 && page.contains("claim code"), "the phone gets no setup page over the hotspot: {status} {page}");
    // A phone's connectivity check for another site is sent to the setup page: a captive portal.
    let probe = raw_get(&vm.phone_web_url(), "connectivitycheck.gstatic.com", "/generate_204");
    assert!(probe.starts_with("http/1.1 302") && probe.contains("location: http://10.42.0.1/"), "the phone's connectivity check: {probe}");
    println!("the box opened the hotspot {hotspot} (passphrase {passphrase} on its screen); the phone, {phone}, gets the setup page there");
}

/// One HTTP/1.1 GET with the given Host, as a phone's connectivity check sends it; the answer's
/// head, lower-cased.
fn raw_get(base: &str, host: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let address = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap_or_else(|e| panic!("connecting to {address}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.split("\r\n\r\n").next().unwrap_or_default().to_lowercase()
}

/// After the claim: the owner, on the phone, makes the box join the home network.
pub fn the_owner_on_the_phone_moves_the_box_to_the_home_network(vm: &Vm) {
    let fingerprint = fingerprint_in(&console_text(vm)).expect("the console shows the certificate's fingerprint");
    let settings = |passphrase: &str| {
        let mut phone = OwnerWeb::pinned(vm.phone_https_url(), &fingerprint);
        phone.log_in(PASSWORD);
        let (status, _, page) = phone.get("/settings");
        assert!(status == 200 && page.contains("id=\"wifi\""), "the settings page over the hotspot has no Wi-Fi fields: {status}\n{page}");
        phone.post("/settings", &[("box_name", SEEDED_HOSTNAME), ("timezone", "UTC"), ("ssh_keys", SSH_KEY), ("wifi_ssid", HOME_SSID), ("wifi_passphrase", passphrase)])
    };

    // A wrong passphrase: the box says so, and its hotspot comes back for the owner to retry.
    let (status, _, page) = settings("not the home passphrase");
    assert!(status == 200 && page.contains("is joining"), "asking the box to join {HOME_SSID}: {status}\n{page}");
    let problem = wait_for_screen(vm, &format!("Wi-Fi:     could not join \"{HOME_SSID}\""));
    assert!(problem.contains("Check the passphrase") || problem.contains("in range"), "the screen's reason: {problem}");
    println!("a wrong passphrase: the box's screen says {problem:?}");
    wait_until(vm, "the phone is back on the hotspot and the settings page shows the failure", || {
        let mut phone = OwnerWeb::pinned(vm.phone_https_url(), &fingerprint);
        phone.try_log_in(PASSWORD) && phone.get("/settings").2.contains("could not join")
    });

    // The right one: the hotspot closes and the box is on the home network.
    let (status, _, page) = settings(HOME_PASSPHRASE);
    assert!(status == 200 && page.contains("is joining"), "asking the box to join {HOME_SSID} again: {status}\n{page}");
    wait_for_screen(vm, &format!("Wi-Fi:     joined \"{HOME_SSID}\""));
    // An address from the home access point's DHCP server: the box talks on the home network.
    let address = wait_for_screen(vm, "Network:   192.168.77.");
    assert!(!console_text(vm).rsplit_once("Box:       ").map(|(_, screen)| screen.to_string()).unwrap_or_default().contains("join the setup hotspot"), "the hotspot is still on the screen");
    println!("the right passphrase: the box joined {HOME_SSID} and closed its hotspot: {address:?}");

    // The phone, back on the home network (the lab moves it there once the hotspot is gone),
    // reaches the box at its home address: the owner's settings, signed in, over HTTPS.
    wait_until(vm, "the phone reaches the box on the home network", || {
        let mut phone = OwnerWeb::pinned(vm.phone_https_url(), &fingerprint);
        let home = console_text(vm).contains("lab: the phone's way in goes to the box at 192.168.77.");
        home && phone.try_log_in(PASSWORD) && phone.get("/settings").2.contains(&format!("<p id=\"wifi-last\">joined: {HOME_SSID}</p>"))
    });
    println!("the phone, on {HOME_SSID} too, reaches the box there and signs in");
}

/// The line of the box's latest screen that starts with `prefix`, once it shows one.
fn wait_for_screen(vm: &Vm, prefix: &str) -> String {
    let mut found = String::new();
    wait_until(vm, &format!("the box's screen shows {prefix:?}"), || {
        let console = console_text(vm);
        let screen = console.rsplit_once("Box:       ").map(|(_, s)| s.to_string()).unwrap_or_default();
        match screen.lines().find(|l| l.starts_with(prefix)) {
            Some(line) => {
                found = line.to_string();
                true
            }
            None => false,
        }
    });
    found
}

fn wait_until(vm: &Vm, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + JOIN_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}\n{}", vm.console_tail(80));
        std::thread::sleep(Duration::from_secs(3));
    }
}
