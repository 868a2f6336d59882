//! The model library on the data partition: content-addressed blobs plus a manifest of names.
//!
//! Layout under the library directory:
//! - `blobs/<sha256>.gguf`: one file per distinct model file, never modified once in place;
//! - `manifest.json`: names (`smollm2:135m-q4_1`) mapped to blobs.
//!
//! A blob enters the library only whole: it is copied to a temporary name while being hashed,
//! checked to be a readable GGUF, fsynced and renamed. Removing the last name of a blob removes
//! the blob.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use hellas_model::gguf::GgufFile;
use crate::state_file::{sync_dir, unix_now, StateFile};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    pub name: String,
    /// sha256 of the GGUF file, lowercase hex.
    pub sha256: String,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub added: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub models: BTreeMap<String, ModelEntry>,
}

pub struct ModelLibrary {
    dir: PathBuf,
    manifest: StateFile<Manifest>,
}

impl ModelLibrary {
    pub fn open(dir: PathBuf) -> ModelLibrary {
        let manifest = StateFile::new(dir.join("manifest.json"));
        ModelLibrary { dir, manifest }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn list(&self) -> Result<Vec<ModelEntry>> {
        Ok(self.manifest.load()?.models.values().cloned().collect())
    }

    /// Finds a model by exact name, or by `name:latest` when no tag is given (as Ollama does).
    pub fn get(&self, name: &str) -> Result<Option<ModelEntry>> {
        let manifest = self.manifest.load()?;
        let found = manifest.models.get(name).or_else(|| {
            if name.contains(':') {
                None
            } else {
                manifest.models.get(&format!("{name}:latest"))
            }
        });
        Ok(found.cloned())
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("blobs").join(format!("{sha256}.gguf"))
    }

    /// Copies `source` into the library under `name`. The name must be new.
    pub fn add_file(&self, source: &Path, name: &str) -> Result<ModelEntry> {
        self.check_new(source, name)?;
        let (sha256, size) = self.import_blob(source)?;
        self.insert(name, sha256, size)
    }

    /// Moves a file whose sha256 the caller has verified (a finished download on the same file
    /// system) into the library under `name`, without copying it.
    pub fn adopt_verified(&self, file: &Path, name: &str, sha256: &str) -> Result<ModelEntry> {
        self.check_new(file, name)?;
        let size = fs::metadata(file).with_context(|| format!("reading {}", file.display()))?.len();
        let blobs = self.dir.join("blobs");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let dest = self.blob_path(sha256);
        fs::rename(file, &dest).with_context(|| format!("renaming {} to {}", file.display(), dest.display()))?;
        sync_dir(&blobs)?;
        self.insert(name, sha256.to_string(), size)
    }

    fn check_new(&self, source: &Path, name: &str) -> Result<()> {
        validate_name(name)?;
        if self.get(name)?.is_some_and(|e| e.name == name) {
            bail!("a model named '{name}' is already in the library: remove it first with `hellasd models rm {name}`");
        }
        // Refuse what is not a readable GGUF before copying gigabytes.
        GgufFile::open(source).with_context(|| format!("{} is not a usable GGUF model", source.display()))?;
        Ok(())
    }

    fn insert(&self, name: &str, sha256: String, size: u64) -> Result<ModelEntry> {
        let entry = ModelEntry { name: name.to_string(), sha256, size, added: unix_now() };
        self.manifest.update(|m| {
            if m.models.contains_key(name) {
                bail!("a model named '{name}' was added meanwhile");
            }
            m.models.insert(name.to_string(), entry.clone());
            Ok(())
        })?;
        Ok(entry)
    }

    /// Copies a file into `blobs/` under its digest; returns (sha256, size).
    fn import_blob(&self, source: &Path) -> Result<(String, u64)> {
        let blobs = self.dir.join("blobs");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let tmp = blobs.join(format!(".import-{}-{}", std::process::id(), rand::random::<u32>()));
        let result = (|| -> Result<(String, u64)> {
            let mut input = File::open(source).with_context(|| format!("opening {}", source.display()))?;
            let mut output = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut size = 0u64;
            loop {
                let n = input.read(&mut buf).with_context(|| format!("reading {}", source.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n]).with_context(|| format!("writing {}", tmp.display()))?;
                size += n as u64;
            }
            output.sync_all().with_context(|| format!("syncing {}", tmp.display()))?;
            let sha256 = hex::encode(hasher.finalize());
            let dest = self.blob_path(&sha256);
            fs::rename(&tmp, &dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
            sync_dir(&blobs)?;
            Ok((sha256, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Removes a name; the blob goes too when no other name uses it.
    pub fn remove(&self, name: &str) -> Result<ModelEntry> {
        let (entry, orphaned) = self.manifest.update(|m| {
            let entry = m.models.remove(name).with_context(|| format!("no model named '{name}' in the library"))?;
            let orphaned = !m.models.values().any(|e| e.sha256 == entry.sha256);
            Ok((entry, orphaned))
        })?;
        if orphaned {
            let blob = self.blob_path(&entry.sha256);
            fs::remove_file(&blob).with_context(|| format!("removing {}", blob.display()))?;
        }
        Ok(entry)
    }
}

/// Model names are `name[:tag]` of lowercase letters, digits, `.`, `_` and `-`, so a name can
/// never be a path (`../`, `/etc/x`, NUL) or clash with the library's own files.
pub fn validate_name(name: &str) -> Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
    };
    let mut parts = name.splitn(2, ':');
    let base = parts.next().unwrap_or("");
    let tag_ok = parts.next().is_none_or(ok_part);
    if ok_part(base) && tag_ok {
        Ok(())
    } else {
        bail!(
            "invalid model name {name:?}: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, optionally ':tag' (e.g. smollm2:135m-q4_1)"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["smollm2:135m-q4_1", "gemma3", "a.b_c-d:1"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "../x", "/etc/passwd", "a\0b", "A", "x:", ":x", "a:b:c", "a/b", ".hidden", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn refuses_non_gguf_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let lib = ModelLibrary::open(dir.path().join("lib"));
        let junk = dir.path().join("junk.gguf");
        fs::write(&junk, b"this is not a model").unwrap();
        let err = format!("{:#}", lib.add_file(&junk, "junk").unwrap_err());
        assert!(err.contains("junk.gguf"), "{err}");
        assert!(lib.list().unwrap().is_empty());
        assert!(!dir.path().join("lib/blobs").exists() || fs::read_dir(dir.path().join("lib/blobs")).unwrap().count() == 0);
    }
}
