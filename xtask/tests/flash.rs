//! `cargo xtask flash` on files and loop devices (needs root, losetup and mtools, which
//! `cargo xtask test` installs): a good write verifies and carries the seed, a write cut short is
//! caught by the verify, and each refusal says why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const MIB: u64 = 1 << 20;

fn xtask(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).arg("flash").args(args).stdin(Stdio::null()).output().expect("running xtask flash")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A small disk image like Hellas's: a GPT with a FAT ESP at 1 MiB, and random bytes after it.
fn image(dir: &Path) -> PathBuf {
    let path = dir.join("test.img");
    let mut bytes = vec![0u8; (24 * MIB) as usize];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in bytes[(10 * MIB) as usize..].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    // A GPT header and one entry, the ESP from 1 MiB for 8 MiB (flash reads no checksums).
    bytes[512..520].copy_from_slice(b"EFI PART");
    bytes[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
    bytes[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
    bytes[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
    let esp = [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b];
    bytes[1024..1040].copy_from_slice(&esp);
    bytes[1024 + 32..1024 + 40].copy_from_slice(&2048u64.to_le_bytes());
    bytes[1024 + 40..1024 + 48].copy_from_slice(&(2048u64 + 16383).to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    run(Command::new("mformat").arg("-i").arg(format!("{}@@{}", path.display(), MIB)).args(["-T", "16384", "::"]));
    path
}

struct Loop(String);

impl Loop {
    fn new(backing: &Path) -> Loop {
        Loop(run(Command::new("losetup").args(["--find", "--show"]).arg(backing)))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).stderr(Stdio::null()).status();
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_file_is_written_verified_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let target = dir.path().join("stick.img");
    std::fs::write(&target, b"").unwrap();
    let key = dir.path().join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop\n").unwrap();
    let t = target.to_str().unwrap();

    let refused = xtask(&["--device", t, "--image", img.to_str().unwrap(), "--yes"]);
    assert!(!refused.status.success() && text(&refused).contains("pass --allow-file"), "{}", text(&refused));

    let out = xtask(&[
        "--device", t, "--image", img.to_str().unwrap(), "--allow-file", "--yes",
        "--hostname", "kitchen", "--ssh-key", key.to_str().unwrap(), "--claim-code", "ABCD-EF23",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("verified: sha256"), "{}", text(&out));
    let seed = run(Command::new("mtype").arg("-i").arg(format!("{t}@@{MIB}")).arg("::/hellas/seed.toml"));
    assert!(seed.contains("hostname = \"kitchen\"") && seed.contains("claim_code = \"ABCD-EF23\"") && seed.contains("ssh-ed25519 AAAA"), "{seed}");
    // Beyond the ESP the stick holds the image's bytes.
    let (a, b) = (std::fs::read(&img).unwrap(), std::fs::read(&target).unwrap());
    assert_eq!(a[(10 * MIB) as usize..], b[(10 * MIB) as usize..a.len()]);

    for (flag, value, says) in [("--hostname", "Not A Name", "--hostname"), ("--claim-code", "abcd", "--claim-code")] {
        let out = xtask(&["--device", t, "--image", img.to_str().unwrap(), "--allow-file", "--yes", flag, value]);
        assert!(!out.status.success() && text(&out).contains(says), "{}", text(&out));
    }
}

#[test]
fn loop_devices_are_refused_until_forced_and_a_short_write_fails_the_verify() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let backing = dir.path().join("disk");
    std::fs::write(&backing, vec![0u8; (32 * MIB) as usize]).unwrap();
    let dev = Loop::new(&backing);
    let i = img.to_str().unwrap();

    let out = xtask(&["--device", &dev.0, "--image", i, "--yes"]);
    assert!(!out.status.success() && text(&out).contains("not a removable disk"), "{}", text(&out));
    let out = xtask(&["--device", &dev.0, "--image", i, "--force"]);
    assert!(!out.status.success() && text(&out).contains("not confirmed"), "no typed confirmation: {}", text(&out));

    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["flash", "--device", &dev.0, "--image", i, "--force"])
        .env("HELLAS_FLASH_TEST_STOP_AFTER", (12 * MIB).to_string())
        .arg("--yes")
        .output()
        .unwrap();
    assert!(!out.status.success() && text(&out).contains("verification failed"), "{}", text(&out));

    let out = xtask(&["--device", &dev.0, "--image", i, "--force", "--yes"]);
    assert!(out.status.success() && text(&out).contains("verified"), "{}", text(&out));

    // Too small a device.
    let small = dir.path().join("small");
    std::fs::write(&small, vec![0u8; (8 * MIB) as usize]).unwrap();
    let small = Loop::new(&small);
    let out = xtask(&["--device", &small.0, "--image", i, "--force", "--yes"]);
    assert!(!out.status.success() && text(&out).contains("use a larger disk"), "{}", text(&out));

    // Mounted.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let fs_backing = dir.path().join("fs");
    std::fs::write(&fs_backing, vec![0u8; (32 * MIB) as usize]).unwrap();
    let mounted = Loop::new(&fs_backing);
    run(Command::new("mkfs.ext4").args(["-q", &mounted.0]));
    run(Command::new("mount").arg(&mounted.0).arg(&mnt));
    let out = xtask(&["--device", &mounted.0, "--image", i, "--force", "--yes"]);
    let _ = Command::new("umount").arg(&mnt).status();
    assert!(!out.status.success() && text(&out).contains("is mounted at"), "{}", text(&out));
}

#[test]
fn the_disk_this_machine_runs_from_is_refused() {
    let root = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let source = root.lines().find(|l| l.split(' ').nth(4) == Some("/")).and_then(|l| l.split(" - ").nth(1)?.split(' ').nth(1).map(str::to_string));
    let Some(source) = source.filter(|s| s.starts_with("/dev/") && Path::new(s).exists()) else {
        panic!("/ is not on a block device here ({root}); this test needs a machine whose root is on a disk");
    };
    let out = xtask(&["--device", &source, "--image", "/dev/null", "--force", "--yes"]);
    assert!(!out.status.success() && text(&out).contains("the disk the running system is on"), "{}", text(&out));
}

#[test]
fn an_image_that_differs_from_its_recorded_digest_fails_the_verify() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path());
    let target = dir.path().join("stick.img");
    std::fs::write(&target, b"").unwrap();
    let (i, t) = (img.to_str().unwrap(), target.to_str().unwrap());
    let digest = run(Command::new("sha256sum").arg(&img));
    let digest = digest.split_whitespace().next().unwrap();
    std::fs::write(dir.path().join("SHA256SUMS"), format!("{digest}  test.img\n")).unwrap();
    let out = xtask(&["--device", t, "--image", i, "--allow-file", "--yes"]);
    assert!(out.status.success() && text(&out).contains(&format!("verified: sha256 {digest}")), "{}", text(&out));

    // Damaged since the build recorded it: the copy is faithful to the damage, and refused.
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[20 * MIB as usize] ^= 0xff;
    std::fs::write(&img, bytes).unwrap();
    let out = xtask(&["--device", t, "--image", i, "--allow-file", "--yes"]);
    assert!(!out.status.success() && text(&out).contains("verification failed"), "{}", text(&out));
}
