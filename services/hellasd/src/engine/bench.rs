//! The on-box benchmark: a model's prefill and decode speed on this box's engine, and decode as
//! a share of the memory-bandwidth ceiling. Decoding reads every weight a token uses once per
//! token, so `bytes read per token × tokens/s ÷ bandwidth` says how close the engine comes to
//! what the memory allows (llama.cpp on Strix Halo's Vulkan reaches roughly 60–80%).
//!
//! Bytes per token: every tensor but the token embeddings (one row is read per token, unless
//! the output layer reuses them), with a mixture of experts' expert tensors (`*_exps`) counted
//! at `experts used ÷ experts`. The KV cache read is left out: at the short contexts measured it
//! is a fraction of a percent of the weights.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hellas_model::gguf::GgufFile;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Tokens of prompt for the prefill measurement, and tokens generated for decode (as
/// llama-bench's pp512 and tg128).
const PREFILL_TOKENS: usize = 512;
const DECODE_TOKENS: u32 = 128;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BenchReport {
    pub model: String,
    /// Seconds since the epoch.
    pub at: u64,
    /// llama-server's build, e.g. `b11669-Debian`.
    pub engine: String,
    /// Where the model sat, as its load log says.
    pub placement: String,
    pub prefill_tokens: u64,
    pub prefill_per_sec: f64,
    pub decode_tokens: u64,
    pub decode_per_sec: f64,
    pub bytes_per_token: u64,
    pub bandwidth: Bandwidth,
    /// `bytes_per_token × decode_per_sec ÷ bandwidth`.
    pub ceiling_fraction: f64,
}

impl BenchReport {
    pub fn describe(&self) -> String {
        use hellas_model::plan::format_bytes as f;
        format!(
            "{}: prefill {:.1} tokens/s ({} tokens), decode {:.1} tokens/s ({} tokens); {} read per token, {:.0}% of the {} memory bandwidth ceiling ({}); {}; engine {}",
            self.model,
            self.prefill_per_sec,
            self.prefill_tokens,
            self.decode_per_sec,
            self.decode_tokens,
            f(self.bytes_per_token),
            self.ceiling_fraction * 100.0,
            format_rate(self.bandwidth.bytes_per_sec),
            self.bandwidth.source,
            self.placement,
            self.engine
        )
    }
}

pub fn format_rate(bytes_per_sec: f64) -> String {
    format!("{:.0} GB/s", bytes_per_sec / 1e9)
}

/// The memory bandwidth decode is measured against (see `crate::tune::memory_bandwidth`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bandwidth {
    pub bytes_per_sec: f64,
    /// Where the figure comes from: the platform's specification, or a measurement here.
    pub source: String,
}

/// Bytes a decoded token reads from the model's weights (see the module's note).
pub fn bytes_per_token(model: &GgufFile) -> u64 {
    let arch = model.get_str("general.architecture").unwrap_or_default();
    let count = |key: &str| model.get(&format!("{arch}.{key}")).and_then(|v| v.as_u64()).unwrap_or(0);
    let (used, experts) = (count("expert_used_count"), count("expert_count"));
    let tied_output = !model.tensors.iter().any(|t| t.name == "output.weight");
    model
        .tensors
        .iter()
        .map(|t| match t.name.as_str() {
            "token_embd.weight" if !tied_output => 0,
            name if name.contains("_exps") && experts > 0 => t.n_bytes * used / experts,
            _ => t.n_bytes,
        })
        .sum()
}

/// Runs the measurement against a loaded engine at `base_url`.
pub async fn run(http: &reqwest::Client, base_url: &str, model: &str, weights: &GgufFile, placement: String, bandwidth: Bandwidth) -> Result<BenchReport> {
    let props: Value = get(http, &format!("{base_url}/props")).await?;
    let engine = props["build_info"].as_str().unwrap_or("unknown").to_string();
    // A warm-up first: the first request pays for buffers, shaders and caches.
    complete(http, base_url, &json!({ "prompt": "Hello", "n_predict": 4, "cache_prompt": false })).await?;
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(PREFILL_TOKENS / 10);
    let prefill = complete(http, base_url, &json!({ "prompt": prompt, "n_predict": 1, "cache_prompt": false })).await?;
    let decode = complete(http, base_url, &json!({ "prompt": "Once upon a time", "n_predict": DECODE_TOKENS, "ignore_eos": true, "cache_prompt": false, "temperature": 0 })).await?;
    let timing = |answer: &Value, key: &str| answer["timings"][key].as_f64().with_context(|| format!("llama-server's answer has no timings.{key}: {answer}"));
    let bytes_per_token = bytes_per_token(weights);
    let decode_per_sec = timing(&decode, "predicted_per_second")?;
    Ok(BenchReport {
        model: model.to_string(),
        at: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        engine,
        placement,
        prefill_tokens: timing(&prefill, "prompt_n")? as u64,
        prefill_per_sec: timing(&prefill, "prompt_per_second")?,
        decode_tokens: timing(&decode, "predicted_n")? as u64,
        decode_per_sec,
        bytes_per_token,
        ceiling_fraction: bytes_per_token as f64 * decode_per_sec / bandwidth.bytes_per_sec,
        bandwidth,
    })
}

async fn complete(http: &reqwest::Client, base_url: &str, body: &Value) -> Result<Value> {
    let url = format!("{base_url}/completion");
    let response = http.post(&url).json(body).timeout(Duration::from_secs(1800)).send().await.with_context(|| format!("asking {url}"))?;
    let status = response.status();
    let answer: Value = response.json().await.with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        bail!("{url} answered {status}: {answer}");
    }
    Ok(answer)
}

async fn get(http: &reqwest::Client, url: &str) -> Result<Value> {
    http.get(url).timeout(Duration::from_secs(30)).send().await.with_context(|| format!("asking {url}"))?.json().await.with_context(|| format!("reading {url}"))
}

/// The latest report of each model, kept in the state directory.
pub struct BenchReports {
    path: std::path::PathBuf,
}

impl BenchReports {
    pub fn new(path: std::path::PathBuf) -> BenchReports {
        BenchReports { path }
    }

    pub fn list(&self) -> Vec<BenchReport> {
        std::fs::read(&self.path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default()
    }

    pub fn keep(&self, report: &BenchReport) -> Result<()> {
        let mut reports = self.list();
        reports.retain(|r| r.model != report.model);
        reports.push(report.clone());
        reports.sort_by(|a, b| a.model.cmp(&b.model));
        crate::state_file::write_atomically(&self.path, &serde_json::to_vec_pretty(&reports)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hellas_model::testing::GgufBuilder;

    #[test]
    fn a_token_reads_the_weights_it_uses() {
        let moe = GgufBuilder::new()
            .str("general.architecture", "qwen3moe")
            .u32("qwen3moe.block_count", 1)
            .u32("qwen3moe.embedding_length", 64)
            .u32("qwen3moe.attention.head_count", 4)
            .u32("qwen3moe.expert_count", 8)
            .u32("qwen3moe.expert_used_count", 2)
            .tensor("token_embd.weight", &[64, 1000], 0, 256_000)
            .tensor("output.weight", &[64, 1000], 0, 256_000)
            .tensor("blk.0.attn_q.weight", &[64, 64], 0, 16_384)
            .tensor("blk.0.ffn_up_exps.weight", &[64, 128, 8], 0, 262_144)
            .build();
        let file = GgufFile::parse(moe.as_slice(), moe.len() as u64).unwrap();
        assert_eq!(bytes_per_token(&file), 256_000 + 16_384 + 262_144 / 4);
        let tied = GgufBuilder::new().str("general.architecture", "llama").tensor("token_embd.weight", &[64, 1000], 0, 256_000).build();
        assert_eq!(bytes_per_token(&GgufFile::parse(tied.as_slice(), tied.len() as u64).unwrap()), 256_000, "tied embeddings are the output layer too");
    }
}
