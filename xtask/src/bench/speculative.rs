//! `cargo xtask bench speculative`: what speculative decoding from n-grams (`engine.speculative =
//! "ngram"`, llama-server's `--spec-type ngram-mod`) does to decode speed on this machine. Two
//! llama-servers run the test model, one without and one with it, on the same flags otherwise;
//! each is asked, greedily and in alternating rounds after a warm-up, to copy a block of code (the
//! text an agent rewriting a file emits) and to write free prose. The model checks every draft,
//! so the text is the model's own; whether it is byte for byte the plain side's is reported, since
//! a batch of drafted tokens is evaluated with slightly different rounding than one token at a time.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::servers::{free_port, Scratch, Server};
use super::{load_average, median, Machine};
use crate::cache;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const PREDICT: u64 = 192;
/// What hellasd passes for `engine.speculative = "ngram"` (hellasd's `config::Speculative`).
const NGRAM: &[&str] = &["--spec-type", "ngram-mod"];

#[derive(clap::Args)]
pub struct SpeculativeBench {
    /// Timed rounds; a round asks each side each workload once.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// One round that proves the bench works (`cargo xtask test` runs it): both sides must give
    /// the same text, and docs/benchmarks.md is left alone.
    #[arg(long, conflicts_with = "rounds")]
    pub smoke: bool,
}

struct Workload {
    name: &'static str,
    prompt: String,
}

#[derive(Default)]
struct Rates {
    decode: Vec<f64>,
    drafted: u64,
    accepted: u64,
    text: Option<String>,
}

impl SpeculativeBench {
    pub fn smoke() -> SpeculativeBench {
        SpeculativeBench { rounds: 1, smoke: true }
    }

    pub fn run(&self) -> Result<()> {
        if self.smoke && self.rounds != 1 {
            return SpeculativeBench::smoke().run();
        }
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        let cache = cache::root()?;
        let server = cache.join("engine/bin/llama-server");
        let model = cache.join("models").join(MODEL_FILE);
        super::require_built(&[&server, &model])?;
        let machine = Machine::describe()?;
        let load_before = load_average()?;
        let mut scratch = Scratch::create("speculative")?;
        let agent = super::chat::agent(2);
        let start = |name: &'static str, extra: &[&str]| -> Result<(String, Server)> {
            let port = free_port()?;
            let mut argv: Vec<OsString> = vec!["--model".into(), model.clone().into_os_string()];
            let flags = ["--host", "127.0.0.1", "--port", &port.to_string(), "--ctx-size", "2048", "--parallel", "1", "--threads", "1", "--poll", "0", "--no-webui", "--cache-ram", "0"];
            argv.extend(flags.iter().chain(extra).map(OsString::from));
            let server = Server::start(name, server.clone().into(), argv, scratch.dir.join(format!("{name}.log")))?;
            let base = format!("http://127.0.0.1:{port}");
            server.wait_healthy(&agent, &base, Duration::from_secs(120))?;
            Ok((base, server))
        };
        let sides = [start("plain", &[])?, start("ngram", NGRAM)?];
        let code: String = (0..16).map(|i| format!("def scale_{i}(x):\n    return x * {i} + {}\n\n", i * i)).collect();
        let workloads = [
            Workload { name: "copy code", prompt: format!("Copy this Python code exactly, without any change:\n\n{code}") },
            Workload { name: "free prose", prompt: "Write a long story about a lighthouse keeper and the ships she guides.".into() },
        ];
        // [workload][side]
        let mut rates: [[Rates; 2]; 2] = Default::default();
        println!("==> bench: warming up");
        for (base, _) in &sides {
            for workload in &workloads {
                complete(&agent, base, &workload.prompt)?;
            }
        }
        for round in 1..=self.rounds {
            println!("==> bench: round {round}/{}", self.rounds);
            for (workload, rates) in workloads.iter().zip(rates.iter_mut()) {
                for ((base, _), rate) in sides.iter().zip(rates.iter_mut()) {
                    let answer = complete(&agent, base, &workload.prompt).with_context(|| format!("{} on {base}", workload.name))?;
                    rate.decode.push(answer.decode);
                    rate.drafted += answer.drafted;
                    rate.accepted += answer.accepted;
                    rate.text.get_or_insert(answer.text);
                }
            }
        }
        let mut table = String::from("| workload | decode tokens/s, plain | with n-gram drafts | speed-up | drafted tokens accepted | same text |\n|---|--:|--:|--:|--:|---|\n");
        for (workload, [plain, ngram]) in workloads.iter().zip(&rates) {
            let same = if plain.text == ngram.text { "yes" } else { "no" };
            let accepted = if ngram.drafted == 0 { "none drafted".to_string() } else { format!("{} of {}", ngram.accepted, ngram.drafted) };
            table += &format!(
                "| {} | {:.1} | {:.1} | {:.2}× | {accepted} | {same} |\n",
                workload.name,
                median(&plain.decode),
                median(&ngram.decode),
                median(&ngram.decode) / median(&plain.decode)
            );
        }
        if rates[0][1].accepted == 0 {
            scratch.keep = true;
            bail!("no drafted token was accepted while copying code: speculative decoding did not work (see {})", scratch.dir.display());
        }
        let text = format!(
            "Measured with `cargo xtask bench speculative` on {date}: {cpus} × {cpu}, load {l0:.2} → {l1:.2}.\n\
             SmolLM2-135M Q4_1, {PREDICT} generated tokens per request, greedy; median of {rounds} alternating rounds after \
             a warm-up, one engine thread each (`-t 1 --poll 0`). *With n-gram drafts* is llama-server `--spec-type ngram-mod` \
             (hellasd's `engine.speculative = \"ngram\"`): drafts come from token sequences the engine has already seen, in \
             the prompt or earlier answers, and the model checks them in one batch.\n\n{table}\n\
             Drafts pay where the answer repeats what came before (code being copied or edited, quoted documents); free \
             prose offers little to draft from. The model checks every drafted token, so each answer is its own greedy text; \
             where it is not byte for byte the plain side's, a long answer has drifted apart at some token where checking a \
             batch of drafts rounded differently from decoding one token at a time.\n",
            date = machine.date,
            cpus = machine.cpus,
            cpu = machine.cpu_model,
            l0 = load_before,
            l1 = load_average()?,
            rounds = self.rounds,
        );
        println!("\n{text}");
        if self.smoke {
            println!("==> bench speculative --smoke: works (docs/benchmarks.md left alone)");
        } else {
            let doc = super::write_section(&crate::workspace::locate()?.root, "speculative", &text)?;
            println!("==> bench: wrote {}", doc.display());
        }
        Ok(())
    }
}

struct Answer {
    decode: f64,
    drafted: u64,
    accepted: u64,
    text: String,
}

/// One greedy chat answer, with llama-server's decode speed and draft counts.
fn complete(agent: &ureq::Agent, base: &str, prompt: &str) -> Result<Answer> {
    let body = json!({
        "messages": [{ "role": "user", "content": prompt }],
        "max_tokens": PREDICT, "temperature": 0, "seed": 42, "ignore_eos": true,
    });
    let answer = super::chat::post_json(agent, base, "/v1/chat/completions", &body)?;
    let timings = &answer["timings"];
    let Some(decode) = timings["predicted_per_second"].as_f64() else { bail!("{base} reported no timings: {answer}") };
    Ok(Answer {
        decode,
        drafted: timings["draft_n"].as_u64().unwrap_or(0),
        accepted: timings["draft_n_accepted"].as_u64().unwrap_or(0),
        text: answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string(),
    })
}
