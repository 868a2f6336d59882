//! The tools tree: a pinned Debian tree holding the image tools (systemd-repart, ukify,
//! systemd-boot, mkfs.erofs, veritysetup, mkfs.vfat, mtools), so the host needs only mmdebstrap
//! and QEMU and its own (older) versions of these tools never matter. It is pinned as the root
//! tree is: `cargo xtask lock` writes `image/tools.lock`, and the tree holds exactly those .debs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;
use duct::cmd;

use super::packages::{self, Lock, PackageSet};
use super::step::{self, Inputs, Progress};

/// A suite with systemd ≥ 257, whose repart builds images offline and which ships ukify.
const SUITE: &str = "trixie";
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-repart",
    "systemd-ukify",
    "systemd-boot",
    "systemd-boot-efi",
    "erofs-utils",
    "cryptsetup-bin",
    "dosfstools",
    "mtools",
    "e2fsprogs",
    "fdisk",
    "util-linux",
    "binutils",
    "python3-pefile",
    "zstd",
    "kmod",
];
/// Bump when this file changes what goes into the tree.
const RECIPE: &str = "2";

pub struct ToolsTree {
    pub root: PathBuf,
}

/// The tools tree's packages, locked in `image/tools.lock`. The tools run on the build host, whose
/// architecture this is (mmdebstrap's default, written out so that the lock says it).
pub fn package_set() -> PackageSet {
    let mut packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
    packages.sort();
    PackageSet {
        lock_file: "tools.lock",
        purpose: "the tools tree",
        source: "xtask/src/image/tools.rs",
        suite: SUITE.into(),
        components: vec!["main".into()],
        architecture: "amd64".into(),
        packages,
        min_kernel: None,
        debs_dir: "tools-debs",
    }
}

/// The tools tree with exactly the packages of `lock` (`image/tools.lock`); the lock is an input
/// of the step, so a changed pin builds a new tree, and the disk step after it runs again.
pub fn ensure(lock: &Lock, progress: &Progress, apt_options: &[OsString]) -> Result<ToolsTree> {
    let set = package_set();
    let digest = Inputs::new("tools")
        .text("lock", &lock.render(&set))
        .text("recipe", RECIPE)
        .text("mirror", &super::mirror().unwrap_or_default())
        .finish();
    let dir = step::cached_dir(progress, "tools", &digest, |out| packages::install(&set, lock, &out.join("tree"), vec![], "tools tree", progress, apt_options))?;
    Ok(ToolsTree { root: dir.join("tree") })
}

impl ToolsTree {
    /// A command run inside the tools tree, in a private mount namespace (nothing is left
    /// mounted afterwards), with `work` bind-mounted at `/work`. Only the environment named
    /// here reaches it.
    pub fn command(&self, work: &Path, program: &str, args: &[OsString]) -> duct::Expression {
        let script = r#"
            T=$1; W=$2; shift 2
            mkdir -p "$T/work"
            mount -t proc proc "$T/proc"
            mount --rbind /sys "$T/sys"
            mount --rbind /dev "$T/dev"
            mount --bind "$W" "$T/work"
            # Reading the staged trees must not change their access times (see clamp_mtimes).
            mount -o remount,bind,noatime "$T/work"
            exec chroot "$T" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
                SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" TZ=UTC LC_ALL=C.UTF-8 \
                SYSTEMD_REPART_MKFS_OPTIONS_EXT4="${SYSTEMD_REPART_MKFS_OPTIONS_EXT4:-}" "$@"
        "#;
        let mut all: Vec<OsString> =
            vec!["--mount".into(), "--propagation".into(), "private".into(), "--".into(), "/bin/sh".into(), "-ec".into(), script.into()];
        all.extend(["sh".into(), self.root.clone().into(), work.into(), program.into()]);
        all.extend(args.iter().cloned());
        cmd("unshare", all)
    }
}
