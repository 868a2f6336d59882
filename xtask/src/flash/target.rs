//! What is about to be written: a whole disk that is not mounted and not the host's own, shown
//! by vendor, model and size. Files only on request.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct Target {
    /// `sdb`, `loop3`; none for a file.
    pub name: Option<String>,
    pub description: String,
}

pub struct Checks {
    pub allow_file: bool,
    pub force: bool,
}

pub fn check(path: &Path, image_len: u64, checks: &Checks) -> Result<Target> {
    let meta = fs::metadata(path).with_context(|| format!("{} does not exist: name the stick's whole device, e.g. /dev/sdb (see `lsblk`)", path.display()))?;
    if meta.file_type().is_file() {
        if !checks.allow_file {
            bail!("{} is a file, not a block device: name the stick's device (e.g. /dev/sdb), or pass --allow-file to write an image file", path.display());
        }
        return Ok(Target { name: None, description: format!("file {}", path.display()) });
    }
    if !meta.file_type().is_block_device() {
        bail!("{} is neither a block device nor a file", path.display());
    }
    let rdev = meta.rdev();
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", libc_major(rdev), libc_minor(rdev)));
    let sys = fs::canonicalize(&sys).with_context(|| format!("finding {} in sysfs", path.display()))?;
    let name = sys.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    if sys.join("partition").exists() {
        let disk = sys.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("the disk");
        bail!("{} is a partition: give the whole disk, /dev/{disk}", path.display());
    }
    let read = |rel: &str| fs::read_to_string(sys.join(rel)).map(|s| s.trim().to_string()).unwrap_or_default();
    let size = read("size").parse::<u64>().unwrap_or(0) * 512;
    let mut parts = vec![name.clone()];
    parts.extend(partitions(&sys));
    for (source, mountpoint) in mounts()? {
        let dev = source.strip_prefix("/dev/").unwrap_or(&source);
        if parts.iter().any(|p| p == dev) {
            if mountpoint == "/" {
                bail!("{} holds this computer's own root file system (/): refusing to overwrite it", path.display());
            }
            bail!("/dev/{dev} on {} is mounted at {mountpoint}: unmount it first (`umount {mountpoint}`)", path.display());
        }
    }
    if let Some(root_disk) = root_disk()? {
        if root_disk == name {
            bail!("{} is the disk this computer runs from: refusing to overwrite it", path.display());
        }
    }
    if read("removable") != "1" && !checks.force {
        bail!("{} is not a removable disk (an internal drive?): pass --force if you really mean it", path.display());
    }
    if size < image_len {
        bail!("{} holds {} bytes, less than the image's {image_len}: use a larger stick", path.display(), size);
    }
    let description = format!("/dev/{name}: {} {}, {:.1} GB", read("device/vendor"), read("device/model"), size as f64 / 1e9);
    Ok(Target { name: Some(name), description })
}

fn libc_major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)
}

fn libc_minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)
}

fn partitions(sys: &Path) -> Vec<String> {
    fs::read_dir(sys)
        .map(|d| d.flatten().filter(|e| e.path().join("partition").exists()).filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// (source, mount point) of every mount.
fn mounts() -> Result<Vec<(String, String)>> {
    let text = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mountpoint = left.split(' ').nth(4)?.to_string();
            let source = right.split(' ').nth(1)?.to_string();
            Some((source, mountpoint))
        })
        .collect())
}

/// The disk under `/`, when `/` is on a block device.
fn root_disk() -> Result<Option<String>> {
    let root = fs::metadata("/").context("reading /")?;
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", libc_major(root.dev()), libc_minor(root.dev())));
    let Ok(sys) = fs::canonicalize(sys) else { return Ok(None) };
    let disk = if sys.join("partition").exists() { sys.parent().map(Path::to_path_buf) } else { Some(sys) };
    Ok(disk.and_then(|d| d.file_name().and_then(|n| n.to_str()).map(str::to_string)))
}
