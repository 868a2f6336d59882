//! The curated model catalog shipped in the image (`/usr/share/hellas/catalog.toml`) and the
//! planner's verdict on each entry for this box, known before a byte of weights is downloaded.
//!
//! The verdict needs the model's shape (layers, heads, context, tensor sizes), which is in the
//! GGUF header at the start of the file: it is fetched with an HTTP range request, parsed by the
//! same reader the library uses, and kept in the state directory so each header is fetched once.

mod download;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use reqwest::header;
use serde::{Deserialize, Serialize};

use hellas_model::gguf::{GgufFile, ModelInfo};
use crate::hub::RemoteFile;
use crate::library::validate_name;
use hellas_model::plan::{self as planner, Plan, PlanRequest, Verdict};
use crate::state_file::write_atomically;

pub use download::{Downloads, Progress, Pull};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    model: Vec<CatalogEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// The name it gets in the library, e.g. `smollm2:135m-q4_1`.
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub url: String,
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// e.g. "135M", "30B-A3B".
    pub parameters: String,
    pub architecture: String,
    pub licence: String,
    /// Training context, in tokens.
    pub context: u32,
}

pub struct Catalog {
    pub entries: Vec<CatalogEntry>,
}

impl Catalog {
    /// Reads the catalog; a missing file is an empty catalog.
    pub fn load(path: &Path) -> Result<Catalog> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!("no model catalog at {}: the setup offers no downloads", path.display());
                return Ok(Catalog { entries: Vec::new() });
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let file: CatalogFile = toml::from_str(&text).with_context(|| format!("parsing the model catalog {}", path.display()))?;
        for entry in &file.model {
            check(entry).with_context(|| format!("model '{}' in {}", entry.name, path.display()))?;
        }
        Ok(Catalog { entries: file.model })
    }

    pub fn get(&self, sha256: &str) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.sha256 == sha256)
    }
}

fn check(entry: &CatalogEntry) -> Result<()> {
    validate_name(&entry.name)?;
    if entry.sha256.len() != 64 || !entry.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        bail!("sha256 must be 64 lower-case hex digits");
    }
    if !(entry.url.starts_with("https://") || entry.url.starts_with("http://")) {
        bail!("url must be http:// or https://");
    }
    if entry.size == 0 {
        bail!("size must be the file's size in bytes");
    }
    Ok(())
}

/// What the planner says about an entry on this box.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "fit", rename_all = "snake_case")]
pub enum Fit {
    Installed,
    Fits { ctx: u32, need: u64 },
    FitsSmallerContext { ctx: u32, need: u64 },
    /// Not here alone, but across this box and paired ones.
    FitsAcross { boxes: Vec<String>, ctx: u32, need: u64 },
    /// `boxes`: how many boxes with this budget would hold it.
    DoesNotFit { short_by: u64, boxes: u64 },
    /// The header could not be read; the file size alone says whether the weights could fit.
    Unknown { reason: String, weights_fit: bool },
}

impl Fit {
    /// One line for people.
    pub fn describe(&self) -> String {
        let f = planner::format_bytes;
        match self {
            Fit::Installed => "installed".into(),
            Fit::Fits { ctx, need } => format!("fits at context {ctx} (needs {})", f(*need)),
            Fit::FitsSmallerContext { ctx, need } => format!("fits only at a smaller context: {ctx} (needs {})", f(*need)),
            Fit::FitsAcross { boxes, ctx, need } => format!("fits across {} at context {ctx} (needs {})", boxes.join("+"), f(*need)),
            Fit::DoesNotFit { short_by, boxes } if *boxes > 1 => {
                format!("does not fit: {} short; needs {boxes} boxes like this one", f(*short_by))
            }
            Fit::DoesNotFit { short_by, .. } => format!("does not fit: {} short", f(*short_by)),
            Fit::Unknown { reason, weights_fit: true } => format!("fit unknown ({reason}); the weights alone fit"),
            Fit::Unknown { weights_fit: false, .. } => "does not fit: the weights alone exceed this box's budget".into(),
        }
    }

    pub fn downloadable(&self) -> bool {
        matches!(self, Fit::Fits { .. } | Fit::FitsSmallerContext { .. } | Fit::FitsAcross { .. } | Fit::Unknown { weights_fit: true, .. })
    }
}

/// The fit of `info` here; `split` is what the pool offers when it does not fit here as asked.
pub fn fit(info: &ModelInfo, request: &PlanRequest, split: impl FnOnce(&Plan) -> Option<Plan>) -> Fit {
    let plan = planner::plan(info, request);
    if let Some(across) = split(&plan).filter(|p| p.split.is_some()) {
        let boxes = across.split.as_ref().map(|s| s.names()).unwrap_or_default();
        return Fit::FitsAcross { boxes, ctx: across.ctx, need: across.total };
    }
    match plan.verdict {
        Verdict::Fits => Fit::Fits { ctx: plan.ctx, need: plan.total },
        Verdict::FitsSmallerContext { max_ctx } => {
            let smaller = planner::plan(info, &PlanRequest { ctx: max_ctx, ..*request });
            Fit::FitsSmallerContext { ctx: max_ctx, need: smaller.total }
        }
        Verdict::DoesNotFit { short_by } => {
            let boxes = if request.budget == 0 { 0 } else { (request.budget + short_by).div_ceil(request.budget) };
            Fit::DoesNotFit { short_by, boxes }
        }
    }
}

/// Fetches and keeps GGUF headers of catalog entries.
pub struct Headers {
    dir: PathBuf,
    http: reqwest::Client,
}

/// Header prefixes to try: most models' headers fit in the first; large vocabularies need more.
const PREFIXES: [u64; 3] = [4 << 20, 32 << 20, 128 << 20];

impl Headers {
    pub fn new(dir: PathBuf, http: reqwest::Client) -> Headers {
        Headers { dir, http }
    }

    /// The model's shape from its header (of a split model, every part's), fetched and kept
    /// when not known yet.
    pub async fn info(&self, pull: &Pull) -> Result<ModelInfo> {
        let mut parts = Vec::new();
        for file in &pull.parts {
            parts.push(self.header(file).await?);
        }
        Ok(GgufFile::join_split(parts).and_then(|file| file.model_info()).with_context(|| format!("reading the GGUF header of {}", pull.parts[0].url))?)
    }

    async fn header(&self, file: &RemoteFile) -> Result<GgufFile> {
        let kept = self.dir.join(format!("{}.head", file.sha256));
        if let Ok(bytes) = fs::read(&kept) {
            if let Ok(header) = GgufFile::parse(bytes.as_slice(), file.size) {
                return Ok(header);
            }
        }
        let mut last_error = None;
        for prefix in PREFIXES.into_iter().map(|p| p.min(file.size)) {
            let bytes = self.fetch_prefix(file, prefix).await?;
            match GgufFile::parse(bytes.as_slice(), file.size) {
                Ok(header) => {
                    fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
                    write_atomically(&kept, &bytes)?;
                    return Ok(header);
                }
                Err(e) => last_error = Some(e),
            }
            if prefix == file.size {
                break;
            }
        }
        Err(last_error.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("empty header")))
            .with_context(|| format!("reading the GGUF header of {}: is it a GGUF file?", file.url))
    }

    async fn fetch_prefix(&self, entry: &RemoteFile, len: u64) -> Result<Vec<u8>> {
        let response = self
            .http
            .get(&entry.url)
            .header(header::RANGE, format!("bytes=0-{}", len - 1))
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("fetching the header of {}", entry.url))?
            .error_for_status()
            .with_context(|| format!("fetching the header of {}", entry.url))?;
        // A server that ignores ranges sends the whole file: read only what was asked for.
        let mut bytes = Vec::with_capacity(len as usize);
        let mut stream = response.bytes_stream();
        use futures_util::StreamExt;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.with_context(|| format!("reading the header of {}", entry.url))?;
            let room = len as usize - bytes.len();
            bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if bytes.len() as u64 >= len {
                break;
            }
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog(text: &str) -> Result<Catalog> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.toml");
        fs::write(&path, text).unwrap();
        Catalog::load(&path)
    }

    const ENTRY: &str = r#"
[[model]]
name = "smollm2:135m-q4_1"
title = "SmolLM2 135M Instruct"
url = "http://127.0.0.1:1/SmolLM2.gguf"
sha256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
size = 85000000
parameters = "135M"
architecture = "llama"
licence = "Apache-2.0"
context = 8192
"#;

    #[test]
    fn the_picker_says_which_boxes_hold_what_this_one_cannot() {
        use hellas_model::plan::Margin;
        use hellas_model::pool::plan_split_largest;
    use hellas_model::testing::{member, model};
        let info = model();
        let request = PlanRequest { ctx: 2048, parallel: 1, cache_type: hellas_model::plan::CacheType::F16, budget: 200 << 20 };
        let alone = fit(&info, &request, |_| None);
        assert!(matches!(alone, Fit::DoesNotFit { boxes: 2, .. }), "{alone:?}");
        let (head, peers) = (member("alpha", 200 << 20, false), [member("bravo", 300 << 20, true)]);
        let across = fit(&info, &request, |local| plan_split_largest(&info, &PlanRequest { ctx: local.ctx, ..request }, &head, &peers, &Margin::default()));
        assert_eq!(across.describe().split(" at ").next(), Some("fits across alpha+bravo"), "{across:?}");
        assert!(across.downloadable());
    }

    #[test]
    fn entries_are_checked() {
        assert_eq!(catalog(ENTRY).unwrap().entries.len(), 1);
        assert!(catalog(&ENTRY.replace("name = \"smollm2:135m-q4_1\"", "name = \"../x\"")).is_err());
        assert!(catalog(&ENTRY.replace("b179c9", "Z179c9")).is_err());
        assert!(catalog(&ENTRY.replace("http://", "file://")).is_err());
        let unknown = catalog(&format!("{ENTRY}colour = 1\n")).err().unwrap();
        assert!(format!("{unknown:#}").contains("colour"), "{unknown:#}");
        assert!(Catalog::load(Path::new("/nonexistent/catalog.toml")).unwrap().entries.is_empty());
    }

    #[test]
    fn the_shipped_catalog_is_valid() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rootfs-overlay/usr/share/hellas/catalog.toml");
        assert!(!Catalog::load(&shipped).unwrap().entries.is_empty());
    }
}
