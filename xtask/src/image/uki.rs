//! Step 6: the unified kernel image (kernel + initrd + command line + os-release, by ukify) and
//! the ESP around it: systemd-boot as the fallback loader, and the UKI named with a boot-count
//! of tries, so a release that cannot boot falls back to the previous one.

use std::fs;
use std::path::Path;

use anyhow::{bail, Context, Result};
use hellas_contract::release;

use super::step::Progress;
use super::tools::ToolsTree;

/// Boot attempts a new UKI gets before systemd-boot gives up on it.
pub const TRIES: u32 = 3;

/// Builds the UKI into `work/esp` beside systemd-boot; returns the UKI's path.
pub fn build_esp(tools: &ToolsTree, work: &Path, name: &str, version: &str, cmdline: &str, epoch: u64, progress: &Progress) -> Result<std::path::PathBuf> {
    let modules = work.join("root/usr/lib/modules");
    let kernels: Vec<String> = fs::read_dir(&modules)
        .with_context(|| format!("listing {}", modules.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let [kver] = &kernels[..] else { bail!("expected exactly one kernel in the root tree, found {kernels:?}") };
    let esp = work.join("esp");
    for dir in ["EFI/BOOT", "EFI/systemd", "EFI/Linux", "loader"] {
        fs::create_dir_all(esp.join(dir)).with_context(|| format!("creating {}", esp.join(dir).display()))?;
    }
    let uki = format!("/work/esp/EFI/Linux/{}", release::uki_with_tries(name, version, TRIES));
    let args = [
        "build".into(),
        format!("--linux=/work/root/boot/vmlinuz-{kver}").into(),
        format!("--initrd=/work/root/boot/initrd.img-{kver}").into(),
        "--os-release=@/work/root/usr/lib/os-release".into(),
        format!("--uname={kver}").into(),
        format!("--cmdline={cmdline}").into(),
        format!("--output={uki}").into(),
    ];
    progress.run("ukify", tools.command(work, "ukify", &args).env("SOURCE_DATE_EPOCH", epoch.to_string()))?;
    let boot = tools.root.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    for dest in ["EFI/BOOT/BOOTX64.EFI", "EFI/systemd/systemd-bootx64.efi"] {
        fs::copy(&boot, esp.join(dest)).with_context(|| format!("copying {} to the ESP", boot.display()))?;
    }
    fs::write(esp.join("loader/loader.conf"), "timeout 0\neditor no\n").context("writing loader.conf")?;
    super::overlay::clamp_mtimes(&esp, epoch, epoch, progress)?;
    Ok(esp.join("EFI/Linux").join(release::uki_with_tries(name, version, TRIES)))
}
