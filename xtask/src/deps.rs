//! Host packages the other verbs run. Each is probed by what we actually call (a command
//! on PATH, `python3 -m pip`), so a pip from pyenv counts as well as Debian's. Missing ones
//! are installed with apt-get when we are root; otherwise we stop and say what to run.

use std::os::unix::fs::MetadataExt;
use std::{env, fs};

use anyhow::{bail, Context, Result};
use duct::cmd;

pub struct HostPackage {
    name: &'static str,
    present: fn() -> bool,
}

pub const MMDEBSTRAP: HostPackage = HostPackage {
    name: "mmdebstrap",
    present: || on_path("mmdebstrap"),
};
pub const UNZIP: HostPackage = HostPackage {
    name: "unzip",
    present: || on_path("unzip"),
};
pub const PIP: HostPackage = HostPackage {
    name: "python3-pip",
    present: pip_works,
};

pub const ZSTD: HostPackage = HostPackage {
    name: "zstd",
    present: || on_path("zstd"),
};

pub const ALL: &[HostPackage] = &[MMDEBSTRAP, UNZIP, PIP, ZSTD];

pub fn ensure(packages: &[HostPackage]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|package| !(package.present)())
        .map(|package| package.name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !running_as_root() {
        bail!("missing host packages; run: sudo apt-get update && sudo {install}");
    }
    println!("==> deps: installing {}", missing.join(" "));
    cmd!("apt-get", "update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin_null()
        .run()
        .context("`apt-get update` failed")?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    duct::cmd("apt-get", &args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin_null()
        .run()
        .with_context(|| format!("`{install}` failed"))?;
    let still: Vec<&str> = packages
        .iter()
        .filter(|package| !(package.present)())
        .map(|package| package.name)
        .collect();
    if !still.is_empty() {
        bail!(
            "`{install}` succeeded but these are still not usable: {}",
            still.join(" ")
        );
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    let Some(path) = env::var_os("PATH") else {
        return false;
    };
    env::split_paths(&path).any(|dir| dir.join(program).is_file())
}

fn pip_works() -> bool {
    cmd!("python3", "-m", "pip", "--version")
        .stdout_null()
        .stderr_null()
        .stdin_null()
        .unchecked()
        .run()
        .is_ok_and(|output| output.status.success())
}

/// The owner of `/proc/self` is our effective uid; this spares a libc dependency.
fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}
