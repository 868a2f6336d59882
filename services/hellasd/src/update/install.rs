//! Installing the running system from the stick to an internal disk (`hellasd install`, or the
//! dashboard through the root updater): systemd-repart lays out the disk as the stick is laid
//! out and copies the ESP and both root slots block for block, keeping every partition's UUID
//! and label (the UKI's `roothash=` finds its root by them); the data partition is made anew
//! from the running `/var`, with the owner's settings, keys and models or without them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The partition that holds `/var`, and so the disk the box runs from.
const DATA_LABEL: &str = "hellas-data";

/// One partition of the disk the box runs from, as udev knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    pub device: PathBuf,
    pub number: u32,
    pub type_uuid: String,
    pub uuid: String,
    pub label: String,
    pub bytes: u64,
}

/// A disk the box could be installed to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Disk {
    pub device: String,
    pub model: String,
    pub bytes: u64,
    pub removable: bool,
}

/// The whole disk `/var` is on (`/dev/vda` for `/dev/vda6`).
pub fn booted_disk() -> Result<String> {
    let source = findmnt_source("/var")?;
    let name = Path::new(&source).file_name().and_then(|n| n.to_str()).context("the data partition has no device name")?.to_string();
    let sys = PathBuf::from("/sys/class/block").join(&name);
    let parent = std::fs::canonicalize(&sys).with_context(|| format!("resolving {}", sys.display()))?;
    let disk = parent.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).context("the data partition has no parent disk")?;
    Ok(format!("/dev/{disk}"))
}

fn findmnt_source(path: &str) -> Result<String> {
    let output = Command::new("findmnt").args(["-no", "SOURCE", path]).output().context("running findmnt")?;
    anyhow::ensure!(output.status.success(), "findmnt found nothing mounted at {path}");
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Disks other than the booted one, with nothing on them mounted.
pub fn candidates() -> Result<Vec<Disk>> {
    let booted = booted_disk()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut disks = Vec::new();
    for entry in std::fs::read_dir("/sys/block").context("listing /sys/block")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let sys = entry.path();
        let device = format!("/dev/{name}");
        let virtual_device = ["loop", "ram", "zram", "dm-", "sr", "md"].iter().any(|p| name.starts_with(p));
        if virtual_device || device == booted || mounts.contains(&format!(" {device}")) {
            continue;
        }
        let read = |file: &str| std::fs::read_to_string(sys.join(file)).map(|s| s.trim().to_string()).unwrap_or_default();
        let bytes = read("size").parse::<u64>().unwrap_or(0) * 512;
        if bytes == 0 {
            continue;
        }
        disks.push(Disk { device, model: read("device/model"), bytes, removable: read("removable") == "1" });
    }
    disks.sort_by(|a, b| a.device.cmp(&b.device));
    Ok(disks)
}

/// The partitions of `disk`, in order, from udev's database.
pub fn partitions(disk: &str) -> Result<Vec<Partition>> {
    let name = disk.trim_start_matches("/dev/");
    let mut parts = Vec::new();
    for entry in std::fs::read_dir(format!("/sys/block/{name}")).with_context(|| format!("listing /sys/block/{name}"))?.flatten() {
        if !entry.path().join("partition").exists() {
            continue;
        }
        let device = PathBuf::from("/dev").join(entry.file_name());
        let output = Command::new("udevadm").args(["info", "--query=property"]).arg(&device).output().context("running udevadm")?;
        let properties = String::from_utf8_lossy(&output.stdout).into_owned();
        parts.push(parse_partition(&device, &properties).with_context(|| format!("udev knows too little of {}", device.display()))?);
    }
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

fn parse_partition(device: &Path, properties: &str) -> Result<Partition> {
    let get = |key: &str| properties.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).map(str::to_string);
    let need = |key: &str| get(key).with_context(|| format!("no {key}"));
    Ok(Partition {
        device: device.to_path_buf(),
        number: need("ID_PART_ENTRY_NUMBER")?.parse().context("ID_PART_ENTRY_NUMBER")?,
        type_uuid: need("ID_PART_ENTRY_TYPE")?,
        uuid: need("ID_PART_ENTRY_UUID")?,
        label: get("ID_PART_ENTRY_NAME").unwrap_or_default().replace("\\x20", " "),
        bytes: need("ID_PART_ENTRY_SIZE")?.parse::<u64>().context("ID_PART_ENTRY_SIZE")? * 512,
    })
}

/// systemd-repart definitions that lay `target` out like the booted disk: every partition but
/// the data one copied block for block under its UUID and label; the data partition formatted
/// anew, filled from `/var` (without the owner's state unless `keep_data`), and grown to the end.
pub fn definitions(parts: &[Partition], keep_data: bool, data_min_bytes: u64) -> Result<Vec<(String, String)>> {
    if !parts.iter().any(|p| p.label == DATA_LABEL) {
        bail!("the booted disk has no {DATA_LABEL} partition: this is not a Hellas disk");
    }
    let mut files = Vec::new();
    for part in parts {
        let mut text = format!("[Partition]\nType={}\nUUID={}\nLabel={}\n", part.type_uuid, part.uuid, part.label);
        if part.label == DATA_LABEL {
            text.push_str("Format=ext4\nCopyFiles=/var:/\n");
            // Volatile state is never worth copying; the owner's is copied only when asked.
            let mut excluded = vec!["/var/tmp/", "/var/cache/", "/var/log/journal/"];
            if !keep_data {
                excluded.extend(["/var/lib/hellas/", "/var/lib/hellas-ssh/"]);
            }
            for path in excluded {
                let _ = writeln!(text, "ExcludeFiles={path}");
            }
            let _ = writeln!(text, "SizeMinBytes={data_min_bytes}");
        } else {
            let _ = writeln!(text, "CopyBlocks={}\nSizeMinBytes={}\nSizeMaxBytes={}", part.device.display(), part.bytes, part.bytes);
        }
        files.push((format!("{:02}-{}.conf", part.number, if part.label.is_empty() { "partition" } else { &part.label }), text));
    }
    Ok(files)
}

/// Refuses what must not be written: not a whole disk, the booted disk, a disk with anything
/// mounted, or one too small for the booted disk's partitions.
pub fn check_target(disk: &str, parts: &[Partition], data_min_bytes: u64) -> Result<Disk> {
    let name = disk.strip_prefix("/dev/").with_context(|| format!("{disk}: name a disk under /dev, e.g. /dev/nvme0n1"))?;
    if Path::new(&format!("/sys/class/block/{name}/partition")).exists() {
        bail!("{disk} is a partition: name the whole disk");
    }
    if disk == booted_disk()? {
        bail!("{disk} is the disk this box runs from: name the internal disk to install to");
    }
    let Some(target) = candidates()?.into_iter().find(|d| d.device == disk) else {
        bail!("{disk} is not a disk this box can install to (missing, virtual, or something on it is mounted): see `hellasd install --list`");
    };
    let needed: u64 = parts.iter().filter(|p| p.label != DATA_LABEL).map(|p| p.bytes).sum::<u64>() + data_min_bytes + (2 << 20);
    if target.bytes < needed {
        bail!("{disk} holds {} bytes; the system needs at least {needed}", target.bytes);
    }
    Ok(target)
}

/// Room for what `/var` holds now (all of it when the owner's data is kept), with a margin; at
/// least what the image ships. The partition then grows to the end of the disk.
fn data_min_bytes(keep_data: bool) -> Result<u64> {
    let stat = used_bytes("/var")?;
    let used = if keep_data { stat } else { stat.min(1 << 30) };
    Ok((used + used / 4).max(256 << 20).div_ceil(1 << 20) << 20)
}

fn used_bytes(path: &str) -> Result<u64> {
    let c_path = std::ffi::CString::new(path).expect("no NUL in the path");
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statvfs to fill.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("statvfs {path}"));
    }
    Ok((stat.f_blocks - stat.f_bfree) as u64 * stat.f_frsize as u64)
}

/// Lays the running system onto `disk` with systemd-repart.
pub fn install(disk: &str, keep_data: bool, runtime_dir: &Path) -> Result<()> {
    let booted = booted_disk()?;
    let parts = partitions(&booted)?;
    let data_min_bytes = data_min_bytes(keep_data)?;
    let target = check_target(disk, &parts, data_min_bytes)?;
    let dir = runtime_dir.join("install.d");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in definitions(&parts, keep_data, data_min_bytes)? {
        std::fs::write(dir.join(&name), text).with_context(|| format!("writing {}", dir.join(&name).display()))?;
    }
    println!("installing to {disk} ({} bytes, {}) from {booted}, {} the owner's data", target.bytes, target.model, if keep_data { "with" } else { "without" });
    let mut repart = Command::new("systemd-repart");
    repart.args(["--dry-run=no", "--empty=force", "--no-pager"]).arg(format!("--definitions={}", dir.display())).arg(disk);
    super::run_logged(&mut repart, &format!("systemd-repart {disk}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(number: u32, label: &str, bytes: u64) -> Partition {
        Partition {
            device: PathBuf::from(format!("/dev/vda{number}")),
            number,
            type_uuid: "4f68bce3-e8cd-4db1-96e7-fbcaf984b709".into(),
            uuid: format!("00000000-0000-0000-0000-00000000000{number}"),
            label: label.into(),
            bytes,
        }
    }

    #[test]
    fn udev_properties_are_read() {
        let props = "DEVNAME=/dev/vda2\nID_PART_ENTRY_NUMBER=2\nID_PART_ENTRY_TYPE=4f68bce3-e8cd-4db1-96e7-fbcaf984b709\nID_PART_ENTRY_UUID=a8e2f869-b5de-5b52-b60d-276b746149e2\nID_PART_ENTRY_NAME=hellas_0.1.0\nID_PART_ENTRY_SIZE=4194304\n";
        let p = parse_partition(Path::new("/dev/vda2"), props).unwrap();
        assert_eq!((p.number, p.label.as_str(), p.bytes), (2, "hellas_0.1.0", 2 << 30));
        assert!(parse_partition(Path::new("/dev/vda2"), "DEVNAME=/dev/vda2\n").is_err());
    }

    #[test]
    fn slots_are_copied_and_data_is_made_anew() {
        let parts = [part(1, "ESP", 512 << 20), part(2, "hellas_0.1.0", 2 << 30), part(6, DATA_LABEL, 256 << 20)];
        let files = definitions(&parts, false, 300 << 20).unwrap();
        assert_eq!(files.len(), 3);
        let root = &files[1].1;
        assert!(root.contains("CopyBlocks=/dev/vda2\n") && root.contains("UUID=00000000-0000-0000-0000-000000000002\n"), "{root}");
        assert!(root.contains("SizeMaxBytes=2147483648\n"), "{root}");
        let data = &files[2].1;
        assert!(data.contains("Format=ext4\nCopyFiles=/var:/\n") && data.contains("ExcludeFiles=/var/lib/hellas/\n"), "{data}");
        assert!(!data.contains("SizeMaxBytes"), "the data partition grows to the end of the disk: {data}");
        let kept = definitions(&parts, true, 300 << 20).unwrap();
        assert!(!kept[2].1.contains("/var/lib/hellas/"), "keeping the data copies the owner's state: {}", kept[2].1);
        assert!(data.contains("SizeMinBytes=314572800\n"), "{data}");
        assert!(definitions(&parts[..2], true, 300 << 20).is_err());
    }
}
