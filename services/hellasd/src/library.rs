//! The model library on the data partition: content-addressed blobs plus a manifest of names.
//!
//! Layout under the library directory:
//! - `blobs/<sha256>.gguf`: one file per distinct model file, never modified once in place;
//! - `manifest.json`: names (`smollm2:135m-q4_1`) mapped to blobs;
//! - `split/<sha256 of the first part>/`: for a model split into several files, links to its
//!   blobs under the parts' own names, because llama.cpp finds a split's parts by name beside
//!   the first.
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

use hellas_model::gguf::{split, GgufFile, ModelInfo, ModelKind};
use crate::state_file::{sync_dir, unix_now, StateFile};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    pub name: String,
    /// sha256 of the GGUF file (of a split model, its first part), lowercase hex.
    pub sha256: String,
    /// Bytes, of all its files together.
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub added: u64,
    /// A split model's parts in order, the first included; empty for a model in one file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<ModelFile>,
    /// The vision projector, given to llama-server as `--mmproj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projector: Option<ModelFile>,
    /// Where it came from, pinned: `hf.co/ORG/REPO:QUANT@<commit>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The library model it drafts with (speculative decoding, `--model-draft`): a smaller
    /// model of the same vocabulary, set by `hellasd models draft`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
}

/// One file of a model that has several: a split model's part, or a projector.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelFile {
    /// Its own name, which llama.cpp finds a split's other parts by.
    pub file: String,
    pub sha256: String,
    pub size: u64,
}

impl ModelEntry {
    /// The digests of every blob the model uses.
    pub fn blobs(&self) -> Vec<&str> {
        let mut blobs: Vec<&str> = std::iter::once(self.sha256.as_str()).chain(self.parts.iter().chain(&self.projector).map(|f| f.sha256.as_str())).collect();
        blobs.sort();
        blobs.dedup();
        blobs
    }
}

/// What a model can be asked for, as Ollama's `/api/show` names it: an embedding model makes
/// embeddings only; a reranker only reranks (`/v1/rerank`: Ollama has no name or route for
/// it, so "rerank" is this box's); a generative one completes text, calls tools when its chat
/// template takes them, and sees images when it has a projector.
pub fn capabilities(entry: &ModelEntry, info: &ModelInfo) -> Vec<&'static str> {
    match info.kind {
        ModelKind::Embedding => return vec!["embedding"],
        ModelKind::Reranker => return vec!["rerank"],
        ModelKind::Generative => {}
    }
    let mut capabilities = vec!["completion"];
    if info.chat_template.as_deref().is_some_and(|t| t.contains("tools")) {
        capabilities.push("tools");
    }
    if entry.projector.is_some() {
        capabilities.push("vision");
    }
    capabilities
}

/// The memory a vision projector takes beside its model; when its shape cannot be planned (a
/// projector type the planner does not know), at least its weights, with a warning.
pub fn projector_memory(mmproj: &GgufFile, what: &str) -> hellas_model::projector::ProjectorEstimate {
    hellas_model::projector::estimate(mmproj).unwrap_or_else(|e| {
        tracing::warn!("planning the projector {what} by its weights alone: {e}");
        hellas_model::projector::ProjectorEstimate { weights: mmproj.tensors.iter().map(|t| t.n_bytes).sum(), compute: 0 }
    })
}

/// A model to register whose files are all in the library's blobs already.
pub struct NewModel {
    pub name: String,
    /// Its GGUF file, or a split model's parts in order.
    pub parts: Vec<ModelFile>,
    pub projector: Option<ModelFile>,
    pub source: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub models: BTreeMap<String, ModelEntry>,
}

impl Manifest {
    /// The model that drafts with `name`, if one does.
    fn drafted_by(&self, name: &str) -> Option<&ModelEntry> {
        self.models.values().find(|e| e.draft.as_deref() == Some(name))
    }

    /// Why `name` may not be removed now, if it may not: another model drafts with it.
    fn removal_refusal(&self, name: &str) -> Option<String> {
        let user = &self.drafted_by(name)?.name;
        Some(format!("'{name}' is the draft model of '{user}': `hellasd models draft {user} --none` first"))
    }
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
        // Names are stored lower-case; clients may ask with the case of a pulled reference.
        let name = name.to_ascii_lowercase();
        let found = manifest.models.get(&name).or_else(|| {
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

    fn split_dir(&self, first: &str) -> PathBuf {
        self.dir.join("split").join(first)
    }

    /// The file llama-server loads: the blob, or for a split model its first part among links
    /// to all of them under their own names.
    pub fn model_path(&self, entry: &ModelEntry) -> PathBuf {
        match entry.parts.first() {
            Some(first) => self.split_dir(&entry.sha256).join(&first.file),
            None => self.blob_path(&entry.sha256),
        }
    }

    pub fn projector_path(&self, entry: &ModelEntry) -> Option<PathBuf> {
        entry.projector.as_ref().map(|p| self.blob_path(&p.sha256))
    }

    /// Links a split model's parts under their own names, beside each other.
    fn link_split(&self, entry: &ModelEntry) -> Result<()> {
        if entry.parts.is_empty() {
            return Ok(());
        }
        let dir = self.split_dir(&entry.sha256);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for part in &entry.parts {
            if !split::parse_name(&part.file).is_some_and(|(_, no, count)| count as usize == entry.parts.len() && part.file == entry.parts[no as usize - 1].file) {
                bail!("'{}' is not a part name of this {}-part split model", part.file, entry.parts.len());
            }
            let link = dir.join(&part.file);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(self.blob_path(&part.sha256), &link).with_context(|| format!("linking {}", link.display()))?;
        }
        sync_dir(&dir)
    }

    /// The model's header and tensor table (of a split model, all its parts' joined).
    pub fn gguf(&self, entry: &ModelEntry) -> Result<GgufFile> {
        let open = |sha256: &str| {
            let path = self.blob_path(sha256);
            GgufFile::open(&path).with_context(|| format!("reading {}", path.display()))
        };
        // A lone file that is a split's first part joins as an incomplete split: refused.
        let parts = if entry.parts.is_empty() { vec![open(&entry.sha256)?] } else { entry.parts.iter().map(|p| open(&p.sha256)).collect::<Result<Vec<_>>>()? };
        Ok(GgufFile::join_split(parts)?)
    }

    /// The model's facts from its header (of a split model, from all its parts), with its
    /// vision projector's memory and its draft model's facts when it has them.
    pub fn model_info(&self, entry: &ModelEntry) -> Result<ModelInfo> {
        let mut info = self.gguf(entry)?.model_info()?;
        if let Some(projector) = &entry.projector {
            let path = self.blob_path(&projector.sha256);
            let mmproj = GgufFile::open(&path).with_context(|| format!("reading the projector {}", path.display()))?;
            info.projector = Some(projector_memory(&mmproj, &path.display().to_string()));
        }
        if let Some(draft) = self.draft_of(entry)? {
            info.draft = Some(Box::new(self.gguf(&draft)?.model_info().with_context(|| format!("reading the draft model '{}'", draft.name))?));
        }
        Ok(info)
    }

    /// The library entry of the model `entry` drafts with, if it names one.
    pub fn draft_of(&self, entry: &ModelEntry) -> Result<Option<ModelEntry>> {
        let Some(name) = &entry.draft else { return Ok(None) };
        let draft = self.get(name)?.with_context(|| {
            format!("model '{}' drafts with '{name}', which is not in the library: add it, or `hellasd models draft {} --none`", entry.name, entry.name)
        })?;
        Ok(Some(draft))
    }

    /// Why `name` may not be removed now (another model drafts with it), if it may not.
    pub fn removal_refusal(&self, name: &str) -> Result<Option<String>> {
        Ok(self.manifest.load()?.removal_refusal(name))
    }

    /// Makes the model `name` draft with the model `draft` (or with none): both must generate
    /// text with the same tokenizer, as llama-server requires of a target and its draft.
    pub fn set_draft(&self, name: &str, draft: Option<&str>) -> Result<ModelEntry> {
        let entry = self.get(name)?.with_context(|| format!("no model named '{name}' in the library"))?;
        if let Some(draft) = draft {
            if draft == name {
                bail!("a model cannot draft for itself; name a smaller model of the same family");
            }
            let candidate = self.get(draft)?.with_context(|| format!("no model named '{draft}' in the library"))?;
            if candidate.draft.is_some() {
                bail!("'{draft}' drafts with a model of its own; a draft model cannot have one");
            }
            check_draft(&self.gguf(&entry)?, &self.gguf(&candidate)?).with_context(|| format!("'{draft}' cannot draft for '{name}'"))?;
        }
        self.manifest.update(|m| {
            if let Some(user) = m.drafted_by(name) {
                bail!("'{name}' is the draft model of '{}'; a draft model cannot have one", user.name);
            }
            let entry = m.models.get_mut(name).with_context(|| format!("no model named '{name}' in the library"))?;
            entry.draft = draft.map(str::to_string);
            Ok(entry.clone())
        })
    }

    /// Copies `source` into the library under `name`. The name must be new.
    pub fn add_file(&self, source: &Path, name: &str) -> Result<ModelEntry> {
        self.check_new(source, name)?;
        let (sha256, size) = self.import_blob(source)?;
        self.insert(ModelEntry { name: name.to_string(), sha256, size, added: unix_now(), parts: Vec::new(), projector: None, source: None, draft: None })
    }

    /// Moves a file whose sha256 the caller has verified (a finished download on the same file
    /// system) into the blobs, without copying it; a model names it with [`Self::add_model`].
    pub fn adopt_blob(&self, file: &Path, sha256: &str) -> Result<()> {
        let blobs = self.dir.join("blobs");
        fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
        let dest = self.blob_path(sha256);
        fs::rename(file, &dest).with_context(|| format!("renaming {} to {}", file.display(), dest.display()))?;
        sync_dir(&blobs)
    }

    pub fn has_blob(&self, sha256: &str) -> bool {
        self.blob_path(sha256).is_file()
    }

    /// Names a model whose files are in the blobs: a split model's parts must read as one
    /// model (all of them, in order), and the name must be new.
    pub fn add_model(&self, model: NewModel) -> Result<ModelEntry> {
        self.check_name_is_new(&model.name)?;
        let first = model.parts.first().context("a model needs at least one file")?.clone();
        let size = model.parts.iter().chain(&model.projector).map(|f| f.size).sum();
        let entry = ModelEntry {
            name: model.name.clone(),
            sha256: first.sha256.clone(),
            size,
            added: unix_now(),
            parts: if model.parts.len() > 1 { model.parts } else { Vec::new() },
            projector: model.projector,
            source: model.source,
            draft: None,
        };
        self.model_info(&entry).with_context(|| format!("'{}' is not a usable GGUF model", entry.name))?;
        self.link_split(&entry)?;
        self.insert(entry)
    }

    /// A valid name no model has yet.
    fn check_name_is_new(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        if self.get(name)?.is_some_and(|e| e.name == name) {
            bail!("a model named '{name}' is already in the library: remove it first with `hellasd models rm {name}`");
        }
        Ok(())
    }

    fn check_new(&self, source: &Path, name: &str) -> Result<()> {
        self.check_name_is_new(name)?;
        // Refuse what is not a readable GGUF before copying gigabytes.
        GgufFile::open(source).with_context(|| format!("{} is not a usable GGUF model", source.display()))?;
        Ok(())
    }

    fn insert(&self, entry: ModelEntry) -> Result<ModelEntry> {
        let name = entry.name.as_str();
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

    /// Removes those of `sha256s`' blobs that no model uses (what a cancelled download kept).
    pub fn remove_unused(&self, sha256s: &[&str]) -> Result<()> {
        let manifest = self.manifest.load()?;
        let used: Vec<&str> = manifest.models.values().flat_map(|e| e.blobs()).collect();
        for sha256 in sha256s.iter().filter(|s| !used.contains(s)) {
            let blob = self.blob_path(sha256);
            match fs::remove_file(&blob) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(|| format!("removing {}", blob.display())),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes a name; the blob goes too when no other name uses it.
    /// `destination` names the same files as `source` (Ollama's copy): nothing is copied, and
    /// the files stay while either name uses them.
    pub fn copy(&self, source: &str, destination: &str) -> Result<ModelEntry> {
        let entry = self.get(source)?.with_context(|| format!("no model named '{source}' in the library"))?;
        self.check_name_is_new(destination)?;
        self.insert(ModelEntry { name: destination.to_string(), added: unix_now(), ..entry })
    }

    pub fn remove(&self, name: &str) -> Result<ModelEntry> {
        let (entry, orphaned) = self.manifest.update(|m| {
            if let Some(refusal) = m.removal_refusal(name) {
                bail!("{refusal}");
            }
            let entry = m.models.remove(name).with_context(|| format!("no model named '{name}' in the library"))?;
            let used: Vec<&str> = m.models.values().flat_map(|e| e.blobs()).collect();
            let orphaned: Vec<String> = entry.blobs().into_iter().filter(|b| !used.contains(b)).map(str::to_string).collect();
            Ok((entry, orphaned))
        })?;
        if !entry.parts.is_empty() && orphaned.contains(&entry.sha256) {
            let links = self.split_dir(&entry.sha256);
            fs::remove_dir_all(&links).with_context(|| format!("removing {}", links.display()))?;
        }
        for blob in orphaned {
            let blob = self.blob_path(&blob);
            fs::remove_file(&blob).with_context(|| format!("removing {}", blob.display()))?;
        }
        Ok(entry)
    }
}

/// Whether llama-server will take `draft` as `target`'s draft model: both generate text, and
/// their tokenizers are the same kind with the same special tokens and (nearly) the same size,
/// the checks llama.cpp makes before it compares the tokens themselves.
fn check_draft(target: &GgufFile, draft: &GgufFile) -> Result<()> {
    for (file, which) in [(target, "the model"), (draft, "the draft")] {
        if file.model_info()?.kind != ModelKind::Generative {
            bail!("{which} does not generate text");
        }
    }
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre"] {
        let (a, b) = (target.get_str(key), draft.get_str(key));
        if a != b {
            bail!("their tokenizers differ: {key} is {} and {}", a.unwrap_or("unset"), b.unwrap_or("unset"));
        }
    }
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        let (a, b) = (target.get_u32(key)?, draft.get_u32(key)?);
        if a != b {
            bail!("their tokenizers differ: {key} is {a:?} and {b:?}");
        }
    }
    let tokens = |file: &GgufFile| match file.get("tokenizer.ggml.tokens") {
        Some(hellas_model::gguf::MetaValue::Array(tokens)) => tokens.len,
        _ => 0,
    };
    let (a, b) = (tokens(target), tokens(draft));
    // llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE.
    if a.abs_diff(b) > 128 {
        bail!("their vocabularies differ: {a} and {b} tokens");
    }
    Ok(())
}

/// Model names are `name[:tag]` of lowercase letters, digits, `.`, `_` and `-` (the name may be
/// up to three such words joined by `/`, as `hf.co/org/repo`), so a name can never be a path
/// that leaves the library (`../`, `/etc/x`, NUL) or clash with the library's own files.
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
    // A model pulled from Hugging Face is named as Ollama names it: `hf.co/org/repo:quant`.
    let base_ok = base.split('/').count() <= 3 && base.split('/').all(ok_part);
    if base_ok && tag_ok {
        Ok(())
    } else {
        bail!(
            "invalid model name {name:?}: use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, optionally ':tag' (e.g. smollm2:135m-q4_1, or hf.co/org/repo:q4_k_m)"
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
        for good in ["hf.co/unsloth/qwen3-30b-a3b-gguf:q4_k_m", "org/repo"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "../x", "/etc/passwd", "a\0b", "A", "x:", ":x", "a:b:c", "a//b", "a/../b", "a/b/c/d", "hf.co/Org/repo", ".hidden", "a b"] {
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

    /// A two-part split model, its parts as blobs in `lib`.
    fn split_model(lib: &ModelLibrary, dir: &Path) -> Vec<ModelFile> {
        use hellas_model::testing::GgufBuilder;
        let part = |no: u32, tensors: &[&str]| {
            let mut builder = GgufBuilder::new().u32("split.no", no).u32("split.count", 2).u32("split.tensors.count", 3);
            if no == 0 {
                builder = builder
                    .str("general.architecture", "llama")
                    .u32("llama.block_count", 1)
                    .u32("llama.context_length", 2048)
                    .u32("llama.embedding_length", 64)
                    .u32("llama.attention.head_count", 4)
                    .u32("llama.attention.head_count_kv", 4)
                    .u32("llama.feed_forward_length", 128);
            }
            for name in tensors {
                builder = builder.tensor(name, &[64, 64], 0, 64 * 64 * 4);
            }
            builder.build()
        };
        [part(0, &["token_embd.weight", "blk.0.attn_q.weight"]), part(1, &["output.weight"])]
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let file = split::part_name("Tiny-Q8_0", i as u32 + 1, 2);
                let path = dir.join(&file);
                fs::write(&path, bytes).unwrap();
                let sha256 = hex::encode(Sha256::digest(bytes));
                lib.adopt_blob(&path, &sha256).unwrap();
                ModelFile { file, sha256, size: bytes.len() as u64 }
            })
            .collect()
    }

    #[test]
    fn a_split_model_is_one_model_loaded_from_its_first_part() {
        let dir = tempfile::tempdir().unwrap();
        let lib = ModelLibrary::open(dir.path().join("lib"));
        let parts = split_model(&lib, dir.path());
        let incomplete = NewModel { name: "tiny".into(), parts: parts[..1].to_vec(), projector: None, source: None };
        let err = format!("{:#}", lib.add_model(incomplete).unwrap_err());
        assert!(err.contains("is 2, but 1 parts were given"), "{err}");
        assert!(lib.list().unwrap().is_empty(), "nothing registered");

        let entry = lib.add_model(NewModel { name: "tiny".into(), parts: parts.clone(), projector: None, source: Some("hf.co/o/r:Q8_0@abc".into()) }).unwrap();
        assert_eq!(entry.size, parts.iter().map(|p| p.size).sum::<u64>());
        assert_eq!(lib.model_info(&entry).unwrap().tensor_bytes, 3 * 64 * 64 * 4, "every part's tensors count");
        let first = lib.model_path(&entry);
        assert!(first.ends_with("Tiny-Q8_0-00001-of-00002.gguf"), "{}", first.display());
        let second = first.with_file_name("Tiny-Q8_0-00002-of-00002.gguf");
        assert_eq!(fs::read(&second).unwrap().len() as u64, parts[1].size, "the parts lie beside each other under their names");

        lib.remove("tiny").unwrap();
        assert!(!lib.has_blob(&parts[0].sha256) && !lib.has_blob(&parts[1].sha256) && !first.exists());
    }
}
