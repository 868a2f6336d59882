//! The cache directory, `$HELLAS_CACHE` (default `~/.cache/hellas`). Its layout is a
//! contract with the tests, which find the engine and models through the same variable:
//!
//! - `engine/tree/`   Debian root tree holding llama.cpp (`cargo xtask engine`)
//! - `engine/bin/`    launchers for the tree's binaries, runnable on this host
//! - `engine/stamp`   sha256 of the inputs that made the tree
//! - `models/`        test models (`cargo xtask models`)
//! - `pip/`, `apt/`   downloaded wheels and .debs, so reruns stay offline
//! - `python/`        the Python clients the tests drive (`xtask/src/python.rs`)
//! - `agents/`, `open-webui/`  the clients `cargo xtask clients` drives
//!
//! Everything is written under a temporary name and renamed into place, so a final name
//! never holds a half-written file or tree.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::{env, fs, process};

use anyhow::{bail, Context, Result};

pub fn root() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("HELLAS_CACHE").filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        if dir.is_relative() {
            bail!(
                "HELLAS_CACHE must be an absolute path, got {}",
                dir.display()
            );
        }
        return Ok(dir);
    }
    let home = env::var_os("HOME").context("neither HELLAS_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/hellas"))
}

/// A sibling of `path` to build it under before renaming it into place: `.NAME.tmp-PID`.
/// The PID lets `remove_stale` tell a crashed run's leftovers from a live run's.
pub fn temp_path(path: &Path, kind: &str) -> PathBuf {
    let mut name = OsString::from(".");
    name.push(path.file_name().expect("cache paths have a file name"));
    name.push(format!(".{kind}-{}", process::id()));
    path.with_file_name(name)
}

/// Removes the `temp_path`s of `path` left behind by runs that are no longer alive.
pub fn remove_stale(path: &Path) -> Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(());
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = entry_name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest
            .rsplit('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let stale = entry.path();
        println!(
            "==> removing {} (left by an interrupted run)",
            stale.display()
        );
        remove_any(&stale)?;
    }
    Ok(())
}

/// Puts the directory `new` at `path`, replacing what was there. Rename cannot replace a
/// non-empty directory, so the old one is renamed aside first and removed after.
pub fn replace_dir(new: &Path, path: &Path) -> Result<()> {
    let old = temp_path(path, "old");
    let had_old = path.exists();
    if had_old {
        fs::rename(path, &old)
            .with_context(|| format!("moving {} aside to {}", path.display(), old.display()))?;
    }
    fs::rename(new, path)
        .with_context(|| format!("renaming {} to {}", new.display(), path.display()))?;
    if had_old {
        remove_any(&old)?;
    }
    Ok(())
}

/// Writes `contents` to `path` (mode `mode`) unless it already holds exactly that.
/// Returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &[u8], mode: u32) -> Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let current_mode = fs::metadata(path).map(|meta| meta.permissions().mode() & 0o7777);
    if current_mode.ok() == Some(mode) && fs::read(path).ok().as_deref() == Some(contents) {
        return Ok(false);
    }
    let temp = temp_path(path, "tmp");
    fs::write(&temp, contents).with_context(|| format!("writing {}", temp.display()))?;
    fs::set_permissions(&temp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", temp.display()))?;
    fs::rename(&temp, path)
        .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))?;
    Ok(true)
}

pub fn remove_any(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    result.with_context(|| format!("removing {}", path.display()))
}

/// Installs the packages `pins` into the directory `dir` with `install` (given the staging
/// directory to fill) unless `dir` already holds exactly these pins. The directory is filled
/// under a temporary name and renamed into place with its `pins.txt` written last, so an
/// interrupted install is started again rather than taken for a whole one.
pub fn install_pinned(dir: &Path, pins: &[&str], install: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let stamp = pins.join("\n") + "\n";
    if fs::read_to_string(dir.join("pins.txt")).ok().as_deref() == Some(stamp.as_str()) {
        println!("==> {}: up to date", dir.display());
        return Ok(());
    }
    remove_stale(dir)?;
    let staging = temp_path(dir, "tmp");
    println!("==> installing {} into {}", pins.join(" "), dir.display());
    let result = install(&staging)
        .and_then(|_| fs::write(staging.join("pins.txt"), &stamp).with_context(|| format!("writing {}/pins.txt", staging.display())))
        .and_then(|_| replace_dir(&staging, dir));
    if result.is_err() {
        remove_any(&staging)?;
    }
    result
}
