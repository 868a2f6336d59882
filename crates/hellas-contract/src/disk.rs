//! Which disks may be written: the same refusals for `cargo xtask flash` (an image onto a
//! stick) and `hellasd install` (the running system onto an internal disk). A target must be a
//! whole disk, with nothing on it mounted, not the disk the running system is on, and large
//! enough. Each side adds its own on top (flash: removable unless forced; install: real disks
//! only); none is relaxed.
//!
//! Everything is read from sysfs and the mount table, below a root the tests can point at a
//! fixture tree (`/` on a real system).

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// Mount points whose disk is the running system's.
const SYSTEM_MOUNTS: [&str; 4] = ["/", "/usr", "/var", "/boot"];

/// A block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockDevice {
    /// The kernel's name, e.g. `sdb`, `nvme0n1`.
    pub name: String,
    /// For a partition, the disk it is on.
    pub partition_of: Option<String>,
    pub bytes: u64,
    pub removable: bool,
    pub vendor: String,
    pub model: String,
}

impl BlockDevice {
    /// Reads `<root>/sys/class/block/<name>`.
    pub fn read(root: &Path, name: &str) -> Result<BlockDevice, String> {
        let sys = class_block(root, name);
        let sys = fs::canonicalize(&sys).map_err(|_| format!("/dev/{name} is not a block device this system knows (see `lsblk`)"))?;
        let read = |rel: &str| fs::read_to_string(sys.join(rel)).map(|s| s.trim().to_string()).unwrap_or_default();
        let partition_of = sys.join("partition").exists().then(|| file_name(sys.parent().unwrap_or(&sys)));
        Ok(BlockDevice {
            name: name.to_string(),
            partition_of,
            bytes: read("size").parse::<u64>().unwrap_or(0) * 512,
            removable: read("removable") == "1",
            vendor: read("device/vendor"),
            model: read("device/model"),
        })
    }

    /// `/dev/sdb: SanDisk Ultra, 32.0 GB`.
    pub fn describe(&self) -> String {
        let maker = [self.vendor.as_str(), self.model.as_str()].iter().filter(|s| !s.is_empty()).copied().collect::<Vec<_>>().join(" ");
        format!("/dev/{}: {}, {:.1} GB", self.name, if maker.is_empty() { "unknown model" } else { &maker }, self.bytes as f64 / 1e9)
    }
}

/// Why a disk may not be written.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// A partition was named, not its disk.
    NotWholeDisk { disk: String },
    /// Something on the disk is mounted.
    Mounted { device: String, mountpoint: String },
    /// The running system is on it.
    RunningSystem { mountpoint: String },
    TooSmall { bytes: u64, needed: u64 },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotWholeDisk { disk } => write!(f, "it is a partition: name the whole disk, /dev/{disk}"),
            Refusal::Mounted { device, mountpoint } => write!(f, "{device} on it is mounted at {mountpoint}: unmount it first (`umount {mountpoint}`)"),
            Refusal::RunningSystem { mountpoint } => {
                write!(f, "it is the disk the running system is on (its {mountpoint}): refusing to overwrite it")
            }
            Refusal::TooSmall { bytes, needed } => write!(f, "it holds {bytes} bytes, less than the {needed} needed: use a larger disk"),
        }
    }
}

impl std::error::Error for Refusal {}

/// One line of `/proc/self/mountinfo`: what is mounted where.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub source: String,
    pub mountpoint: String,
}

/// The mounts in `mountinfo`'s text (`/proc/self/mountinfo`).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mountpoint = unescape(left.split(' ').nth(4)?);
            let source = right.split(' ').nth(1)?.to_string();
            Some(Mount { source, mountpoint })
        })
        .collect()
}

/// mountinfo writes spaces and the like as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match u8::from_str_radix(rest.get(i + 1..i + 4).unwrap_or_default(), 8) {
            Ok(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out + rest
}

/// The whole disks under the block device `name`: itself, or the disk of a partition, or for a
/// device-mapper device (dm-verity, LUKS) the disks beneath it.
pub fn disks_under(root: &Path, name: &str) -> Vec<String> {
    let Ok(sys) = fs::canonicalize(class_block(root, name)) else { return Vec::new() };
    let slaves: Vec<String> = fs::read_dir(sys.join("slaves")).map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    if !slaves.is_empty() {
        let mut disks: Vec<String> = slaves.iter().flat_map(|s| disks_under(root, s)).collect();
        disks.sort();
        disks.dedup();
        return disks;
    }
    if sys.join("partition").exists() {
        return sys.parent().map(|p| vec![file_name(p)]).unwrap_or_default();
    }
    vec![file_name(&sys)]
}

/// The whole disks a mount's source is on (none for a source that is no block device).
pub fn disks_of_mount(root: &Path, mount: &Mount) -> Vec<String> {
    source_name(root, &mount.source).map(|name| disks_under(root, &name)).unwrap_or_default()
}

/// The kernel name of a mount's source (`/dev/mapper/root` → `dm-0`), when it is a block device.
fn source_name(root: &Path, source: &str) -> Option<String> {
    let path = source.strip_prefix("/dev/")?;
    let real = fs::canonicalize(root.join("dev").join(path)).ok();
    Some(real.map(|p| file_name(&p)).unwrap_or_else(|| path.rsplit('/').next().unwrap_or(path).to_string()))
}

/// Whether `disk` may be written with `needed` bytes, given what is mounted.
pub fn check_writable(root: &Path, disk: &BlockDevice, mounts: &[Mount], needed: u64) -> Result<(), Refusal> {
    if let Some(parent) = &disk.partition_of {
        return Err(Refusal::NotWholeDisk { disk: parent.clone() });
    }
    for mount in mounts {
        if !disks_of_mount(root, mount).contains(&disk.name) {
            continue;
        }
        if SYSTEM_MOUNTS.contains(&mount.mountpoint.as_str()) {
            return Err(Refusal::RunningSystem { mountpoint: mount.mountpoint.clone() });
        }
        return Err(Refusal::Mounted { device: mount.source.clone(), mountpoint: mount.mountpoint.clone() });
    }
    if disk.bytes < needed {
        return Err(Refusal::TooSmall { bytes: disk.bytes, needed });
    }
    Ok(())
}

/// The running system's own disks: those under `/`, `/usr`, `/var` and `/boot`.
pub fn running_system_disks(root: &Path, mounts: &[Mount]) -> Vec<String> {
    let mut disks: Vec<String> = mounts
        .iter()
        .filter(|m| SYSTEM_MOUNTS.contains(&m.mountpoint.as_str()))
        .flat_map(|m| disks_of_mount(root, m))
        .collect();
    disks.sort();
    disks.dedup();
    disks
}

fn class_block(root: &Path, name: &str) -> PathBuf {
    root.join("sys/class/block").join(name)
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A sysfs with disks `vda` (the system: vda1 at /boot, vda2 under dm-0 at /, vda3 at
    /// /var), `sdb` (a stick, sdb1 mounted at /media/stick) and `nvme0n1` (empty, 1 TB).
    fn fixture() -> (tempfile::TempDir, Vec<Mount>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let devices = root.join("sys/devices/virtual/block");
        let disk = |name: &str, sectors: u64, parts: &[&str]| {
            let path = devices.join(name);
            fs::create_dir_all(path.join("device")).unwrap();
            fs::write(path.join("size"), sectors.to_string()).unwrap();
            fs::write(path.join("device/model"), "Disk").unwrap();
            fs::create_dir_all(root.join("sys/class/block")).unwrap();
            symlink(&path, root.join("sys/class/block").join(name)).unwrap();
            for part in parts {
                fs::create_dir_all(path.join(part)).unwrap();
                fs::write(path.join(part).join("partition"), "1").unwrap();
                fs::write(path.join(part).join("size"), "2048").unwrap();
                symlink(path.join(part), root.join("sys/class/block").join(part)).unwrap();
            }
        };
        disk("vda", 64 << 21, &["vda1", "vda2", "vda3"]);
        disk("sdb", 32 << 21, &["sdb1"]);
        disk("nvme0n1", 1 << 31, &[]);
        disk("dm-0", 4096, &[]);
        fs::create_dir_all(devices.join("dm-0/slaves")).unwrap();
        symlink(devices.join("vda/vda2"), devices.join("dm-0/slaves/vda2")).unwrap();
        fs::create_dir_all(root.join("dev/mapper")).unwrap();
        fs::write(root.join("dev/dm-0"), "").unwrap();
        symlink(root.join("dev/dm-0"), root.join("dev/mapper/root")).unwrap();
        let mounts = parse_mountinfo(
            "22 1 254:0 / / ro - erofs /dev/mapper/root ro\n\
             23 22 252:1 / /boot rw - vfat /dev/vda1 rw\n\
             24 22 252:3 / /var rw - ext4 /dev/vda3 rw\n\
             25 22 0:5 / /proc rw - proc proc rw\n\
             30 22 8:17 / /media/my\\040stick rw - vfat /dev/sdb1 rw\n",
        );
        (dir, mounts)
    }

    fn check(root: &Path, mounts: &[Mount], name: &str, needed: u64) -> Result<(), Refusal> {
        check_writable(root, &BlockDevice::read(root, name).unwrap(), mounts, needed)
    }

    #[test]
    fn each_refusal_and_a_good_disk() {
        let (dir, mounts) = fixture();
        let root = dir.path();
        assert_eq!(check(root, &mounts, "vda2", 1), Err(Refusal::NotWholeDisk { disk: "vda".into() }));
        assert_eq!(check(root, &mounts, "vda", 1), Err(Refusal::RunningSystem { mountpoint: "/".into() }), "/ is on vda through dm-verity");
        assert_eq!(check(root, &mounts, "sdb", 1), Err(Refusal::Mounted { device: "/dev/sdb1".into(), mountpoint: "/media/my stick".into() }));
        assert_eq!(check(root, &mounts, "nvme0n1", 2 << 40), Err(Refusal::TooSmall { bytes: 1 << 40, needed: 2 << 40 }));
        assert_eq!(check(root, &mounts, "nvme0n1", 1 << 30), Ok(()));
        assert_eq!(running_system_disks(root, &mounts), ["vda"]);
        let unmounted: Vec<Mount> = mounts.into_iter().filter(|m| m.source != "/dev/sdb1").collect();
        assert_eq!(check(root, &unmounted, "sdb", 1 << 30), Ok(()));
        assert!(BlockDevice::read(root, "sdz").unwrap_err().contains("lsblk"));
        assert_eq!(BlockDevice::read(root, "nvme0n1").unwrap().describe(), "/dev/nvme0n1: Disk, 1099.5 GB");
    }
}
