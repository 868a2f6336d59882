//! Host packages the other verbs run. Each is probed by what we actually call (a command
//! on PATH, `python3 -m pip`), so a pip from pyenv counts as well as Debian's. Missing ones
//! are installed with apt-get when we are root; otherwise we stop and say what to run.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::{env, fs};

use anyhow::{bail, Context, Result};
use duct::cmd;
use hellas_system_tests::vm;

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

/// QEMU 8 or newer boots our images; bookworm's own 7.2 counts as missing.
pub const QEMU: HostPackage = HostPackage {
    name: "qemu-system-x86",
    present: || qemu_major_version().is_some_and(|major| major >= 8),
};
/// `qemu-img`, which puts the overlay under a booted image.
pub const QEMU_IMG: HostPackage = HostPackage {
    name: "qemu-utils",
    present: || on_path(vm::QEMU_IMG),
};
pub const OVMF: HostPackage = HostPackage {
    name: "ovmf",
    present: || Path::new(vm::OVMF_CODE).is_file() && Path::new(vm::OVMF_VARS).is_file(),
};

/// `mcopy`, which writes the seed file into a flashed stick's ESP.
pub const MTOOLS: HostPackage = HostPackage {
    name: "mtools",
    present: || on_path("mcopy"),
};
/// A C++ compiler, which builds libFuzzer for the GGUF reader's fuzz target (`cargo xtask fuzz`).
pub const GXX: HostPackage = HostPackage {
    name: "g++",
    present: || on_path("g++"),
};
/// `gpg`, which makes the development signing key and signs release channels.
pub const GNUPG: HostPackage = HostPackage {
    name: "gpg",
    present: || on_path("gpg"),
};
/// `ip` and `nft`, with which the cluster test builds its network namespaces and hellasd fences
/// the RPC port.
pub const IPROUTE2: HostPackage = HostPackage {
    name: "iproute2",
    present: || on_path("ip"),
};
pub const NFTABLES: HostPackage = HostPackage {
    name: "nftables",
    present: || on_path("nft"),
};
/// The browser the web setup tests drive, and its WebDriver.
pub const CHROMIUM: HostPackage = HostPackage {
    name: "chromium",
    present: || on_path("chromium"),
};
pub const CHROMEDRIVER: HostPackage = HostPackage {
    name: "chromium-driver",
    present: || on_path("chromedriver"),
};

/// The package manager `cargo xtask clients` installs the agent CLIs with.
pub const NPM: HostPackage = HostPackage {
    name: "npm",
    present: || on_path("npm"),
};

pub const ALL: &[HostPackage] = &[MMDEBSTRAP, UNZIP, PIP, ZSTD, QEMU, QEMU_IMG, OVMF, CHROMIUM, CHROMEDRIVER, MTOOLS, GNUPG, IPROUTE2, NFTABLES, GXX];

/// Installed from bookworm-backports on bookworm, whose own QEMU is too old.
const BACKPORTED_ON_BOOKWORM: &[&str] = &["qemu-system-x86", "qemu-utils", "ovmf"];

pub fn ensure(packages: &[HostPackage]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|package| !(package.present)())
        .map(|package| package.name)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let codename = os_codename();
    let needs_backports = codename == "bookworm" && missing.iter().any(|name| BACKPORTED_ON_BOOKWORM.contains(name));
    if needs_backports && !has_bookworm_backports() && running_as_root() {
        add_bookworm_backports()?;
    }
    let installs = install_commands(&missing, &codename, has_bookworm_backports())?;
    let install = installs
        .iter()
        .map(|args| format!("apt-get {}", args.join(" ")))
        .collect::<Vec<_>>()
        .join(" && sudo ");
    if !running_as_root() {
        bail!("missing host packages; run: sudo apt-get update && sudo {install}");
    }
    println!("==> deps: installing {}", missing.join(" "));
    cmd!("apt-get", "update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin_null()
        .run()
        .context("`apt-get update` failed")?;
    for args in &installs {
        duct::cmd("apt-get", args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin_null()
            .run()
            .with_context(|| format!("`apt-get {}` failed", args.join(" ")))?;
    }
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

/// The `apt-get` argument lists that install `missing` on a host running Debian `codename`.
fn install_commands<'a>(
    missing: &[&'a str],
    codename: &str,
    has_backports: bool,
) -> Result<Vec<Vec<&'a str>>> {
    let (backported, plain): (Vec<&str>, Vec<&str>) = missing
        .iter()
        .partition(|name| codename == "bookworm" && BACKPORTED_ON_BOOKWORM.contains(name));
    let mut commands = Vec::new();
    if !plain.is_empty() {
        commands.push([&["install", "-y", "--no-install-recommends"][..], &plain].concat());
    }
    if !backported.is_empty() {
        if !has_backports {
            bail!("{} need bookworm-backports on bookworm, and apt has no source for it: add one (e.g. /etc/apt/sources.list.d/bookworm-backports.sources with `Suites: bookworm-backports` and the URIs of your bookworm source), then rerun", backported.join(", "));
        }
        let options = [
            "install",
            "-y",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
        ];
        commands.push([&options[..], &backported].concat());
    }
    Ok(commands)
}

/// VERSION_CODENAME from os-release ("bookworm"), or "" when there is none.
fn os_codename() -> String {
    let release = fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|name| name.trim_matches('"').to_string())
        .unwrap_or_default()
}

/// Adds bookworm-backports with the URIs and keyring of the host's own bookworm source, so no
/// mirror is named here and the host's choice of mirror is kept.
fn add_bookworm_backports() -> Result<()> {
    let path = Path::new("/etc/apt/sources.list.d/debian.sources");
    let text = fs::read_to_string(path).with_context(|| format!("reading {} to add bookworm-backports", path.display()))?;
    let stanza = text
        .split("\n\n")
        .find(|s| s.lines().any(|l| l.starts_with("Suites:") && l.split_whitespace().any(|w| w == "bookworm")))
        .with_context(|| format!("{} has no bookworm stanza to derive bookworm-backports from", path.display()))?;
    let derived: Vec<String> = stanza
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| if l.starts_with("Suites:") { "Suites: bookworm-backports".to_string() } else { l.to_string() })
        .collect();
    let out = Path::new("/etc/apt/sources.list.d/bookworm-backports.sources");
    println!("==> deps: adding {} (from {})", out.display(), path.display());
    fs::write(out, derived.join("\n") + "\n").with_context(|| format!("writing {}", out.display()))
}

/// Whether an apt source names bookworm-backports.
fn has_bookworm_backports() -> bool {
    let mut files = vec![Path::new("/etc/apt/sources.list").to_path_buf()];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(entries.flatten().map(|entry| entry.path()));
    }
    files.iter().any(|file| {
        let ours = file
            .extension()
            .is_some_and(|ext| ext == "list" || ext == "sources");
        ours && fs::read_to_string(file).is_ok_and(|text| {
            text.lines().any(|line| {
                !line.trim_start().starts_with('#') && line.contains("bookworm-backports")
            })
        })
    })
}

/// The major version `qemu-system-x86_64 --version` reports.
fn qemu_major_version() -> Option<u32> {
    let output = cmd!(vm::QEMU, "--version")
        .stdout_capture()
        .stderr_null()
        .stdin_null()
        .unchecked()
        .run()
        .ok()?;
    parse_qemu_major_version(&String::from_utf8_lossy(&output.stdout))
}

/// "QEMU emulator version 10.0.2 (Debian ...)" -> 10.
fn parse_qemu_major_version(text: &str) -> Option<u32> {
    let version = text.split("version ").nth(1)?;
    version.split('.').next()?.trim().parse().ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_versions_parse() {
        let debian =
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright";
        assert_eq!(parse_qemu_major_version(debian), Some(10));
        assert_eq!(
            parse_qemu_major_version("QEMU emulator version 7.2.15"),
            Some(7)
        );
        assert_eq!(parse_qemu_major_version("no version here"), None);
    }

    #[test]
    fn qemu_comes_from_backports_on_bookworm_only() {
        let missing = ["mmdebstrap", "qemu-system-x86", "ovmf"];
        assert_eq!(
            install_commands(&missing, "bookworm", true).unwrap(),
            vec![
                vec!["install", "-y", "--no-install-recommends", "mmdebstrap"],
                vec![
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "-t",
                    "bookworm-backports",
                    "qemu-system-x86",
                    "ovmf"
                ],
            ]
        );
        assert!(install_commands(&missing, "bookworm", false).is_err());
        assert_eq!(
            install_commands(&missing, "trixie", false).unwrap(),
            vec![vec![
                "install",
                "-y",
                "--no-install-recommends",
                "mmdebstrap",
                "qemu-system-x86",
                "ovmf"
            ]]
        );
    }
}
