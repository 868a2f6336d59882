//! Installing the running system from the stick to an internal disk (`hellasd install`, or the
//! dashboard through the root updater): systemd-repart lays out the disk as the stick is laid
//! out and copies the ESP and both root slots block for block, keeping every partition's UUID
//! and label (the UKI's `roothash=` finds its root by them); the data partition is made anew
//! from the running `/var`, with the owner's settings, keys and models or without them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use hellas_contract::disk::{self, BlockDevice, Mount};
use hellas_contract::release::DATA_LABEL;

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

/// Device names of what is no disk to install to: loop, RAM, device-mapper, optical and RAID.
const VIRTUAL: [&str; 6] = ["loop", "ram", "zram", "dm-", "sr", "md"];

fn mounts() -> Result<Vec<Mount>> {
    Ok(disk::parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?))
}

/// The whole disk `/var` is on (`/dev/vda` for `/dev/vda6`): the data partition's.
pub fn booted_disk() -> Result<String> {
    let mounts = mounts()?;
    let var = mounts.iter().rev().find(|m| m.mountpoint == "/var").context("nothing is mounted at /var")?;
    match disk::disks_of_mount(Path::new("/"), var).as_slice() {
        [disk] => Ok(format!("/dev/{disk}")),
        disks => bail!("/var ({}) is not on one disk: {disks:?}", var.source),
    }
}

/// Disks this box could be installed to: real disks that `hellas_contract::disk` allows writing.
pub fn candidates() -> Result<Vec<Disk>> {
    let mounts = mounts()?;
    let mut disks = Vec::new();
    for entry in std::fs::read_dir("/sys/block").context("listing /sys/block")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if VIRTUAL.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let Ok(device) = BlockDevice::read(Path::new("/"), &name) else { continue };
        if device.bytes > 0 && disk::check_writable(Path::new("/"), &device, &mounts, 0).is_ok() {
            disks.push(Disk { device: format!("/dev/{name}"), model: device.model, bytes: device.bytes, removable: device.removable });
        }
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
        if !output.status.success() {
            bail!("`udevadm info --query=property {}` failed ({}): {}", device.display(), output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
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

/// Refuses what must not be written (`hellas_contract::disk`: not a whole disk, the booted
/// disk, a disk with anything mounted, or one too small for the booted disk's partitions), and
/// what is no real disk.
pub fn check_target(target: &str, parts: &[Partition], data_min_bytes: u64) -> Result<Disk> {
    let name = target.strip_prefix("/dev/").with_context(|| format!("{target}: name a disk under /dev, e.g. /dev/nvme0n1"))?;
    if VIRTUAL.iter().any(|p| name.starts_with(p)) {
        bail!("{target} is not a real disk: see `hellasd install --list` for the disks this box can install to");
    }
    let device = BlockDevice::read(Path::new("/"), name).map_err(anyhow::Error::msg)?;
    let needed: u64 = parts.iter().filter(|p| p.label != DATA_LABEL).map(|p| p.bytes).sum::<u64>() + data_min_bytes + (2 << 20);
    disk::check_writable(Path::new("/"), &device, &mounts()?, needed).map_err(|refusal| anyhow::anyhow!("{target}: {refusal}"))?;
    Ok(Disk { device: target.to_string(), model: device.model, bytes: device.bytes, removable: device.removable })
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
