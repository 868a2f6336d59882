//! The image manifest, `<image>.manifest.json` beside every image: what was built from what,
//! and where each partition lies. The builder writes it; `cargo xtask release`, the image
//! comparison and the system tests read it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub profile: String,
    /// The sha256 of every input of the build (the step cache's key).
    pub inputs_sha256: String,
    /// The dm-verity root hash on the kernel command line.
    pub roothash: String,
    pub kernel: String,
    pub partitions: Vec<Partition>,
    pub packages: Vec<Package>,
    /// The largest installed packages, largest first.
    pub largest_packages: Vec<InstalledSize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    /// systemd-repart's partition type, e.g. `esp`, `root-x86-64`.
    #[serde(rename = "type")]
    pub kind: String,
    pub label: String,
    pub uuid: String,
    /// Byte offset in the image.
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstalledSize {
    pub name: String,
    pub installed_bytes: u64,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not an image manifest ({e}): rebuild the image"))
    }

    /// The partition labelled `label`.
    pub fn partition(&self, label: &str) -> Result<&Partition, String> {
        self.partitions.iter().find(|p| p.label == label).ok_or_else(|| format!("the image has no partition labelled {label}"))
    }
}
