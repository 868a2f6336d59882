//! Steps 3 and 4: the image's root assembled from the root tree, the overlay and hellasd, then
//! normalised so that the same inputs give the same bytes and no per-device secret ships.
//!
//! `rootfs-overlay/` is laid over every image and `image/profiles/<profile>/overlay/` over that
//! profile's; files ending in `.hbs` are rendered with handlebars from the spec (without the
//! suffix), the rest copied as they are. The units the overlays' preset files name are enabled or
//! disabled as those files say. `/var` is moved out to become the data partition.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use duct::cmd;
use serde_json::Value;

use super::step::Progress;
use super::tools::ToolsTree;

/// The staged root is `work/root`; this is what else the step produced.
pub struct Staged {
    /// The data partition's contents (the image's /var).
    pub data: PathBuf,
}

pub struct OverlayInputs<'a> {
    pub rootfs: &'a Path,
    pub overlays: Vec<PathBuf>,
    pub context: &'a Value,
    pub hellasd: &'a Path,
    pub models: Vec<(String, PathBuf)>,
    /// The release signing key's public half: the only key sysupdate trusts.
    pub keyring: &'a [u8],
    pub source_date_epoch: u64,
    /// When the root tree's build started: files newer than that (or than the epoch) were made
    /// by the build, and their times are not the packages'.
    pub rootfs_started: u64,
}

pub fn stage(work: &Path, inputs: &OverlayInputs, tools: &ToolsTree, progress: &Progress) -> Result<Staged> {
    let root = work.join("root");
    let data = work.join("data");
    progress.run("copying the root tree", cmd!("cp", "-a", "--reflink=auto", inputs.rootfs, &root))?;
    let handlebars = super::step::handlebars();
    for overlay in &inputs.overlays {
        lay(overlay, overlay, &root, &handlebars, inputs.context)?;
    }
    let bin = root.join("usr/bin/hellasd");
    fs::copy(inputs.hellasd, &bin).with_context(|| format!("installing {} as {}", inputs.hellasd.display(), bin.display()))?;

    // Accounts and enabled units are decided now: /etc is read-only on the device.
    progress.run("systemd-sysusers", tools.command(work, "systemd-sysusers", &["--root=/work/root".into()]))?;
    // Only the units the overlays' presets name: `preset-all` would also reset every unit of
    // the Debian packages that no preset names, and enable them all (the default policy).
    let units = preset_units(&inputs.overlays, &root)?;
    if !units.is_empty() {
        let mut preset: Vec<OsString> = vec!["--root=/work/root".into(), "preset".into()];
        preset.extend(units.iter().map(OsString::from));
        progress.run("systemctl preset", tools.command(work, "systemctl", &preset))?;
    }

    // systemd-gpt-auto-generator mounts the ESP at /boot (empty in the root partition: the
    // kernel and initrd are in the UKI), where the seed, hellas-tune and sysupdate find it.
    // The login prompts show this boot's claim code, which hellasd writes under /run.
    let issue = root.join("etc/issue.d");
    fs::create_dir_all(&issue).with_context(|| format!("creating {}", issue.display()))?;
    std::os::unix::fs::symlink("/run/hellas/claim.issue", issue.join("50-hellas.issue")).context("linking the claim code's issue file")?;
    // Below it, the box's status screen (hellasd's status_screen).
    std::os::unix::fs::symlink("/run/hellas/status.issue", issue.join("60-hellas-status.issue")).context("linking the status screen's issue file")?;

    let keyring = root.join("usr/lib/systemd/import-pubring.pgp");
    fs::write(&keyring, inputs.keyring).with_context(|| format!("writing the release key to {}", keyring.display()))?;

    let os_release = root.join("usr/lib/os-release");
    let mut text = fs::read_to_string(&os_release).with_context(|| format!("reading {}", os_release.display()))?;
    let image = &inputs.context["image"];
    text.push_str(&format!("IMAGE_ID={}\nIMAGE_VERSION={}\n", image["name"].as_str().unwrap_or("hellas"), image["version"].as_str().unwrap_or("0")));
    fs::write(&os_release, text).with_context(|| format!("writing {}", os_release.display()))?;

    for (name, file) in &inputs.models {
        progress.run(
            &format!("placing model {name}"),
            cmd!(inputs.hellasd, "--no-system-config", "--state-dir", root.join("var/lib/hellas"), "models", "add", file, "--name", name),
        )?;
    }
    let made_after = inputs.rootfs_started.min(inputs.source_date_epoch);
    normalise(&root, made_after, inputs.source_date_epoch, progress)?;
    // /var becomes the data partition; the root keeps an empty /var to mount it on.
    fs::rename(root.join("var"), &data).context("moving /var out to the data partition")?;
    fs::create_dir(root.join("var")).context("recreating /var")?;
    clamp_mtimes(&root, made_after, inputs.source_date_epoch, progress)?;
    Ok(Staged { data })
}

/// Where overlays put systemd preset files.
const PRESET_DIR: &str = "usr/lib/systemd/system-preset";

/// The units named by the preset files the overlays lay into `root`, read as laid (a later
/// overlay's file of the same name replaces an earlier one's), each unit once.
fn preset_units(overlays: &[PathBuf], root: &Path) -> Result<Vec<String>> {
    let mut names = std::collections::BTreeSet::new();
    for overlay in overlays {
        let Ok(entries) = fs::read_dir(overlay.join(PRESET_DIR)) else { continue };
        for entry in entries {
            let name = entry?.file_name().to_string_lossy().into_owned();
            names.insert(name.strip_suffix(".hbs").map(String::from).unwrap_or(name));
        }
    }
    let mut units: Vec<String> = Vec::new();
    for name in names.iter().filter(|n| n.ends_with(".preset")) {
        let path = root.join(PRESET_DIR).join(name);
        let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        for unit in preset_file_units(&text).with_context(|| format!("in {}", path.display()))? {
            if !units.contains(&unit) {
                units.push(unit);
            }
        }
    }
    Ok(units)
}

/// The units a preset file names (`enable UNIT`, `disable UNIT`, `ignore UNIT`; `#` and `;`
/// start comments). Patterns are refused: the builder presets the units named, and a pattern
/// names none.
fn preset_file_units(text: &str) -> Result<Vec<String>> {
    let mut units = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some("enable" | "disable" | "ignore"), Some(unit)) = (words.next(), words.next()) else {
            bail!("line {}: expected 'enable UNIT', 'disable UNIT' or 'ignore UNIT', found {line:?}", n + 1);
        };
        if unit.contains(['*', '?', '[']) {
            bail!("line {}: {unit:?} is a pattern; name each unit", n + 1);
        }
        units.push(unit.to_string());
    }
    Ok(units)
}

/// Copies or renders `dir` (below `base`) into `root`.
fn lay(base: &Path, dir: &Path, root: &Path, handlebars: &handlebars::Handlebars, context: &Value) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let relative = path.strip_prefix(base).expect("below base");
        let kind = entry.file_type()?;
        if kind.is_dir() {
            fs::create_dir_all(root.join(relative)).with_context(|| format!("creating {}", root.join(relative).display()))?;
            lay(base, &path, root, handlebars, context)?;
        } else if kind.is_symlink() {
            bail!("{}: the overlay holds no symlinks (enable units with a preset file in {PRESET_DIR} instead)", path.display());
        } else if let Some(stem) = relative.to_str().and_then(|r| r.strip_suffix(".hbs")) {
            let template = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let rendered = handlebars.render_template(&template, context).with_context(|| format!("rendering {}", path.display()))?;
            let dest = root.join(stem);
            fs::write(&dest, rendered).with_context(|| format!("writing {}", dest.display()))?;
            fs::set_permissions(&dest, entry.metadata()?.permissions())?;
        } else {
            let dest = root.join(relative);
            let _ = fs::remove_file(&dest);
            fs::copy(&path, &dest).with_context(|| format!("copying {} to {}", path.display(), dest.display()))?;
        }
    }
    Ok(())
}

/// No per-device identity and no caches: machine-id empty (made on first boot), no SSH host
/// keys (they would be shared by every stick), no apt lists, logs or caches.
fn normalise(root: &Path, made_after: u64, epoch: u64, progress: &Progress) -> Result<()> {
    fs::write(root.join("etc/machine-id"), b"").context("emptying etc/machine-id")?;
    let mut doomed: Vec<PathBuf> = vec![root.join("var/lib/dbus/machine-id"), root.join("var/cache/ldconfig/aux-cache")];
    for dir in ["etc/ssh", "var/lib/apt/lists", "var/cache/apt", "var/log", "var/cache/debconf"] {
        if let Ok(entries) = fs::read_dir(root.join(dir)) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let keep = match dir {
                    "etc/ssh" => !name.starts_with("ssh_host_"),
                    "var/cache/debconf" => !name.ends_with("-old"),
                    _ => entry.file_type().is_ok_and(|t| t.is_dir()) && dir == "var/log",
                };
                if !keep {
                    doomed.push(entry.path());
                }
            }
        }
    }
    for path in doomed {
        crate::cache::remove_any(&path)?;
    }
    clamp_mtimes(root, made_after, epoch, progress)
}

/// Sets every file modified after `made_after` to `epoch`. The packages' own files keep the
/// times their .debs give them; whatever a build made (mmdebstrap's hooks, dpkg's
/// alternatives, the overlay) carries that build's clock, so `made_after` must be no later than
/// the earliest such build: a cached root tree built before the last commit would otherwise keep
/// its clock times and differ from a fresh one.
///
/// Access times carry the clock of whoever last read a file, and mkfs.ext4 copies them into the
/// data partition: every file's is set to `epoch` (the tools tree then reads with `noatime`).
pub(super) fn clamp_mtimes(dir: &Path, made_after: u64, epoch: u64, progress: &Progress) -> Result<()> {
    progress.run(
        "clamping mtimes to SOURCE_DATE_EPOCH",
        cmd!("find", dir, "-newermt", format!("@{made_after}"), "-exec", "touch", "-h", "-d", format!("@{epoch}"), "{}", "+"),
    )?;
    progress.run("setting access times to SOURCE_DATE_EPOCH", cmd!("find", dir, "-exec", "touch", "-h", "-a", "-d", format!("@{epoch}"), "{}", "+"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_files_name_units_not_patterns() {
        let units = preset_file_units("# c\n; c\n\nenable a.service\ndisable  b.service\nenable getty@.service tty1\n").unwrap();
        assert_eq!(units, ["a.service", "b.service", "getty@.service"]);
        assert!(preset_file_units("disable *\n").unwrap_err().to_string().contains("pattern"));
        assert!(preset_file_units("enable\n").unwrap_err().to_string().contains("line 1"));
        assert!(preset_file_units("start a.service\n").is_err());
    }

    /// Every Hellas unit the presets enable is one the overlays ship (a typo would enable nothing:
    /// systemctl fails on a unit it cannot find, but only in the image build).
    #[test]
    fn the_presets_name_units_the_overlays_ship() {
        let root = crate::workspace::root().unwrap();
        for overlay in [root.join("rootfs-overlay"), root.join("image/profiles/qemu-test/overlay")] {
            let units = preset_units(std::slice::from_ref(&overlay), &overlay).unwrap();
            assert!(!units.is_empty(), "{} has no presets", overlay.display());
            for unit in units.iter().filter(|u| u.starts_with("hellas")) {
                assert!(overlay.join("usr/lib/systemd/system").join(unit).is_file(), "{unit} is preset but not in {}", overlay.display());
            }
        }
    }
}
