//! A/B updates of the whole system from a signed release channel.
//!
//! systemd-sysupdate does the work: it checks the channel's signed `SHA256SUMS`, writes the
//! release into the root slot that is not booted and installs its UKI with boot-counting tries.
//! This module decides what to offer, asks sysupdate to install it, and remembers the outcome:
//!
//! - The daemon runs unprivileged, so it only writes a [`Request`] (`update/request.json` in the
//!   state directory); `hellas-update.path` starts `hellasd update run` as root, which carries
//!   it out and writes the [`Status`] (`update/status.json`) that the daemon shows.
//! - A release installed and rebooted into stays `pending` until the boot's health check
//!   ([`health`]) passes. A boot of any other version while one is pending means the
//!   pending release used up its tries and systemd-boot went back: it is remembered as rejected
//!   and not offered again, so a bad release is never re-applied in a loop; a newer one is.

pub mod health;
pub mod install;
pub mod transfers;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::state_file::unix_now;

/// What the updater is doing; the variants are the states it can be in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the owner (or up to date).
    #[default]
    Idle,
    /// Reading the channel's signed list of releases.
    Checking,
    /// Writing `version` into the inactive slot and its UKI onto the ESP.
    Installing { version: String },
    /// `version` is installed; the box is rebooting into it, on trial until its health check passes.
    Rebooting { version: String },
    /// Copying the running system to an internal disk (`crate::install`).
    CopyingToDisk { disk: String },
    /// The last check or install failed; the box runs as it was.
    Failed { action: String, error: String },
}

/// A release that booted but never passed its health check, so the box went back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub version: String,
    pub reason: String,
    pub at: u64,
}

/// `update/status.json`: written by `hellasd update run` (root), read by the daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// The version this boot runs (`IMAGE_VERSION` in os-release).
    pub booted: String,
    /// The channel the last check read.
    pub channel: String,
    pub phase: Phase,
    /// Every version the channel offers, oldest first.
    pub available: Vec<String>,
    /// The newest available version newer than the booted one and not rejected.
    pub offered: Option<String>,
    pub checked_at: Option<u64>,
    /// Installed and rebooted into, not yet proven by a health check.
    pub pending: Option<String>,
    /// An install of this version was cut short: its slot is half-written and is emptied
    /// (`systemd-sysupdate vacuum`) before the next install.
    pub interrupted: Option<String>,
    pub rejected: Vec<Rejected>,
    /// What the last finished update did, in a sentence for the dashboard.
    pub last_result: Option<String>,
}

/// `update/request.json`: what the owner asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Request {
    Check,
    Apply { version: String },
    /// Copy the running system to `disk` (see `crate::install`).
    Install { disk: String, keep_data: bool },
}

/// The update files in the state directory.
pub struct UpdateFiles {
    dir: PathBuf,
}

impl UpdateFiles {
    pub fn new(state_dir: &Path) -> UpdateFiles {
        UpdateFiles { dir: state_dir.join("update") }
    }

    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    pub fn request_path(&self) -> PathBuf {
        self.dir.join("request.json")
    }

    /// The last status written; a box that never checked has a default one.
    pub fn status(&self) -> Result<Status> {
        read_json(&self.status_path()).map(Option::unwrap_or_default)
    }

    /// The last status with what this boot tells settled into it (see `Status::reconcile_boot`).
    pub fn settled_status(&self) -> Result<Status> {
        let mut status = self.status()?;
        status.reconcile_boot(&booted_version(Path::new("/"))?);
        Ok(status)
    }

    pub fn write_status(&self, status: &Status) -> Result<()> {
        write_json(&self.status_path(), status)
    }

    /// Asks `hellasd update run` (through hellas-update.path) to do `request`.
    pub fn request(&self, request: &Request) -> Result<()> {
        write_json(&self.request_path(), request)
    }

    fn take_request(&self) -> Result<Option<Request>> {
        let path = self.request_path();
        let request = read_json(&path);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("removing {}", path.display())),
            _ => {}
        }
        request.with_context(|| format!("{} is not an update request; it was removed", path.display()))
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().expect("update files live in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    crate::state_file::write_atomically(path, &serde_json::to_vec_pretty(value)?)?;
    // The daemon (another user) reads what root writes here.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).with_context(|| format!("setting the mode of {}", path.display()))
}

/// The channel in force: the owner's setting, else the configured one. The owner's comes from a
/// file the daemon writes, and root writes it into the transfer files: it is checked again here.
pub fn channel(config: &Config) -> Result<String> {
    let settings = crate::owner::owner_store(&config.state_dir).load()?.settings;
    if let Err(why) = crate::owner::check_update_channel(&settings.update_channel) {
        bail!("refusing the update channel {:?} in the owner's settings: {why}", settings.update_channel);
    }
    Ok(if settings.update_channel.is_empty() { config.update.channel.clone() } else { settings.update_channel })
}

/// `IMAGE_VERSION` of the booted system.
pub fn booted_version(root: &Path) -> Result<String> {
    os_release_field(root, "IMAGE_VERSION")
}

/// `IMAGE_ID` and `IMAGE_VERSION` of the booted system: which release's files on the ESP are its.
pub fn booted_release(root: &Path) -> Result<(String, String)> {
    Ok((os_release_field(root, "IMAGE_ID")?, booted_version(root)?))
}

/// A field of `<root>/etc/os-release` (or `usr/lib/os-release`), where the image builder puts
/// `IMAGE_ID` and `IMAGE_VERSION`.
fn os_release_field(root: &Path, key: &str) -> Result<String> {
    for file in ["etc/os-release", "usr/lib/os-release"] {
        let path = root.join(file);
        if let Ok(text) = std::fs::read_to_string(&path) {
            if let Some(value) = text.lines().find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('='))) {
                return Ok(value.trim_matches('"').to_string());
            }
        }
    }
    bail!("os-release under {} names no {key}: this is not a Hellas image", root.display())
}

/// Compares versions as systemd does in spirit: runs of digits by value, the rest as text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn parts(v: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = v.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &v[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let order = match (x, y) {
            ((true, x), (true, y)) => x.trim_start_matches('0').len().cmp(&y.trim_start_matches('0').len()).then(x.trim_start_matches('0').cmp(y.trim_start_matches('0'))),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    pa.len().cmp(&pb.len())
}

/// What an install the box did not finish says.
const CUT_SHORT: &str = "cut short (the box lost power or was restarted); try again";

impl Status {
    /// Why `version` cannot be installed now, if it is not the release on offer.
    pub fn not_on_offer(&self, version: &str) -> Option<String> {
        if self.offered.as_deref() == Some(version) {
            return None;
        }
        let offers = self.offered.as_ref().map_or_else(|| "nothing newer".to_string(), Clone::clone);
        Some(format!("{version} is not the release on offer (the channel offers {offers}); check for updates again"))
    }

    /// Settles what the last boot tells: a pending release that is not the one booted was
    /// rolled back by systemd-boot; an install cut short (power loss) failed.
    pub fn reconcile_boot(&mut self, booted: &str) {
        self.booted = booted.to_string();
        if let Some(pending) = self.pending.clone() {
            if pending != booted {
                let reason = format!("{pending} did not pass its health check in its boot tries; the box went back to {booted}");
                self.rejected.retain(|r| r.version != pending);
                self.rejected.push(Rejected { version: pending.clone(), reason: reason.clone(), at: unix_now() });
                self.pending = None;
                self.last_result = Some(reason);
                self.phase = Phase::Idle;
            }
        }
        match &self.phase {
            Phase::Installing { version } => {
                // The outcome outlives the phase, which the boot's own check moves on from.
                self.last_result = Some(format!("installing {version} was {CUT_SHORT}"));
                self.interrupted = Some(version.clone());
                self.phase = Phase::Failed { action: format!("installing {version}"), error: CUT_SHORT.into() };
            }
            Phase::CopyingToDisk { disk } => {
                self.phase = Phase::Failed { action: format!("installing to {disk}"), error: CUT_SHORT.into() };
            }
            Phase::Rebooting { .. } | Phase::Checking => self.phase = Phase::Idle,
            _ => {}
        }
        self.offered = self.offer();
    }

    /// The health check passed on this boot: a pending release is now the good one.
    pub fn blessed(&mut self) {
        if self.pending.as_deref() == Some(self.booted.as_str()) {
            self.last_result = Some(format!("updated to {}", self.booted));
            self.pending = None;
        }
    }

    fn offer(&self) -> Option<String> {
        self.available
            .iter()
            .filter(|v| compare_versions(v, &self.booted) == Ordering::Greater)
            .filter(|v| !self.rejected.iter().any(|r| &r.version == *v))
            .max_by(|a, b| compare_versions(a, b))
            .cloned()
    }
}

/// `hellasd update run`, as root: settles the last boot, then does the owner's request, or
/// checks the channel when there is none (at boot). Every outcome is written to the status.
pub fn run(config: &Config, reboot: bool) -> Result<()> {
    let files = UpdateFiles::new(&config.state_dir);
    let mut status = files.settled_status()?;
    files.write_status(&status)?;
    match files.take_request() {
        Ok(Some(Request::Apply { version })) => apply(config, &files, &mut status, &version, reboot),
        Ok(Some(Request::Install { disk, keep_data })) => install_to_disk(config, &files, &mut status, &disk, keep_data),
        Ok(Some(Request::Check)) => check(config, &files, &mut status),
        // The check at boot: a channel that cannot be reached or read is the dashboard's news
        // (the status says why), not a failed unit that leaves the whole system degraded.
        Ok(None) => {
            if let Err(e) = check(config, &files, &mut status) {
                eprintln!("the check of the update channel failed: {e:#}");
            }
            Ok(())
        }
        Err(e) => {
            status.phase = Phase::Failed { action: "reading the request".into(), error: format!("{e:#}") };
            files.write_status(&status)?;
            Err(e)
        }
    }
}

/// Reads the channel (sysupdate verifies its signature) and records what it offers.
pub fn check(config: &Config, files: &UpdateFiles, status: &mut Status) -> Result<()> {
    let channel = channel(config)?;
    status.channel = channel.clone();
    if channel.is_empty() {
        status.phase = Phase::Idle;
        status.available.clear();
        status.offered = None;
        files.write_status(status)?;
        println!("no update channel is set (settings, or update.channel in the configuration)");
        return Ok(());
    }
    status.phase = Phase::Checking;
    files.write_status(status)?;
    match Sysupdate::new(config, &channel).and_then(|s| s.available()) {
        Ok(mut available) => {
            available.sort_by(|a, b| compare_versions(a, b));
            status.available = available;
            status.checked_at = Some(unix_now());
            status.offered = status.offer();
            status.phase = Phase::Idle;
            files.write_status(status)?;
            match &status.offered {
                Some(version) => println!("{version} is available (this box runs {})", status.booted),
                None => println!("up to date: {} (the channel has {})", status.booted, status.available.join(", ")),
            }
            Ok(())
        }
        Err(e) => {
            status.phase = Phase::Failed { action: format!("checking {channel}"), error: format!("{e:#}") };
            files.write_status(status)?;
            Err(e)
        }
    }
}

/// Installs `version` into the inactive slot and reboots into it.
pub fn apply(config: &Config, files: &UpdateFiles, status: &mut Status, version: &str, reboot: bool) -> Result<()> {
    // The version comes from a request the daemon writes; it becomes an argument of
    // systemd-sysupdate, run as root: only a version the channel offers, shaped as a version
    // (never an option), goes.
    let shaped = version.len() <= 64
        && version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+~^-".contains(&b));
    if !shaped || !status.available.iter().any(|v| v == version) {
        bail!("refusing to install {version:?}: the channel does not offer it (check for updates first)");
    }
    if let Some(rejected) = status.rejected.iter().find(|r| r.version == version) {
        let error = format!("{version} was rolled back before ({}); it is not applied again", rejected.reason);
        status.phase = Phase::Failed { action: format!("installing {version}"), error: error.clone() };
        files.write_status(status)?;
        bail!(error);
    }
    if compare_versions(version, &status.booted) != Ordering::Greater {
        bail!("{version} is not newer than the booted {}", status.booted);
    }
    let channel = channel(config)?;
    status.phase = Phase::Installing { version: version.to_string() };
    files.write_status(status)?;
    let result = Sysupdate::new(config, &channel).and_then(|s| {
        if status.interrupted.is_some() {
            // A slot half-written by a cut-short install must be emptied before it is written again.
            s.run(&["vacuum"])?;
        }
        s.run(&["update", version])
    });
    if let Err(e) = result {
        status.phase = Phase::Failed { action: format!("installing {version}"), error: format!("{e:#}") };
        files.write_status(status)?;
        return Err(e);
    }
    status.interrupted = None;
    status.pending = Some(version.to_string());
    status.phase = Phase::Rebooting { version: version.to_string() };
    files.write_status(status)?;
    println!("{version} is installed; rebooting into it");
    if reboot {
        let rebooted = Command::new("systemctl").arg("reboot").status().context("running systemctl reboot")?;
        anyhow::ensure!(rebooted.success(), "`systemctl reboot` failed ({rebooted})");
    }
    Ok(())
}

/// Copies the running system to an internal disk; the owner then removes the stick and reboots.
fn install_to_disk(config: &Config, files: &UpdateFiles, status: &mut Status, disk: &str, keep_data: bool) -> Result<()> {
    status.phase = Phase::CopyingToDisk { disk: disk.to_string() };
    files.write_status(status)?;
    let result = crate::update::install::install(disk, keep_data, &config.web.runtime_dir);
    status.phase = match &result {
        Ok(()) => {
            status.last_result = Some(format!("installed to {disk}: remove the stick and restart the box"));
            Phase::Idle
        }
        Err(e) => Phase::Failed { action: format!("installing to {disk}"), error: format!("{e:#}") },
    };
    files.write_status(status)?;
    result
}

/// systemd-sysupdate with this channel's transfer definitions.
struct Sysupdate {
    binary: PathBuf,
    definitions: PathBuf,
}

impl Sysupdate {
    fn new(config: &Config, channel: &str) -> Result<Sysupdate> {
        let definitions = config.web.runtime_dir.join("sysupdate.d");
        transfers::write(&definitions, &os_release_field(Path::new("/"), "IMAGE_ID")?, channel, config.update.boot_tries)?;
        Ok(Sysupdate { binary: config.update.sysupdate.clone(), definitions })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg(format!("--definitions={}", self.definitions.display())).args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        run_logged(&mut self.command(args), &format!("systemd-sysupdate {}", args.join(" ")))
    }

    /// The versions the channel offers, from `list --offline=no --json=short`.
    fn available(&self) -> Result<Vec<String>> {
        let output = self.command(&["--json=short", "list"]).output().with_context(|| format!("running {}", self.binary.display()))?;
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            bail!("`systemd-sysupdate list` failed ({}): {}", output.status, last_lines(&output.stderr, 3));
        }
        parse_list(&output.stdout)
    }
}

/// The available versions in sysupdate's `list --json` answer.
fn parse_list(stdout: &[u8]) -> Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_slice(stdout).with_context(|| format!("parsing systemd-sysupdate's list: {}", String::from_utf8_lossy(stdout)))?;
    let all = value["all"].as_array().with_context(|| format!("systemd-sysupdate's list has no \"all\": {value}"))?;
    Ok(all.iter().filter_map(|v| v.as_str().map(String::from)).collect())
}

/// Runs a system tool with its output going to ours (the journal), failing with its last lines.
pub(crate) fn run_logged(command: &mut Command, what: &str) -> Result<()> {
    let output = command.output().with_context(|| format!("running {what}"))?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!("`{what}` failed ({}): {}", output.status, last_lines(&output.stderr, 3));
    }
    Ok(())
}

fn last_lines(text: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_offered_version_shaped_as_one_is_installed() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { state_dir: dir.path().to_path_buf(), ..Config::default() };
        let files = UpdateFiles::new(dir.path());
        let mut status = Status { booted: "0.1.0".into(), available: vec!["0.1.0".into(), "--definitions=/tmp/x".into()], ..Status::default() };
        for version in ["--definitions=/tmp/x", "0.2.0"] {
            let refused = apply(&config, &files, &mut status, version, false).unwrap_err();
            assert!(format!("{refused:#}").contains("does not offer it"), "{version}: {refused:#}");
        }
    }

    #[test]
    fn a_channel_that_would_write_more_than_a_path_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config { state_dir: dir.path().to_path_buf(), ..Config::default() };
        let owner = crate::owner::owner_store(dir.path());
        let with = |channel: &str| crate::owner::Settings { update_channel: channel.into(), ..Default::default() };
        owner.update_settings(with("https://updates.example/hellas")).unwrap();
        assert_eq!(channel(&config).unwrap(), "https://updates.example/hellas");
        // As an exploited daemon could write it: a line break that adds a [Source] to the transfer files.
        owner.update_settings(with("https://updates.example/\n[Source]\nPath=/")).unwrap();
        let refused = channel(&config).unwrap_err();
        assert!(format!("{refused:#}").contains("refusing the update channel"), "{refused:#}");
    }

    #[test]
    fn versions_compare_by_number() {
        assert_eq!(compare_versions("0.10.0", "0.9.1"), Ordering::Greater);
        assert_eq!(compare_versions("0.2.0", "0.2.0"), Ordering::Equal);
        assert_eq!(compare_versions("0.2.0", "0.2.0.1"), Ordering::Less);
        assert_eq!(compare_versions("1.0", "0.99"), Ordering::Greater);
    }

    fn status(booted: &str, available: &[&str]) -> Status {
        let mut status = Status { available: available.iter().map(|v| v.to_string()).collect(), ..Status::default() };
        status.reconcile_boot(booted);
        status
    }

    #[test]
    fn offers_the_newest_newer_release() {
        assert_eq!(status("0.1.0", &["0.1.0", "0.3.0", "0.2.0"]).offered.as_deref(), Some("0.3.0"));
        assert_eq!(status("0.3.0", &["0.1.0", "0.3.0"]).offered, None);
    }

    #[test]
    fn a_rolled_back_release_is_rejected_until_a_newer_one_appears() {
        let mut s = status("0.2.0", &["0.2.0", "0.3.0"]);
        s.pending = Some("0.3.0".into());
        s.phase = Phase::Rebooting { version: "0.3.0".into() };
        // systemd-boot went back to 0.2.0: the tries of 0.3.0 ran out.
        s.reconcile_boot("0.2.0");
        assert_eq!(s.pending, None);
        assert_eq!(s.phase, Phase::Idle);
        assert_eq!(s.rejected.len(), 1);
        assert_eq!(s.offered, None, "0.3.0 must not be offered again");
        assert!(s.last_result.as_deref().unwrap().contains("went back to 0.2.0"));
        s.available.push("0.4.0".into());
        s.reconcile_boot("0.2.0");
        assert_eq!(s.offered.as_deref(), Some("0.4.0"));
    }

    #[test]
    fn the_pending_release_is_good_once_blessed() {
        let mut s = status("0.1.0", &["0.2.0"]);
        s.pending = Some("0.2.0".into());
        s.reconcile_boot("0.2.0");
        assert_eq!(s.pending.as_deref(), Some("0.2.0"), "still on trial until the health check passes");
        s.blessed();
        assert_eq!(s.pending, None);
        assert_eq!(s.last_result.as_deref(), Some("updated to 0.2.0"));
        assert!(s.rejected.is_empty());
    }

    #[test]
    fn an_install_cut_short_is_a_failure() {
        let mut s = status("0.2.0", &["0.3.0"]);
        s.phase = Phase::Installing { version: "0.3.0".into() };
        s.reconcile_boot("0.2.0");
        assert!(matches!(&s.phase, Phase::Failed { action, .. } if action == "installing 0.3.0"), "{:?}", s.phase);
        assert_eq!(s.interrupted.as_deref(), Some("0.3.0"), "the half-written slot is emptied before the next install");
        assert!(s.last_result.as_deref().unwrap().contains("cut short"), "{:?}", s.last_result);
        assert_eq!(s.offered.as_deref(), Some("0.3.0"), "it may be tried again");
    }

    #[test]
    fn requests_round_trip_and_are_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let files = UpdateFiles::new(dir.path());
        files.request(&Request::Apply { version: "0.2.0".into() }).unwrap();
        assert_eq!(files.take_request().unwrap(), Some(Request::Apply { version: "0.2.0".into() }));
        assert_eq!(files.take_request().unwrap(), None);
        std::fs::write(files.request_path(), "garbage").unwrap();
        assert!(files.take_request().is_err());
        assert!(!files.request_path().exists(), "a bad request is not retried forever");
    }

    #[test]
    fn sysupdate_list_json_is_read() {
        let versions = parse_list(br#"{"current":"0.1.0","all":["0.2.0","0.1.0"],"appstreamUrls":[]}"#).unwrap();
        assert_eq!(versions, vec!["0.2.0", "0.1.0"]);
        assert!(parse_list(b"not json").is_err());
    }
}
