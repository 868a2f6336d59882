//! `cargo xtask bench cluster`: what running a model across two boxes costs, over a fast link and
//! a slow one, measured on this machine in one run. ggml-rpc-servers stand in for the second box:
//! one reached straight over loopback (the fast path: a cable between the boxes), one behind a
//! [`delay_line`](super::delay_line) that holds every byte [`SLOW_LINK`] each way (the slow path:
//! a LAN hop, Wi-Fi). llama-server runs the test model alone and split over each path, with the
//! arguments hellasd gives a CPU head (`--rpc`, `--tensor-split`, `--n-gpu-layers` for the
//! worker's layers). The three are measured in alternating rounds, each warmed up first, with one
//! thread each and no polling (`-t 1 --poll 0`) so the processes do not fight over two cores.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::servers::{free_port, Scratch, Server};
use super::{load_average, median, Machine};
use crate::cache;

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const CTX: u32 = 2048;
/// SmolLM2-135M has 30 layers; the worker takes half, as a two-box pool of equals would.
const WORKER_LAYERS: u32 = 15;
const PREDICT: u64 = 64;
/// The slow path's one-way delay: 1 ms round trips, a busy LAN or good Wi-Fi.
const SLOW_LINK: Duration = Duration::from_micros(500);

#[derive(clap::Args)]
pub struct ClusterBench {
    /// Timed rounds; a round measures the single box, then the split.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// One round that proves the bench works (`cargo xtask test` runs it): the split must still
    /// answer as the single box does, and docs/benchmarks.md is left alone.
    #[arg(long, conflicts_with = "rounds")]
    pub smoke: bool,
}

impl ClusterBench {
    pub fn smoke() -> ClusterBench {
        ClusterBench { rounds: 1, smoke: true }
    }
}

struct Side {
    name: &'static str,
    base: String,
    _server: Server,
}

#[derive(Default)]
struct Rates {
    prefill: Vec<f64>,
    decode: Vec<f64>,
    text: Option<String>,
}

impl ClusterBench {
    pub fn run(&self) -> Result<()> {
        if self.smoke && self.rounds != 1 {
            return ClusterBench::smoke().run();
        }
        if self.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        let cache = cache::root()?;
        let engine = cache.join("engine/bin");
        let model = cache.join("models").join(MODEL_FILE);
        super::require_built(&[engine.join("llama-server"), engine.join("ggml-rpc-server"), model.clone()])?;
        let machine = Machine::describe()?;
        let load_before = load_average()?;
        let scratch = Scratch::create("cluster")?;
        let agent = super::chat::agent(2);

        // One worker per split: a ggml-rpc-server serves one client at a time.
        let worker = |name: &'static str| -> Result<(u16, Server)> {
            let port = free_port()?;
            let server = Server::start(
                name,
                engine.join("ggml-rpc-server").into(),
                args(&["--host", "127.0.0.1", "--port", &port.to_string(), "--threads", "1"]),
                scratch.dir.join(format!("{name}.log")),
            )?;
            wait_for_port(port)?;
            Ok((port, server))
        };
        let (fast_port, _fast_worker) = worker("rpc-fast")?;
        let (slow_worker_port, _slow_worker) = worker("rpc-slow")?;
        let slow_port = super::delay_line::start(slow_worker_port, SLOW_LINK)?;
        let start = |name: &'static str, extra: &[&str]| -> Result<Side> {
            let port = free_port()?;
            let mut argv = vec!["--model".into(), model.clone().into_os_string()];
            argv.extend(args(&[
                "--host", "127.0.0.1", "--port", &port.to_string(), "--ctx-size", &CTX.to_string(), "--parallel", "1",
                "--threads", "1", "--poll", "0", "--flash-attn", "on", "--no-webui", "--cache-ram", "0",
            ]));
            argv.extend(args(extra));
            let server = Server::start(name, engine.join("llama-server").into(), argv, scratch.dir.join(format!("{name}.log")))?;
            let base = format!("http://127.0.0.1:{port}");
            server.wait_healthy(&agent, &base, Duration::from_secs(120))?;
            Ok(Side { name, base, _server: server })
        };
        let split = |name: &'static str, port: u16| {
            let rpc = format!("127.0.0.1:{port}");
            start(name, &["--rpc", &rpc, "--tensor-split", &WORKER_LAYERS.to_string(), "--n-gpu-layers", &WORKER_LAYERS.to_string()])
        };
        let sides = [start("single", &[])?, split("split-fast", fast_port)?, split("split-slow", slow_port)?];
        let mut rates: [Rates; 3] = Default::default();
        println!("==> bench: warming up");
        for side in &sides {
            complete(&agent, &side.base)?;
        }
        for round in 1..=self.rounds {
            println!("==> bench: round {round}/{}", self.rounds);
            for (side, rate) in sides.iter().zip(rates.iter_mut()) {
                let (prefill, decode, text) = complete(&agent, &side.base).with_context(|| format!("the {} side", side.name))?;
                rate.prefill.push(prefill);
                rate.decode.push(decode);
                rate.text.get_or_insert(text);
            }
        }
        let same = rates.iter().all(|r| r.text == rates[0].text);
        let rate = |side: usize, f: fn(&Rates) -> &Vec<f64>| median(f(&rates[side]));
        let ratio = |side: usize, f: fn(&Rates) -> &Vec<f64>| rate(side, f) / rate(0, f);
        let text = format!(
            "Measured with `cargo xtask bench cluster` on {date}: {cpus} × {cpu}, load {l0:.2} → {l1:.2}.\n\
             SmolLM2-135M Q4_1, context {CTX}, a ~300-token prompt and {PREDICT} generated tokens per request, \
             greedy; median of {rounds} alternating rounds after a warm-up. Each split runs {WORKER_LAYERS} of the 30 layers \
             on a ggml-rpc-server (the stand-in for a second box), the rest on llama-server's CPU; all `-t 1 --poll 0`. \
             The fast path reaches its worker straight over loopback, as a cable between two boxes would; the slow path \
             goes through a relay that holds every byte {slow_us} µs each way ({slow_rtt_ms} ms round trips, a busy LAN \
             or Wi-Fi).\n\n\
             | | single box | split, fast path | split, slow path | fast / single | slow / single |\n|---|---|---|---|---|---|\n\
             | prefill tokens/s | {p0:.1} | {p1:.1} | {p2:.1} | {pr1:.2} | {pr2:.2} |\n\
             | decode tokens/s | {d0:.1} | {d1:.1} | {d2:.1} | {dr1:.2} | {dr2:.2} |\n\n\
             Same greedy text on all three: {same}. A split runs its layers one box after the other, so on one \
             machine it cannot be faster than the single box; the ratios are what the hop costs: the activations crossing \
             the link where the layers change box, and the processes taking turns on two shared cores. Decode waits on \
             the link several times per token, so its latency shows there; prefill moves the prompt in large batches and \
             barely notices it. On real boxes the split's worth is memory: a model no one box holds (see docs/cluster.md).\n",
            date = machine.date,
            cpus = machine.cpus,
            cpu = machine.cpu_model,
            l0 = load_before,
            l1 = load_average()?,
            rounds = self.rounds,
            slow_us = SLOW_LINK.as_micros(),
            slow_rtt_ms = SLOW_LINK.as_secs_f64() * 2000.0,
            p0 = rate(0, |r| &r.prefill),
            p1 = rate(1, |r| &r.prefill),
            p2 = rate(2, |r| &r.prefill),
            pr1 = ratio(1, |r| &r.prefill),
            pr2 = ratio(2, |r| &r.prefill),
            d0 = rate(0, |r| &r.decode),
            d1 = rate(1, |r| &r.decode),
            d2 = rate(2, |r| &r.decode),
            dr1 = ratio(1, |r| &r.decode),
            dr2 = ratio(2, |r| &r.decode),
            same = if same { "yes" } else { "no" },
        );
        println!("\n{text}");
        if !self.smoke {
            let doc = super::write_section(&crate::workspace::locate()?.root, "cluster", &text)?;
            println!("==> bench: wrote {}", doc.display());
        }
        if !same {
            bail!("a split answered differently from the single box: {:?}", rates.iter().map(|r| &r.text).collect::<Vec<_>>());
        }
        if self.smoke {
            println!("==> bench cluster --smoke: works (docs/benchmarks.md left alone)");
        }
        Ok(())
    }
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

fn wait_for_port(port: u16) -> Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("ggml-rpc-server did not listen on port {port} within 10 s")
}

/// One greedy completion: prefill and decode tokens/s as llama-server reports them, and the text.
fn complete(agent: &ureq::Agent, base: &str) -> Result<(f64, f64, String)> {
    let prompt = "The history of the lighthouse is a history of people who kept a light burning for strangers. ".repeat(16);
    let body = json!({ "prompt": prompt, "n_predict": PREDICT, "temperature": 0, "cache_prompt": false, "ignore_eos": true });
    let answer = super::chat::post_json(agent, base, "/completion", &body)?;
    let timings = &answer["timings"];
    let (prefill, decode) = (timings["prompt_per_second"].as_f64(), timings["predicted_per_second"].as_f64());
    match (prefill, decode) {
        (Some(p), Some(d)) => Ok((p, d, answer["content"].as_str().unwrap_or_default().to_string())),
        _ => bail!("{base}/completion reported no timings: {answer}"),
    }
}
