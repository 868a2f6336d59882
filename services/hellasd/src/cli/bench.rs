//! `hellasd bench MODEL`: asks the running daemon to measure a model's prefill and decode speed
//! on this box (`POST /v1/hellas/bench`, with an API key) and prints the report.

use anyhow::{Context, Result};

use crate::config::Config;
use crate::engine::bench::BenchReport;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A model in the library.
    model: String,
    /// An API key of this box (`hellasd keys create`); default: $HELLAS_API_KEY.
    #[arg(long, env = "HELLAS_API_KEY", hide_env_values = true)]
    key: String,
    #[arg(long)]
    json: bool,
}

pub fn run(config: &Config, args: &BenchArgs) -> Result<()> {
    let answer = super::daemon::call(config, "/v1/hellas/bench", &args.key, Some(serde_json::json!({ "model": args.model })))?;
    let report: BenchReport = serde_json::from_value(answer.clone()).with_context(|| format!("hellasd answered {answer}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.describe());
    }
    Ok(())
}
