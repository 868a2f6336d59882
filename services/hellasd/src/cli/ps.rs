//! `hellasd ps`: the running models and where each really sits, from the running daemon's
//! `GET /api/ps` (with an API key), as `ollama ps` shows them.

use anyhow::{bail, Result};
use hellas_model::plan::format_bytes;
use crate::config::Config;

#[derive(clap::Args)]
pub struct PsArgs {
    /// An API key of this box (`hellasd keys create`); default: $HELLAS_API_KEY.
    #[arg(long, env = "HELLAS_API_KEY", hide_env_values = true)]
    key: String,
}

pub fn run(config: &Config, args: &PsArgs) -> Result<()> {
    let ps = super::daemon::call(config, "/api/ps", &args.key, None)?;
    let Some(models) = ps["models"].as_array() else { bail!("hellasd answered {ps}") };
    if models.is_empty() {
        println!("no model is loaded");
    }
    for model in models {
        let bytes = |key: &str| model[key].as_u64().map(format_bytes).unwrap_or_default();
        println!("{}  planned {}, on the GPU {}, context {}", model["name"].as_str().unwrap_or("?"), bytes("size"), bytes("size_vram"), model["context_length"]);
        println!("  runs on {}", model["placement"].as_str().unwrap_or("unknown"));
        println!("  {}", model["sandbox"].as_str().unwrap_or("sandbox unknown"));
        if let Some(problem) = model["placement_problem"].as_str() {
            println!("  problem: {problem}");
        }
    }
    Ok(())
}
