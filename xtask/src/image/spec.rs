//! The image spec, `image/hellas.toml`: what goes into an image. Every key is documented in
//! `docs/image-spec.md`; an unknown key or a wrong type is an error naming the file, line and key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    pub image: ImageSection,
    pub debian: DebianSection,
    /// Package groups by purpose (base, boot, amdgpu, engine, network, …).
    pub packages: BTreeMap<String, Vec<String>>,
    pub kernel: KernelSection,
    /// Firmware packages trimmed to what the boxes' drivers load.
    #[serde(default)]
    pub firmware: FirmwareSection,
    pub partitions: PartitionsSection,
    /// The profile built when none is named.
    pub default_profile: String,
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    pub name: String,
    pub version: String,
    pub hostname: String,
    /// Timestamp every file in the image carries; unset = the last commit's time.
    pub source_date_epoch: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSection {
    pub suite: String,
    pub components: Vec<String>,
    pub architecture: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSection {
    /// The oldest acceptable version of the locked kernel package's kernel (e.g. 6.18.4).
    pub min_version: String,
    pub cmdline: Vec<String>,
}

/// `[firmware]`: of each package in `trim`, only the files that a module in `modules` asks for
/// (`modinfo -F firmware`) stay in the image; the rest is firmware for chips no box has.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSection {
    #[serde(default)]
    pub trim: Vec<String>,
    #[serde(default)]
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsSection {
    pub esp: Size,
    /// Each root slot (A and B); the verity hash partition is sized from it.
    pub root: Size,
    /// The data partition as shipped; it grows to fill the disk on first boot.
    pub data: Size,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default)]
    pub description: String,
    /// Extra kernel command-line parameters.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// Test models placed in the data partition's model library (files from `cargo xtask models`).
    #[serde(default)]
    pub models: Vec<ProfileModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileModel {
    pub name: String,
    pub file: String,
}

/// A size written as bytes or with a binary suffix: `512M`, `3G`, `300MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Size(pub u64);

impl TryFrom<String> for Size {
    type Error = String;
    fn try_from(text: String) -> Result<Size, String> {
        let t = text.trim();
        let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(digits);
        let n: u64 = number.parse().map_err(|_| format!("invalid size {text:?}: expected e.g. 512M or 3G"))?;
        let shift = match unit.trim() {
            "" | "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            other => return Err(format!("invalid size unit {other:?} in {text:?}: use K, M or G (powers of 1024)")),
        };
        n.checked_mul(1 << shift).map(Size).ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl From<Size> for String {
    fn from(size: Size) -> String {
        size.0.to_string()
    }
}

/// A version as release files and partition labels carry it: `0.2.0`, `1.0-rc1`.
pub fn check_version(version: &str) -> Result<String> {
    let ok = !version.is_empty()
        && version.len() <= 32
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'~');
    if !ok {
        bail!("version {version:?}: use digits, letters, '.', '-' and '~', starting with a digit (e.g. 0.2.0); '_' and '+' would confuse the release file names");
    }
    Ok(version.to_string())
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the image spec {}", path.display()))?;
        let spec: Spec = toml::from_str(&text).with_context(|| format!("invalid image spec {}", path.display()))?;
        spec.check().with_context(|| format!("invalid image spec {}", path.display()))?;
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        if !self.profiles.contains_key(&self.default_profile) {
            bail!("default_profile = {:?} names no [profiles.*] table", self.default_profile);
        }
        // Release files are `<name>_<version>_…` and UKIs `<name>_<version>+<tries>.efi`.
        if self.image.name.is_empty() || !self.image.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            bail!("image.name may hold only letters, digits and '-'");
        }
        check_version(&self.image.version).context("image.version")?;
        // The box's first name: the same rule as a name the owner gives it later.
        hellas_contract::box_name::check(&self.image.hostname).map_err(|e| anyhow::anyhow!("image.hostname: {e}"))?;
        for (group, packages) in &self.packages {
            if let Some(bad) = packages.iter().find(|p| !is_package_name(p)) {
                bail!("packages.{group}: {bad:?} is not a Debian package name");
            }
        }
        if let Some(bad) = self.firmware.trim.iter().find(|p| !self.package_list().contains(p)) {
            bail!("firmware.trim: {bad:?} is in no [packages] group, so there is nothing of it to trim");
        }
        if !self.firmware.trim.is_empty() && self.firmware.modules.is_empty() {
            bail!("firmware.modules is empty, so trimming would remove every file of {}: name the drivers whose firmware stays", self.firmware.trim.join(", "));
        }
        if self.partitions.esp.0 < 300 << 20 {
            bail!("partitions.esp must be at least 300M: OVMF and some firmware ignore a FAT32 ESP with too few clusters");
        }
        Ok(())
    }

    pub fn profile(&self, name: Option<&str>) -> Result<(&str, &Profile)> {
        let name = name.unwrap_or(&self.default_profile);
        let (name, profile) = self.profiles.get_key_value(name).with_context(|| {
            format!("no profile {name:?} in the image spec (known: {})", self.profiles.keys().cloned().collect::<Vec<_>>().join(", "))
        })?;
        Ok((name.as_str(), profile))
    }

    /// Every package the image asks for, sorted and without duplicates. Profiles share one
    /// package set, so that one lock file pins every image exactly.
    pub fn package_list(&self) -> Vec<String> {
        let mut all: Vec<String> = self.packages.values().flatten().cloned().collect();
        all.sort();
        all.dedup();
        all
    }

    pub fn cmdline(&self, profile: &Profile) -> Vec<String> {
        self.kernel.cmdline.iter().chain(&profile.cmdline).cloned().collect()
    }
}

fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_path() -> std::path::PathBuf {
        crate::workspace::root().unwrap().join("image/hellas.toml")
    }

    #[test]
    fn the_default_spec_is_valid() {
        let spec = Spec::load(&spec_path()).unwrap();
        let (name, profile) = spec.profile(None).unwrap();
        assert_eq!(name, "strix-halo");
        assert!(!profile.description.is_empty());
        let packages = spec.package_list();
        for needed in ["linux-image-amd64", "llama.cpp-tools", "firmware-amd-graphics", "avahi-daemon"] {
            assert!(packages.iter().any(|p| p == needed), "{needed} missing");
        }
        assert!(spec.profile(Some("qemu-test")).is_ok());
    }

    fn load_str(text: &str) -> String {
        let dir = std::env::temp_dir().join(format!("spec-test-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hellas.toml");
        std::fs::write(&path, text).unwrap();
        let err = format!("{:#}", Spec::load(&path).unwrap_err());
        std::fs::remove_dir_all(&dir).unwrap();
        err
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_file_line_and_key() {
        let good = std::fs::read_to_string(spec_path()).unwrap();
        let unknown = good.replacen("[kernel]\n", "[kernel]\ncmdlin = []\n", 1);
        let err = load_str(&unknown);
        assert!(err.contains("hellas.toml") && err.contains("cmdlin") && err.contains("line"), "{err}");
        let wrong = good.replacen("esp = \"512M\"", "esp = 12", 1);
        let err = load_str(&wrong);
        assert!(err.contains("esp"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(Size::try_from("512M".to_string()).unwrap(), Size(512 << 20));
        assert_eq!(Size::try_from("3G".to_string()).unwrap(), Size(3 << 30));
        assert_eq!(Size::try_from("1024".to_string()).unwrap(), Size(1024));
        assert!(Size::try_from("3GB".to_string()).is_err());
        assert!(Size::try_from("lots".to_string()).is_err());
    }
}
