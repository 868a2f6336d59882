//! Puts the decided kernel parameters where the next boot takes them, without rebuilding the
//! image: a boot loader entry (Boot Loader Specification type #1) on the ESP that boots the
//! booted release's unified kernel image (named by its `IMAGE_ID` and `IMAGE_VERSION`, never
//! guessed from the files there, so after an A/B update it is the new release's) with the
//! running command line plus the parameters. Its version, `<IMAGE_VERSION>^tuned`, is what
//! places it: systemd-boot orders entries of one sort key by version, newest first, and in
//! its version order a `^` segment is a patch of the release (newer than `0.1.0`, the release's
//! own UKI) but older than any later release (`0.1.0.1`, `0.2.0`), so an update boots the new
//! release, untuned, until its good boot writes its own tuned entry. (A `+tuned` suffix would
//! beat every later release: systemd drops the `+` and an unprefixed segment is the newest; the
//! QEMU update test caught that.) Its name carries boot counting (`+3`), so a tuned boot that
//! fails three times is marked bad and the untuned entry boots again. The running
//! entry is never edited, and a second apply with nothing new changes nothing.
//!
//! Without Secure Boot, systemd-stub lets the loader's command line replace the one inside the
//! UKI. With Secure Boot it does not, and `hellasd tune status` then reports the parameters as
//! not taken.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use hellas_contract::release;

use crate::state_file::write_atomically;

const ENTRY_PREFIX: &str = "hellas-tuned";
const TRIES: u32 = 3;
/// Parameters this tool owns: dropped from the running command line before its own are added.
const OWNED: &[&str] = &["ttm.pages_limit=", "ttm.page_pool_size=", "amdgpu.gttsize=", "amd_iommu=", "BOOT_IMAGE=", "initrd="];

#[derive(Debug, PartialEq)]
pub enum Applied {
    Written(PathBuf),
    Unchanged(PathBuf),
}

/// Writes (or keeps) the tuned entry under `esp` for the booted release (`image_name`,
/// `image_version`) and the running `cmdline` plus `parameters`.
pub fn apply(esp: &Path, cmdline: &str, parameters: &[String], image_name: &str, image_version: &str) -> Result<Applied> {
    let uki = booted_uki(esp, image_name, image_version)?;
    let mut options: Vec<&str> = cmdline.split_whitespace().filter(|w| !OWNED.iter().any(|o| w.starts_with(o))).collect();
    options.extend(parameters.iter().map(String::as_str));
    let text = format!(
        "title Hellas {image_version} (memory tuned)\nsort-key {image_name}\nversion {image_version}^tuned\nuki /EFI/Linux/{uki}\noptions {}\n",
        options.join(" ")
    );
    let entries = esp.join("loader/entries");
    let existing = existing_entries(&entries)?;
    // The same entry, whatever its counter says now (`+3`, `+1-2`, or blessed without one).
    if let Some(same) = existing.iter().find(|p| fs::read_to_string(p).is_ok_and(|t| t == text)) {
        return Ok(Applied::Unchanged(same.clone()));
    }
    fs::create_dir_all(&entries).with_context(|| format!("creating {}", entries.display()))?;
    let path = entries.join(format!("{ENTRY_PREFIX}+{TRIES}.conf"));
    write_atomically(&path, text.as_bytes())?;
    for old in existing.into_iter().filter(|p| *p != path) {
        fs::remove_file(&old).with_context(|| format!("removing the outdated {}", old.display()))?;
    }
    Ok(Applied::Written(path))
}

fn existing_entries(entries: &Path) -> Result<Vec<PathBuf>> {
    let Ok(dir) = fs::read_dir(entries) else { return Ok(Vec::new()) };
    let mut found = Vec::new();
    for entry in dir {
        let path = entry.with_context(|| format!("listing {}", entries.display()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(ENTRY_PREFIX) && name.ends_with(".conf") {
            found.push(path);
        }
    }
    Ok(found)
}

/// The booted release's UKI once this boot has been marked good: its file name then has no
/// `+tries` left to change, so an entry can name it.
fn booted_uki(esp: &Path, image_name: &str, image_version: &str) -> Result<String> {
    let dir = esp.join("EFI/Linux");
    let names: Vec<String> = fs::read_dir(&dir)
        .with_context(|| format!("reading {} (is the ESP mounted there? pass --esp)", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let blessed = release::uki_file(image_name, image_version);
    if names.contains(&blessed) {
        return Ok(blessed);
    }
    let counting = format!("{}+", blessed.trim_end_matches(".efi"));
    if let Some(name) = names.iter().find(|n| n.starts_with(&counting)) {
        bail!("the booted release's image {}/{name} is still counting boots: tuning waits until this boot is marked good", dir.display());
    }
    bail!("{} holds no image of the booted release {image_name} {image_version} ({blessed}); found: {}", dir.display(), names.join(", "))
}
