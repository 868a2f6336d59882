//! Verbs that ask the running daemon, through its API on this box with an API key.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::Config;

/// `GET path`, or `POST path` with `body`, to the daemon's API; its JSON answer.
pub fn call(config: &Config, path: &str, key: &str, body: Option<Value>) -> Result<Value> {
    let mut address = config.api.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let url = format!("http://{address}{path}");
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3600)).build().context("building the HTTP client")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let (status, text) = runtime.block_on(async {
        let request = match &body {
            Some(body) => http.post(&url).json(body),
            None => http.get(&url),
        };
        let response = request.bearer_auth(key).send().await.with_context(|| format!("asking hellasd at {url}: is it running?"))?;
        let status = response.status();
        anyhow::Ok((status, response.text().await.with_context(|| format!("reading the answer of {url}"))?))
    })?;
    if !status.is_success() {
        bail!("{url} answered {status}: {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{url} answered {text}"))
}
