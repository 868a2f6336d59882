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
    /// The kernel's version, when the image has one.
    pub kernel: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_manifest_reads_back() {
        // Cut from a real build's manifest.
        let text = r#"{"name":"hellas","version":"0.1.0","profile":"qemu-test","inputs_sha256":"ab","roothash":"cd","kernel":"6.18.5",
            "partitions":[{"label":"ESP","offset":1048576,"size":536870912,"type":"esp","uuid":"0438e6f5-c285-4671-8218-58babe5233c5"},
                {"label":"hellas_0.1.0","offset":537919488,"size":2147483648,"type":"root-x86-64","uuid":"5454e0c3-9f64-1f88-2ffa-eaceceb4259e"}],
            "packages":[{"name":"systemd","version":"259-1","architecture":"amd64"}],"largest_packages":[{"name":"llama.cpp","installed_bytes":1024}]}"#;
        let manifest = Manifest::parse(text.as_bytes()).unwrap();
        assert_eq!(manifest.partition(&crate::release::root_label("hellas", "0.1.0")).unwrap().offset, 537919488);
        assert!(manifest.partition("hellas_0.2.0").unwrap_err().contains("no partition labelled"));
        assert_eq!(Manifest::parse(serde_json::to_string(&manifest).unwrap().as_bytes()).unwrap(), manifest);
        assert!(Manifest::parse(b"{}").unwrap_err().contains("rebuild the image"));
    }
}
