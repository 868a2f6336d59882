//! `[firmware]`: firmware packages trimmed to the files the boxes' drivers load. Debian packs a
//! vendor's firmware for every chip it ever made (firmware-mediatek is 74 MB, firmware-realtek
//! 40 MB); a module names the files it may ask for (`modinfo -F firmware`), so what the named
//! modules ask for stays and the rest of each trimmed package goes.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use duct::cmd;

use super::spec::FirmwareSection;
use super::step::Progress;

const FIRMWARE_DIRS: [&str; 2] = ["/usr/lib/firmware/", "/lib/firmware/"];

/// Trims the packages of `section.trim` in the root `tree` and says what each kept.
pub fn trim(tree: &Path, section: &FirmwareSection, progress: &Progress) -> Result<()> {
    if section.trim.is_empty() {
        return Ok(());
    }
    let wanted = wanted_files(tree, &section.modules)?;
    for package in &section.trim {
        let trimmed = trim_package(tree, package, &wanted)?;
        progress.note(&format!(
            "firmware: {package}: kept {} of {} files, {:.1} of {:.1} MB (what {} ask for)",
            trimmed.kept_files,
            trimmed.kept_files + trimmed.removed_files,
            trimmed.kept_bytes as f64 / 1e6,
            (trimmed.kept_bytes + trimmed.removed_bytes) as f64 / 1e6,
            section.modules.join(", ")
        ));
    }
    Ok(())
}

/// Every firmware file (relative to the firmware directory) the modules ask for, read with the
/// tree's own modinfo for the tree's kernel.
fn wanted_files(tree: &Path, modules: &[String]) -> Result<BTreeSet<String>> {
    let kernel = kernel_version(tree)?;
    let mut wanted = BTreeSet::new();
    for module in modules {
        let out = cmd!("chroot", tree, "modinfo", "-k", &kernel, "-F", "firmware", module)
            .stderr_to_stdout()
            .unchecked()
            .read()
            .with_context(|| format!("running modinfo in {}", tree.display()))?;
        if out.contains("ERROR") || out.contains("not found") {
            bail!("firmware.modules: the kernel {kernel} has no module {module:?} ({})", out.trim());
        }
        let files: Vec<&str> = out.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        if files.is_empty() {
            bail!("firmware.modules: {module} asks for no firmware, so it keeps nothing: remove it from the list");
        }
        wanted.extend(files.into_iter().map(str::to_string));
    }
    Ok(wanted)
}

fn kernel_version(tree: &Path) -> Result<String> {
    let modules = tree.join("usr/lib/modules");
    let versions: Vec<String> = fs::read_dir(&modules)
        .with_context(|| format!("reading {}", modules.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match versions.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("{} holds {} kernels ({}); the image has exactly one", modules.display(), versions.len(), versions.join(", ")),
    }
}

#[derive(Debug, Default)]
struct Trimmed {
    kept_files: usize,
    kept_bytes: u64,
    removed_files: usize,
    removed_bytes: u64,
}

/// Removes the package's firmware files that no wanted file is, or links to.
fn trim_package(tree: &Path, package: &str, wanted: &BTreeSet<String>) -> Result<Trimmed> {
    let list = tree.join(format!("var/lib/dpkg/info/{package}.list"));
    let text = fs::read_to_string(&list).with_context(|| format!("reading {} (is {package} installed?)", list.display()))?;
    let files: Vec<(String, PathBuf)> = text
        .lines()
        .filter_map(|line| FIRMWARE_DIRS.iter().find_map(|dir| line.strip_prefix(dir)).map(|rel| (rel.to_string(), tree.join(line.trim_start_matches('/')))))
        .filter(|(_, path)| path.symlink_metadata().is_ok_and(|m| !m.is_dir()))
        .collect();
    // A wanted name may be a link: its target stays too, followed to the end.
    let mut keep = BTreeSet::new();
    for (rel, _) in files.iter().filter(|(rel, _)| wanted.contains(rel)) {
        let mut rel = rel.clone();
        while keep.insert(rel.clone()) {
            let Some(path) = files.iter().find(|(r, _)| *r == rel).map(|(_, p)| p) else { break };
            match fs::read_link(path) {
                Ok(target) => rel = normalise(Path::new(&rel).parent().unwrap_or(Path::new("")).join(target)),
                Err(_) => break,
            }
        }
    }
    let mut trimmed = Trimmed::default();
    for (rel, path) in &files {
        let bytes = path.symlink_metadata().map(|m| m.len()).unwrap_or(0);
        if keep.contains(rel) {
            trimmed.kept_files += 1;
            trimmed.kept_bytes += bytes;
        } else {
            fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
            trimmed.removed_files += 1;
            trimmed.removed_bytes += bytes;
        }
    }
    remove_empty_dirs(&tree.join("usr/lib/firmware"))?;
    Ok(trimmed)
}

/// `a/b/../c` → `a/c`, without touching the file system.
fn normalise(path: PathBuf) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                parts.pop();
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

fn remove_empty_dirs(dir: &Path) -> Result<bool> {
    let mut empty = true;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() && remove_empty_dirs(&path)? {
            fs::remove_dir(&path).with_context(|| format!("removing {}", path.display()))?;
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wanted_files_and_what_they_link_to_stay() {
        let tree = tempfile::tempdir().unwrap();
        let fw = tree.path().join("usr/lib/firmware");
        fs::create_dir_all(fw.join("vendor/old")).unwrap();
        fs::create_dir_all(tree.path().join("var/lib/dpkg/info")).unwrap();
        fs::write(fw.join("vendor/chip-1.bin"), b"kept").unwrap();
        fs::write(fw.join("vendor/real-2.bin"), b"linked to").unwrap();
        std::os::unix::fs::symlink("real-2.bin", fw.join("vendor/chip-2.bin")).unwrap();
        fs::write(fw.join("vendor/old/other.bin"), b"dropped").unwrap();
        fs::write(fw.join("unowned.bin"), b"another package's").unwrap();
        let list = "/.\n/usr/lib/firmware\n/usr/lib/firmware/vendor\n/usr/lib/firmware/vendor/chip-1.bin\n/usr/lib/firmware/vendor/real-2.bin\n\
                    /usr/lib/firmware/vendor/chip-2.bin\n/usr/lib/firmware/vendor/old\n/usr/lib/firmware/vendor/old/other.bin\n";
        fs::write(tree.path().join("var/lib/dpkg/info/firmware-vendor.list"), list).unwrap();
        let wanted = ["vendor/chip-1.bin", "vendor/chip-2.bin", "vendor/absent.bin"].map(String::from).into();
        let trimmed = trim_package(tree.path(), "firmware-vendor", &wanted).unwrap();
        assert_eq!((trimmed.kept_files, trimmed.removed_files), (3, 1));
        assert!(fw.join("vendor/chip-1.bin").exists() && fw.join("vendor/chip-2.bin").exists() && fw.join("vendor/real-2.bin").exists());
        assert!(!fw.join("vendor/old").exists(), "an emptied directory goes too");
        assert!(fw.join("unowned.bin").exists(), "files of other packages stay");
        assert!(trim_package(tree.path(), "firmware-absent", &wanted).unwrap_err().to_string().contains("is firmware-absent installed?"));
    }
}
