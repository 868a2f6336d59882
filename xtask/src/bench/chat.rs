//! The client side of the benches: one streamed `/v1/chat/completions` request, timed from
//! the moment it is sent to the first token and to the end of the stream.

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// A blocking HTTP agent for servers on this machine. It never goes through a proxy named in
/// the environment, keeps up to `connections` idle connections per server so concurrent
/// clients reuse theirs, and hands non-2xx answers back to be reported with their body.
pub fn agent(connections: usize) -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .max_idle_connections(2 * connections)
        .max_idle_connections_per_host(connections)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// An OpenAI-compatible server: its base URL and, for hellasd, the API key it wants.
pub struct Endpoint {
    pub base: String,
    pub key: Option<String>,
}

/// What one streamed answer took.
pub struct Timed {
    /// From sending the request to the first `data:` line that carries content.
    pub first_token: Duration,
    pub total: Duration,
    /// `usage.completion_tokens` when the server reports it, else the content chunks.
    pub tokens: u64,
    pub text: String,
}

/// Whether `GET {base}/health` answers 200 now.
pub fn healthy(agent: &ureq::Agent, base: &str) -> bool {
    agent
        .get(format!("{base}/health"))
        .call()
        .is_ok_and(|response| response.status() == 200)
}

/// `POST {base}{path}` with `body`, and its JSON answer.
pub fn post_json(agent: &ureq::Agent, base: &str, path: &str, body: &Value) -> Result<Value> {
    let url = format!("{base}{path}");
    let text = agent
        .post(&url)
        .header("Content-Type", "application/json")
        .send(&body.to_string())
        .with_context(|| format!("POST {url}"))?
        .into_body()
        .read_to_string()
        .with_context(|| format!("reading the answer to POST {url}"))?;
    serde_json::from_str(&text).with_context(|| format!("POST {url} answered no JSON: {text}"))
}

/// Sends `request` (which must ask for `stream: true`) and reads the event stream to its end.
pub fn stream(agent: &ureq::Agent, endpoint: &Endpoint, request: &Value) -> Result<Timed> {
    let url = format!("{}/v1/chat/completions", endpoint.base);
    let body = request.to_string();
    let mut post = agent.post(&url).header("Content-Type", "application/json");
    if let Some(key) = &endpoint.key {
        post = post.header("Authorization", format!("Bearer {key}"));
    }
    let started = Instant::now();
    let response = post
        .send(&body)
        .with_context(|| format!("POST {url} failed"))?;
    let status = response.status();
    if status != 200 {
        let answer = response.into_body().read_to_string().unwrap_or_default();
        bail!("POST {url} answered {status}: {answer}\nrequest: {body}");
    }
    let (mut first_token, mut usage, mut chunks, mut text) = (None, None, 0, String::new());
    for line in BufReader::new(response.into_body().into_reader()).lines() {
        let line = line.with_context(|| format!("reading the answer to POST {url}"))?;
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let event: Value = serde_json::from_str(data)
            .with_context(|| format!("POST {url} streamed a line that is not JSON: {line}"))?;
        if let Some(error) = event.get("error") {
            bail!("POST {url} streamed an error: {error}\nrequest: {body}");
        }
        let content = event["choices"][0]["delta"]["content"].as_str();
        if let Some(content) = content.filter(|content| !content.is_empty()) {
            first_token.get_or_insert_with(|| started.elapsed());
            chunks += 1;
            text.push_str(content);
        }
        if let Some(tokens) = event["usage"]["completion_tokens"].as_u64() {
            usage = Some(tokens);
        }
    }
    let total = started.elapsed();
    let first_token =
        first_token.with_context(|| format!("POST {url} streamed no content\nrequest: {body}"))?;
    Ok(Timed {
        first_token,
        total,
        tokens: usage.unwrap_or(chunks),
        text,
    })
}
