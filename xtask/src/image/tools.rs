//! The tools tree: a pinned Debian tree holding the image tools (systemd-repart, ukify,
//! systemd-boot, mkfs.erofs, veritysetup, mkfs.vfat, mtools), so the host needs only mmdebstrap
//! and QEMU and its own (older) versions of these tools never matter.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Result;
use duct::cmd;

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
const RECIPE: &str = "1";

pub struct ToolsTree {
    pub root: PathBuf,
}

pub fn ensure(progress: &Progress, apt_options: &[OsString]) -> Result<ToolsTree> {
    let digest = Inputs::new("tools")
        .text("suite", SUITE)
        .text("packages", &PACKAGES.join(","))
        .text("recipe", RECIPE)
        .text("mirror", &super::mirror().unwrap_or_default())
        .finish();
    let dir = step::cached_dir(progress, "tools", &digest, |out| {
        let mut args: Vec<OsString> = vec!["--variant=apt".into(), format!("--include={}", PACKAGES.join(",")).into()];
        args.extend(apt_options.iter().cloned());
        args.extend([SUITE.into(), out.join("tree").into()]);
        args.extend(super::mirror().map(OsString::from));
        progress.run("mmdebstrap (tools tree)", cmd("mmdebstrap", args))
    })?;
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
