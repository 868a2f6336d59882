//! `cargo xtask bench cluster`: what running a model across two boxes costs, measured on this
//! machine in one run. A ggml-rpc-server stands in for the second box (on loopback), and
//! llama-server runs the test model once alone and once split, with the arguments hellasd gives a
//! CPU head (`--rpc`, `--tensor-split`, `--n-gpu-layers` for the worker's layers). The two are
//! measured in alternating rounds, each warmed up first, with one thread each and no polling
//! (`-t 1 --poll 0`) so the client and the worker do not fight over two cores.

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

        let rpc_port = free_port()?;
        let _worker = Server::start(
            "ggml-rpc-server",
            engine.join("ggml-rpc-server").into(),
            args(&["--host", "127.0.0.1", "--port", &rpc_port.to_string(), "--threads", "1"]),
            scratch.dir.join("rpc.log"),
        )?;
        wait_for_port(rpc_port)?;
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
        let rpc = format!("127.0.0.1:{rpc_port}");
        let sides = [
            start("single", &[])?,
            start("split", &["--rpc", &rpc, "--tensor-split", &WORKER_LAYERS.to_string(), "--n-gpu-layers", &WORKER_LAYERS.to_string()])?,
        ];
        let mut rates: [Rates; 2] = Default::default();
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
        let same = rates[0].text == rates[1].text;
        let ratio = |f: fn(&Rates) -> &Vec<f64>| median(f(&rates[1])) / median(f(&rates[0]));
        let text = format!(
            "Measured with `cargo xtask bench cluster` on {date}: {cpus} × {cpu}, load {l0:.2} → {l1:.2}.\n\
             SmolLM2-135M Q4_1, context {CTX}, a ~300-token prompt and {PREDICT} generated tokens per request, \
             greedy; median of {rounds} alternating rounds after a warm-up. The split runs {WORKER_LAYERS} of the 30 layers \
             on a ggml-rpc-server over loopback (the stand-in for a second box), the rest on llama-server's CPU; both \
             sides `-t 1 --poll 0`.\n\n\
             | | single box | split over RPC | split / single |\n|---|---|---|---|\n\
             | prefill tokens/s | {p0:.1} | {p1:.1} | {pr:.2} |\n| decode tokens/s | {d0:.1} | {d1:.1} | {dr:.2} |\n\n\
             Same greedy text on both sides: {same}. A split runs its layers one box after the other, so on one \
             machine it cannot be faster than the single box; the ratio is what the hop costs: the activations crossing \
             the socket where the layers change box, and the two processes taking turns on two shared cores. On real boxes the \
             split's worth is memory: a model no one box holds (see docs/cluster.md).\n",
            date = machine.date,
            cpus = machine.cpus,
            cpu = machine.cpu_model,
            l0 = load_before,
            l1 = load_average()?,
            rounds = self.rounds,
            p0 = median(&rates[0].prefill),
            p1 = median(&rates[1].prefill),
            pr = ratio(|r| &r.prefill),
            d0 = median(&rates[0].decode),
            d1 = median(&rates[1].decode),
            dr = ratio(|r| &r.decode),
            same = if same { "yes" } else { "no" },
        );
        println!("\n{text}");
        if !self.smoke {
            let doc = super::write_section(&crate::workspace::locate()?.root, "cluster", &text)?;
            println!("==> bench: wrote {}", doc.display());
        }
        if !same {
            bail!("the split answered differently from the single box: {:?} vs {:?}", rates[1].text, rates[0].text);
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
