//! What is about to be written: a disk that `hellas_contract::disk` allows writing (a whole
//! disk, nothing on it mounted, not the running system's, large enough) and, unless forced, a
//! removable one, shown by vendor, model and size. Files only on request.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hellas_contract::disk::{self, BlockDevice};

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
    let device = BlockDevice::read(Path::new("/"), &name).map_err(anyhow::Error::msg)?;
    let mounts = disk::parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?);
    disk::check_writable(Path::new("/"), &device, &mounts, image_len).map_err(|refusal| anyhow!("{}: {refusal}", path.display()))?;
    if !device.removable && !checks.force {
        bail!("{} is not a removable disk (an internal drive?): pass --force if you really mean it", path.display());
    }
    Ok(Target { name: Some(name), description: device.describe() })
}

fn libc_major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)
}

fn libc_minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)
}
