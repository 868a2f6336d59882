//! The A/B update path on the booted box, driven as the owner drives it (the dashboard's forms
//! and its JSON status), with the channel served from this host:
//!
//! 1. `<v>.1` is installed into the inactive slot and booted, ahead of the older release's tuned
//!    boot entry; the settings, the API key and the model survive.
//! 2. `<v>.2` (whose engine cannot start) is being written when the power is cut: the box
//!    comes back on `<v>.1`, through the tuned entry its good boot wrote for its own UKI.
//! 3. `<v>.2` installed for real boots, fails its health check, and the box goes back to
//!    `<v>.1` by itself; `<v>.2` is not offered again.
//! 4. A channel that adds a `<v>.3` without its signature is refused.
//!
//! The channels come from `cargo xtask test` (`HELLAS_TEST_CHANNELS`): `good/` holds `<v>.1`,
//! `bad/` holds `<v>.1` and `<v>.2`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use std::{env, fs};

use hellas_contract::release;
use hellas_system_tests::channel::ChannelServer;
use hellas_system_tests::vm::Vm;
use serde_json::Value;

use super::{check_report, owner_web::OwnerWeb, MODEL, PASSWORD, SEEDED_HOSTNAME, SSH_KEY};

/// A boot under TCG, and a download and write of the root slot besides.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const CHECK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Returns the version the box runs at the end.
pub fn update_roll_back_and_refuse(vm: &mut Vm, web: &mut OwnerWeb, key: &str, v1: &str) -> String {
    let channels = channels_dir();
    let (good, bad, v2, v3) = (channels.join("good"), channels.join("bad"), format!("{v1}.1"), format!("{v1}.2"));
    let server = ChannelServer::start(&good).expect("starting the channel server");

    // The owner names the channel in the settings, then checks.
    web.get("/settings");
    let saved = web.post(
        "/settings",
        &[("box_name", SEEDED_HOSTNAME), ("timezone", "UTC"), ("ssh_keys", SSH_KEY), ("update_channel", &server.guest_url())],
    );
    assert_eq!(saved.1.as_deref(), Some("/dashboard"), "saving the update channel: {saved:?}");
    let status = check_for_updates(vm, web);
    assert_eq!(status["offered"], v2.as_str(), "the channel offers {v2}: {status}");
    assert_eq!(status["booted"], v1, "{status}");

    // 1. The update, and what survives it.
    let seen = vm.reports().unwrap().len();
    apply(web, &v2);
    let report = vm
        .wait_report_where(REBOOT_TIMEOUT, &format!("from {v2}"), seen, |r| r["image_version"] == v2.as_str())
        .unwrap_or_else(|e| panic!("{e:#}"));
    println!("updated: {report}");
    check_report(&report, vm);
    assert!(report["boot_entry"].as_str().unwrap_or_default().contains(&v2), "systemd-boot did not start {v2}'s UKI: {report}");
    web.log_in(PASSWORD);
    let status = wait_status(vm, web, "the update to be proven by its health check", |s| s["pending"].is_null());
    assert_eq!(status["last_result"], format!("updated to {v2}"), "{status}");
    assert_eq!(status["booted"], v2.as_str(), "{status}");
    let models = api_models(vm, key);
    assert!(models.contains(&MODEL.to_string()), "the model library did not survive the update: {models:?}");
    let (_, _, dashboard) = web.get("/dashboard");
    assert!(dashboard.contains(&server.guest_url()), "the settings did not survive the update");

    // 2. The power is cut while the next release is written into the other slot.
    server.serve_dir(&bad);
    let status = check_for_updates(vm, web);
    assert_eq!(status["offered"], v3.as_str(), "{status}");
    server.throttle(Some((".root.zst", 4 << 20)));
    apply(web, &v3);
    let v3_root = |file: &str| release::belongs_to(file, "hellas", &v3) && file.ends_with(".root.zst");
    let deadline = Instant::now() + CHECK_TIMEOUT;
    while server.sent(v3_root) < 64 << 20 {
        assert!(Instant::now() < deadline, "the guest did not start downloading {v3}'s root\n{}", vm.diagnostics());
        std::thread::sleep(Duration::from_millis(200));
    }
    vm.pull_the_plug();
    println!("power cut after {} MiB of {v3}'s root", server.sent(v3_root) >> 20);
    server.throttle(None);
    vm.restart().expect("starting QEMU again");
    let report = vm.wait_report_where(REBOOT_TIMEOUT, "after the power cut", 0, |_| true).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report["image_version"], v2.as_str(), "after a cut-short install the box must boot what it ran: {report}");
    // Since it was proven good, the box runs tuned (the test image tunes as a Strix Halo would):
    // the tuned boot entry, written on the update's boot, starts the new release's UKI.
    assert!(
        report["boot_entry"].as_str().unwrap_or_default().starts_with("hellas-tuned") && report["tuned"].as_str().unwrap_or_default().starts_with("ttm.pages_limit="),
        "the tuned entry did not boot {v2}: {report}"
    );
    check_report(&report, vm);
    web.log_in(PASSWORD);
    let status = wait_status(vm, web, "the cut-short install to be reported", |s| s["phase"]["phase"] != "installing");
    assert_eq!(status["interrupted"], v3.as_str(), "{status}");
    assert!(status["last_result"].as_str().is_some_and(|r| r.contains("cut short")), "the dashboard must say the install was cut short: {status}");

    // 3. The bad release, installed for real: it boots, fails its health check, and the box
    // goes back by itself.
    let status = check_for_updates(vm, web);
    assert_eq!(status["offered"], v3.as_str(), "a cut-short install may be tried again: {status}");
    let seen = vm.reports().unwrap().len();
    apply(web, &v3);
    let report = vm
        .wait_report_where(REBOOT_TIMEOUT * 2, &format!("from {v2} again after {v3} failed"), seen, |r| r["image_version"] == v2.as_str())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let console = fs::read_to_string(vm.console_log()).unwrap_or_default();
    assert!(console.contains("unhealthy:"), "{v3} did not boot and fail its health check:\n{}", vm.console_tail(80));
    println!("rolled back: {report}");
    check_report(&report, vm);
    web.log_in(PASSWORD);
    let status = check_for_updates(vm, web);
    assert!(status["offered"].is_null(), "{v3} is offered again after it was rolled back: {status}");
    let rejected: Vec<&str> = status["rejected"].as_array().into_iter().flatten().filter_map(|r| r["version"].as_str()).collect();
    assert_eq!(rejected, [v3.as_str()], "{status}");
    assert_eq!(status["booted"], v2.as_str(), "{status}");

    // 4. A channel with an unsigned addition is refused as a whole.
    let tampered = tampered_channel(&bad, &format!("{v1}.3"));
    server.serve_dir(&tampered);
    let before = web_status(web)["checked_at"].clone();
    web.get("/dashboard");
    web.post("/update", &[]);
    // A refused check leaves `checked_at` (the last good one) as it was.
    let status = wait_status(vm, web, "the tampered channel to be checked", |s| s["phase"]["phase"] == "failed" || s["checked_at"] != before);
    assert_eq!(status["phase"]["phase"], "failed", "a channel whose SHA256SUMS does not match its signature was accepted: {status}");
    assert!(status["offered"].is_null(), "{status}");
    println!("the tampered channel is refused: {}", status["phase"]["error"]);
    v2
}

/// "Check for updates" on the dashboard, then the status once the check is done.
fn check_for_updates(vm: &Vm, web: &mut OwnerWeb) -> Value {
    let before = web_status(web)["checked_at"].clone();
    web.get("/dashboard");
    let (status, location, page) = web.post("/update", &[]);
    assert_eq!((status, location.as_deref()), (303, Some("/dashboard")), "asking for a check: {page}");
    wait_status(vm, web, "a check of the channel", |s| s["checked_at"] != before && s["phase"]["phase"] != "checking")
}

fn apply(web: &mut OwnerWeb, version: &str) {
    let (status, _, dashboard) = web.get("/dashboard");
    let section = dashboard.find("id=\"update\"").map(|at| &dashboard[at..(at + 1500).min(dashboard.len())]).unwrap_or(&dashboard);
    assert!(dashboard.contains(&format!("Update to {version}")), "the dashboard ({status}) does not offer {version}: {section}");
    let (status, location, page) = web.post("/update", &[("version", version)]);
    assert_eq!((status, location.as_deref()), (303, Some("/dashboard")), "applying {version}: {page}");
}

fn web_status(web: &mut OwnerWeb) -> Value {
    let (status, _, body) = web.get("/update");
    assert_eq!(status, 200, "GET /update: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET /update is not JSON ({e}): {body}"))
}

pub fn wait_status(vm: &Vm, web: &mut OwnerWeb, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    wait_status_for(CHECK_TIMEOUT, vm, web, what, done)
}

pub fn wait_status_for(timeout: Duration, vm: &Vm, web: &mut OwnerWeb, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let status = web_status(web);
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "waited {} s for {what}; the status is {status}\n{}", timeout.as_secs(), vm.diagnostics());
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub fn api_models(vm: &Vm, key: &str) -> Vec<String> {
    let client = reqwest::blocking::Client::builder().no_proxy().timeout(Duration::from_secs(60)).build().unwrap();
    let models: Value = client
        .get(format!("{}/v1/models", vm.api_url()))
        .bearer_auth(key)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.json())
        .expect("GET /v1/models with the key made before the update");
    models["data"].as_array().into_iter().flatten().filter_map(|m| m["id"].as_str().map(String::from)).collect()
}

/// `channel` plus a release `version` whose files and SHA256SUMS lines were added without
/// signing them again: what a mirror that was tampered with would serve.
fn tampered_channel(channel: &Path, version: &str) -> PathBuf {
    let dir = channel.with_file_name("tampered");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(channel).unwrap().flatten() {
        fs::hard_link(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let mut sums = fs::read_to_string(dir.join(release::SUMS)).unwrap();
    let uki = release::uki_file("hellas", version);
    fs::write(dir.join(&uki), b"not a kernel").unwrap();
    sums.push_str(&format!("{}  {uki}\n", sha256_hex(b"not a kernel")));
    fs::remove_file(dir.join(release::SUMS)).unwrap();
    fs::write(dir.join(release::SUMS), sums).unwrap();
    dir
}

fn sha256_hex(bytes: &[u8]) -> String {
    let output = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("running sha256sum");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap().to_string()
}

fn channels_dir() -> PathBuf {
    let dir = env::var_os("HELLAS_TEST_CHANNELS").map(PathBuf::from).unwrap_or_else(|| super::cache_dir().join("test-channels"));
    assert!(dir.join("good/SHA256SUMS").is_file() && dir.join("bad/SHA256SUMS").is_file(), "the test channels are missing in {}: run `cargo xtask test`, which publishes them", dir.display());
    dir
}
