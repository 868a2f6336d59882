//! The boot's health check (`hellasd health`, run by hellas-health.service before
//! boot-complete.target): a boot is good only when hellasd answers on its API port and the engine
//! starts (llama-server loads its backends and lists the devices it would run on), and, on a box
//! whose engines belong on its GPU (`engine.expect_gpu`, by default when it has an AMD GPU), when
//! one of those devices is a GPU: a release whose GPU stack is broken rolls back by itself.
//!
//! systemd-bless-boot marks the booted UKI good only after boot-complete.target, so a release
//! that fails here keeps its boot-counting tries running down; on a boot that is on trial the
//! check reboots at once, and once the tries are used up systemd-boot starts the previous release.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::update;

/// systemd-boot sets this EFI variable when the booted entry counts its tries.
const BOOT_COUNT_VARIABLE: &str = "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";
/// How long the engine may take to list its devices.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(clap::Args)]
pub struct HealthArgs {
    /// On failure, reboot when this boot is on trial, so its tries run out and the previous
    /// release comes back.
    #[arg(long)]
    pub reboot_on_failure: bool,
}

pub fn run(args: &HealthArgs, config: &Config) -> Result<()> {
    match check(config) {
        Ok(()) => {
            println!("healthy: hellasd answers and the engine starts");
            let files = update::UpdateFiles::new(&config.state_dir);
            let mut status = files.settled_status()?;
            status.blessed();
            files.write_status(&status)
        }
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            if args.reboot_on_failure && Path::new(BOOT_COUNT_VARIABLE).exists() {
                eprintln!("this boot is on trial: rebooting, so that its tries run out");
                let _ = Command::new("systemctl").arg("reboot").status();
            }
            Err(e)
        }
    }
}

fn check(config: &Config) -> Result<()> {
    wait_for_api(config)?;
    let devices = engine_starts(&config.engine.llama_server)?;
    if crate::memory_budget::engines_on_gpu(&config.engine) && gpu_devices(&devices).is_empty() {
        bail!("this box has a GPU but the engine lists none (it would run on the CPU, ten times slower): `{} --list-devices` printed {:?}", config.engine.llama_server.display(), devices.trim());
    }
    Ok(())
}

/// The GPU devices in `llama-server --list-devices` output, whose lines read
/// `  Vulkan0: Radeon 8060S Graphics (RADV GFX1151) (98304 MiB, 97000 MiB free)`.
fn gpu_devices(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|line| line.trim().split_once(':'))
        .filter(|(name, _)| crate::engine::is_gpu_device(name))
        .map(|(_, description)| description.trim())
        .collect()
}

fn wait_for_api(config: &Config) -> Result<()> {
    let mut address = config.api.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let deadline = Instant::now() + Duration::from_secs(config.update.health_timeout_secs);
    loop {
        match get_health(address) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => bail!("hellasd does not answer GET http://{address}/health after {} s: {e:#}", config.update.health_timeout_secs),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// One `GET /health`, answered 200.
fn get_health(address: std::net::SocketAddr) -> Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5)).context("connecting")?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET /health HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).context("reading the answer")?;
    let status = String::from_utf8_lossy(&head[9..12]).into_owned();
    anyhow::ensure!(status == "200", "answered {status}");
    Ok(())
}

/// Runs `llama-server --list-devices`; returns what it printed.
fn engine_starts(llama_server: &Path) -> Result<String> {
    let mut child = Command::new(llama_server)
        .arg("--list-devices")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the engine {}", llama_server.display()))?;
    let deadline = Instant::now() + ENGINE_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("waiting for the engine")? {
            let output = child.wait_with_output().context("reading the engine's output")?;
            if !status.success() {
                bail!("`{} --list-devices` failed ({status}): {}", llama_server.display(), String::from_utf8_lossy(&output.stderr).trim());
            }
            let listing = String::from_utf8_lossy(&output.stdout).into_owned();
            print!("{listing}");
            return Ok(listing);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("`{} --list-devices` did not finish in {} s", llama_server.display(), ENGINE_TIMEOUT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_are_found_in_the_device_listing() {
        // Forky's llama-server on a machine without a GPU, and with Strix Halo's Radeon (the
        // device line as llama.cpp prints it: name, description, total and free MiB).
        assert!(gpu_devices("Available devices:\n  (none)\n").is_empty());
        let strix = "Available devices:\n  Vulkan0: Radeon 8060S Graphics (RADV GFX1151) (98304 MiB, 97000 MiB free)\n";
        assert_eq!(gpu_devices(strix), ["Radeon 8060S Graphics (RADV GFX1151) (98304 MiB, 97000 MiB free)"]);
        assert!(gpu_devices("Available devices:\n  RPC0: 10.0.0.2:50052 (1024 MiB, 1024 MiB free)\n").is_empty());
    }
}
