//! `hellasd drain`: the box stops taking new requests and finishes what it runs, so it can be
//! updated or unplugged behind a gateway without failing a client; `--off` takes requests again.
//! It asks the running daemon, which accepts this only from the box itself.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::config::Config;

#[derive(clap::Args)]
pub struct DrainArgs {
    /// End draining: take new requests again.
    #[arg(long)]
    off: bool,
    /// Wait until every running and waiting request is answered.
    #[arg(long, conflicts_with = "off")]
    wait: bool,
    /// An API key of this box (`hellasd keys create`); default: $HELLAS_API_KEY.
    #[arg(long, env = "HELLAS_API_KEY", hide_env_values = true)]
    key: String,
}

pub fn run(config: &Config, args: &DrainArgs) -> Result<()> {
    let mut status = super::daemon::call(config, "/v1/hellas/drain", &args.key, Some(json!({ "drain": !args.off })))?;
    while args.wait && status["status"] == "draining" {
        println!("draining: {} running, {} waiting", status["running"], status["waiting"]);
        std::thread::sleep(Duration::from_secs(1));
        status = super::daemon::call(config, "/v1/hellas/drain", &args.key, None)?;
    }
    println!("{}", status["status"].as_str().unwrap_or("unknown"));
    Ok(())
}
