//! `hellasd models`: the model library from the command line.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hellas_model::plan::{format_bytes, PlanRequest};

use crate::catalog::{self, Downloads, Headers, Progress, Pull};
use crate::config::Config;
use crate::hub::{Hub, Reference};
use crate::library::ModelLibrary;
use crate::memory_budget;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Copy a GGUF file into the library.
    Add {
        file: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// Download a GGUF model from Hugging Face into the library: `hf.co/ORG/REPO:QUANT`, or
    /// `hf.co/ORG/REPO:FILE.gguf`, optionally pinned with `@REVISION`.
    Pull {
        reference: String,
        /// The name in the library (default: the reference as Ollama names it, `hf.co/org/repo:quant`).
        #[arg(long)]
        name: Option<String>,
        /// Download even when the model does not fit this box's memory budget.
        #[arg(long)]
        anyway: bool,
    },
    List,
    Rm { name: String },
    /// Make a model draft with a smaller one of the same vocabulary (speculative decoding:
    /// the small model guesses a few tokens, the large one checks them in one pass), or with
    /// none. The plan counts both; takes effect when the model next loads.
    Draft {
        name: String,
        /// The library model to draft with.
        #[arg(required_unless_present = "none", conflicts_with = "none")]
        draft: Option<String>,
        /// Stop drafting.
        #[arg(long)]
        none: bool,
    },
}

pub fn run(config: &Config, command: ModelsCommand) -> Result<()> {
    let library = ModelLibrary::open(config.state_dir.join("models"));
    match command {
        ModelsCommand::Add { file, name } => {
            let entry = library.add_file(&file, &name)?;
            println!("added {} ({} bytes, sha256 {})", entry.name, entry.size, entry.sha256);
        }
        ModelsCommand::Pull { reference, name, anyway } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(pull(config, library, &reference, name, anyway))?;
        }
        ModelsCommand::List => {
            for entry in library.list()? {
                let kind = library.model_info(&entry).map(|info| crate::library::capabilities(&entry, &info).join(",")).unwrap_or_else(|_| "unreadable".into());
                let draft = entry.draft.as_deref().map(|d| format!(" draft:{d}")).unwrap_or_default();
                println!("{:<40} {:>14} {} {kind}{draft}", entry.name, entry.size, &entry.sha256[..12]);
            }
        }
        ModelsCommand::Rm { name } => {
            library.remove(&name)?;
            println!("removed {name}");
        }
        ModelsCommand::Draft { name, draft, .. } => {
            let entry = library.set_draft(&name, draft.as_deref())?;
            match &entry.draft {
                Some(draft) => println!("{name} drafts with {draft} from its next load"),
                None => println!("{name} drafts with no model from its next load"),
            }
        }
    }
    Ok(())
}

/// Resolves `reference`, says whether the model fits this box, and downloads it, printing the
/// progress; only a whole, verified model is named in the library.
async fn pull(config: &Config, library: ModelLibrary, reference: &str, name: Option<String>, anyway: bool) -> Result<()> {
    let reference: Reference = reference.parse().map_err(anyhow::Error::msg)?;
    let http = reqwest::Client::builder().no_proxy().build().context("building the HTTP client")?;
    let resolved = Hub::new(&config.hub.endpoint, http.clone()).resolve(&reference).await?;
    let name = name.unwrap_or_else(|| resolved.default_name());
    let pull = Pull::from_hub(&resolved, name.to_ascii_lowercase());
    println!("{}: {} file(s), {}", resolved.pinned(), pull.parts.len() + usize::from(pull.projector.is_some()), format_bytes(pull.size()));

    if library.get(&pull.name)?.is_some_and(|e| e.sha256 == pull.id()) {
        println!("{} is in the library already, at that revision: nothing to download", pull.name);
        return Ok(());
    }
    let info = Headers::new(config.state_dir.join("catalog"), http.clone()).info(&pull).await?;
    let budget = memory_budget::of(config.memory.budget_bytes, config.memory.os_reserve_bytes)?;
    let engine = &config.engine;
    let request = PlanRequest { ctx: engine.ctx, parallel: engine.parallel, cache_type: engine.cache_type, budget: budget.usable };
    // The pool is the daemon's to ask; from here the verdict is this box's alone.
    let fit = catalog::fit(&info, &request, |_| None);
    println!("on this box: {}", fit.describe());
    if !fit.downloadable() {
        if !anyway {
            bail!("{} is not downloaded: {}; pass --anyway to fetch it for a pool of boxes", resolved.reference, fit.describe());
        }
        println!("downloading anyway");
    }
    let downloads = Downloads::new(config.state_dir.join("downloads"), Arc::new(library), http);
    let job = downloads.start(pull);
    let mut progress = job.watch();
    let mut last = String::new();
    loop {
        let now = progress.borrow_and_update().clone();
        let line = match &now {
            Progress::Starting => "starting".to_string(),
            // Every tenth of the whole, not every chunk.
            Progress::Downloading { file, done, total, .. } => format!("{file}: {}% of {}", done * 10 / (*total).max(1) * 10, format_bytes(*total)),
            Progress::Retrying { error, .. } => format!("interrupted ({error}); resuming"),
            Progress::Verifying { .. } => "verifying".to_string(),
            Progress::Done { name } => {
                println!("added {name}");
                return Ok(());
            }
            Progress::Failed { error } => bail!("{error}"),
            Progress::Cancelled => bail!("cancelled"),
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        if progress.changed().await.is_err() {
            bail!("the download stopped without an outcome");
        }
    }
}
