//! `hellasd bench MODEL`: asks the running daemon to measure a model's prefill and decode speed
//! on this box (`POST /v1/hellas/bench`, with an API key) and prints the report.

use std::time::Duration;

use anyhow::{bail, Context, Result};

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
    let mut address = config.api.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{address}/v1/hellas/bench");
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3600)).build().context("building the HTTP client")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (status, text) = runtime.block_on(async {
        let response = http.post(&url).bearer_auth(&args.key).json(&serde_json::json!({ "model": args.model })).send().await.with_context(|| format!("asking hellasd at {url}: is it running?"))?;
        let status = response.status();
        anyhow::Ok((status, response.text().await.with_context(|| format!("reading the answer of {url}"))?))
    })?;
    if !status.is_success() {
        bail!("{url} answered {status}: {text}");
    }
    let report: BenchReport = serde_json::from_str(&text).with_context(|| format!("{url} answered {text}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.describe());
    }
    Ok(())
}
