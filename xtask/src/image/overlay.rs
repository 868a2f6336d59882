//! Steps 3 and 4: the image's root assembled from the root tree, the overlay and hellasd, then
//! normalised so that the same inputs give the same bytes and no per-device secret ships.
//!
//! `rootfs-overlay/` is laid over every image and `image/profiles/<profile>/overlay/` over that
//! profile's; files ending in `.hbs` are rendered with handlebars from the spec (without the
//! suffix), the rest copied as they are. `/var` is moved out to become the data partition.

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
    pub units: &'a [String],
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
    let mut enable: Vec<OsString> = vec!["--root=/work/root".into(), "enable".into()];
    enable.extend(inputs.units.iter().map(OsString::from));
    progress.run("systemctl enable", tools.command(work, "systemctl", &enable))?;
    // sshd stays off until the owner gives a key (the web setup turns it on).
    progress.run("systemctl disable ssh", tools.command(work, "systemctl", &["--root=/work/root".into(), "disable".into(), "ssh.service".into()]))?;

    // systemd-gpt-auto-generator mounts the ESP at /boot (empty in the root partition: the
    // kernel and initrd are in the UKI), where the seed, hellas-tune and sysupdate find it.
    // The login prompts show this boot's claim code, which hellasd writes under /run.
    let issue = root.join("etc/issue.d");
    fs::create_dir_all(&issue).with_context(|| format!("creating {}", issue.display()))?;
    std::os::unix::fs::symlink("/run/hellas/claim.issue", issue.join("50-hellas.issue")).context("linking the claim code's issue file")?;

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
            bail!("{}: the overlay holds no symlinks (enable units through the builder instead)", path.display());
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
