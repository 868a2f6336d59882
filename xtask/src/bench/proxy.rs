//! `cargo xtask bench proxy`: what answering through hellasd costs compared with asking its
//! llama-server directly. hellasd serves the test model; once its engine runs, the direct side
//! is that same engine process, asked at the loopback port its command line names (read from
//! /proc). A second llama-server started with the same flags would not do: two identical
//! llama-server processes on this machine decode up to 15% apart (10.3 against 12.0 ms per
//! token, measured 2026-12-05), which swamps a proxy's cost. A third side, a bare relay in
//! front of the same engine (`relay`), shows the least CPU time any proxy spends here. The sides
//! are measured in rotating rounds, never at once, and always warmed up first.
//!
//! hellasd is set up as an owner would set up a box (claimed with `hellasd set-password`, an API
//! key from `hellasd keys create`), and every port it opens is on loopback; pooling is off.

mod relay;
mod report;

use std::ffi::OsString;
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use anyhow::{bail, Context, Result};
use duct::cmd;
use serde_json::{json, Value};

use super::chat::{self, Endpoint, Timed};
use super::servers::{self, Reaper, Scratch, Server};
use super::{load_average, Machine};
use crate::cache;
use relay::Relay;
use report::{Measured, Report};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MODEL_NAME: &str = "smollm2:135m-q4_1";
/// Context per slot and slots: enough for the prompt and answers, and one slot per client.
const CTX: u32 = 512;
const PARALLEL: usize = 16;
/// One engine thread, so one core stays free for hellasd and the clients. On the device the GPU
/// does the engine's work and most cores are idle; two spinning engine threads on this machine's
/// two cores would instead charge every proxy wake-up to the engine twice, once for the time and
/// once for the thread barrier it stalls.
const THREADS: u32 = 1;
const PROMPT: &str = "Write one sentence about the sea.";
const SEQUENTIAL_TOKENS: u64 = 8;
const LOAD_TOKENS: u64 = 32;
const SIDES: [&str; 3] = ["direct", "hellasd", "bare relay"];
const DIRECT: usize = 0;
const HELLASD: usize = 1;
/// A bare relay in front of the same engine: the floor for a proxy's CPU time (see `relay`).
const RELAY: usize = 2;

#[derive(clap::Args, Clone, Copy)]
pub struct Proxy {
    /// Timed rounds of each workload; a round measures one side, then the other.
    #[arg(long, default_value_t = 8)]
    rounds: usize,
    /// Sequential requests per side and round (time to first token).
    #[arg(long, default_value_t = 20)]
    requests: usize,
    /// Requests each of the 16 concurrent clients sends per side and round (throughput).
    #[arg(long, default_value_t = 2)]
    load_requests: usize,
    /// Keep the temporary directory with hellasd's and llama-server's logs (it is kept anyway
    /// when the bench fails).
    #[arg(long)]
    keep_logs: bool,
    /// One small round that proves the bench works (`cargo xtask test` runs it): no request may
    /// fail, the targets are not judged, and docs/benchmarks.md is left alone.
    #[arg(long, conflicts_with_all = ["rounds", "requests", "load_requests"])]
    pub smoke: bool,
}

impl Proxy {
    pub fn smoke() -> Proxy {
        Proxy {
            rounds: 1,
            requests: 2,
            load_requests: 1,
            keep_logs: false,
            smoke: true,
        }
    }

    pub fn run(&self) -> Result<()> {
        if self.smoke {
            return Proxy::smoke().measure_and_report();
        }
        self.measure_and_report()
    }

    fn measure_and_report(&self) -> Result<()> {
        if self.rounds == 0 || self.requests == 0 || self.load_requests == 0 {
            bail!("--rounds, --requests and --load-requests must be at least 1");
        }
        let cache = cache::root()?;
        let model = cache.join("models").join(MODEL_FILE);
        let llama_server = cache.join("engine/bin/llama-server");
        super::require_built(&[&llama_server, &model])?;
        let workspace = crate::workspace::locate()?;
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        println!("==> bench: cargo build --release -p hellasd");
        cmd!(cargo, "build", "--release", "-p", "hellasd")
            .dir(&workspace.root)
            .stdin_null()
            .run()
            .context("`cargo build --release -p hellasd` failed")?;
        let hellasd = workspace.target.join("release/hellasd");
        let version = cmd!(&llama_server, "--version")
            .stdin_null()
            .stderr_to_stdout()
            .read()
            .with_context(|| format!("`{} --version` failed", llama_server.display()))?;
        let machine = Machine::describe()?;
        let load_before = load_average()?;

        let mut scratch = Scratch::create("proxy")?;
        scratch.keep = self.keep_logs;
        let measured = match self.measure(&scratch.dir, &hellasd, &llama_server, &model) {
            Ok(measured) => measured,
            Err(err) => {
                scratch.keep = true;
                let logs = scratch.dir.display();
                return Err(err.context(format!("bench proxy failed; its logs are in {logs}")));
            }
        };
        let report = Report {
            args: self,
            machine,
            engine_version: engine_version(&version),
            hellasd_commit: hellasd_commit(&workspace.root),
            load: (load_before, load_average()?),
            measured,
        };
        let text = report.render();
        println!("\n{text}");
        if self.smoke {
            let failed: usize = report
                .measured
                .sequential
                .iter()
                .chain(&report.measured.load)
                .map(|s| s.failures)
                .sum();
            if failed > 0 {
                bail!("bench proxy --smoke: {failed} request(s) failed (see the report above)");
            }
            println!("==> bench proxy --smoke: works; a smoke run judges no target (PASS/FAIL above) and leaves docs/benchmarks.md alone");
            return Ok(());
        }
        let doc = super::write_section(&workspace.root, "proxy", &text)?;
        println!("==> bench: wrote {}", doc.display());
        if scratch.keep {
            println!("==> bench: logs kept in {}", scratch.dir.display());
        }
        Ok(())
    }

    /// Starts the sides, measures them, and stops them.
    fn measure(
        &self,
        dir: &Path,
        hellasd: &Path,
        llama_server: &Path,
        model: &Path,
    ) -> Result<Measured> {
        let agent = chat::agent(PARALLEL);
        let mut sides = Sides::start(&agent, dir, hellasd, llama_server, model)?;
        let endpoints = &sides.endpoints;
        let mut measured = Measured {
            engine_flags: flags(&sides.engine_argv),
            ..Measured::default()
        };
        println!("==> bench: warming up every side");
        for (side, endpoint) in endpoints.iter().enumerate() {
            let mut outcomes: Vec<_> = (0..3)
                .map(|_| chat::stream(&agent, endpoint, &request(SEQUENTIAL_TOKENS)))
                .collect();
            outcomes.extend(load_round(&agent, endpoint, 1).0);
            for err in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
                let message = format!("{err:#}");
                let first_line = message.lines().next().unwrap_or_default();
                measured.notes.push(format!(
                    "{} failed a warm-up request: {first_line}",
                    SIDES[side]
                ));
            }
        }

        let mut reference: Option<String> = None;
        for round in 0..self.rounds {
            for side in order(round) {
                let samples = &mut measured.sequential[side];
                let cpu = sides.proxy_cpu(side)?;
                for _ in 0..self.requests {
                    let outcome =
                        chat::stream(&agent, &endpoints[side], &request(SEQUENTIAL_TOKENS));
                    if let Ok(answer) = &outcome {
                        samples.busy += answer.total;
                        let reference = reference.get_or_insert_with(|| answer.text.clone());
                        if answer.text != *reference {
                            measured.answers_differ = true;
                            measured.notes.push(format!(
                                "{}'s greedy answer {:?} differs from the first one, {reference:?}",
                                SIDES[side], answer.text
                            ));
                        }
                    }
                    samples.record(outcome, SEQUENTIAL_TOKENS, &mut measured.notes, SIDES[side]);
                }
                samples.proxy_cpu += sides.proxy_cpu(side)? - cpu;
            }
            sides.ensure_running()?;
            println!(
                "==> bench: sequential round {}/{} done",
                round + 1,
                self.rounds
            );
        }
        for round in 0..self.rounds {
            let mut throughput = [0.0; 3];
            for side in order(round) {
                let cpu = sides.proxy_cpu(side)?;
                let (outcomes, wall) = load_round(&agent, &endpoints[side], self.load_requests);
                let tokens: u64 = outcomes.iter().flatten().map(|answer| answer.tokens).sum();
                throughput[side] = tokens as f64 / wall.as_secs_f64();
                let samples = &mut measured.load[side];
                samples.busy += wall;
                samples.proxy_cpu += sides.proxy_cpu(side)? - cpu;
                for outcome in outcomes {
                    samples.record(outcome, LOAD_TOKENS, &mut measured.notes, SIDES[side]);
                }
            }
            sides.ensure_running()?;
            measured
                .round_ratios
                .push(throughput[HELLASD] / throughput[DIRECT]);
            println!(
                "==> bench: load round {}/{}: {:.1} tokens/s direct, {:.1} through hellasd, {:.1} through the bare relay",
                round + 1,
                self.rounds,
                throughput[DIRECT],
                throughput[HELLASD],
                throughput[RELAY]
            );
        }
        for (workload, samples) in [
            ("sequential", &measured.sequential),
            ("load", &measured.load),
        ] {
            for side in [DIRECT, HELLASD, RELAY] {
                if samples[side].first_tokens.is_empty() {
                    let error = samples[side]
                        .first_failure
                        .as_deref()
                        .unwrap_or("no request sent");
                    bail!(
                        "every {workload} request to {} failed, the first with: {error}",
                        SIDES[side]
                    );
                }
            }
        }

        measured
            .stops
            .push(format!("hellasd {}", sides.daemon.stop()?));
        // hellasd stops its engines before it exits; one still running was left behind.
        if servers::is_running(sides.engine.0) {
            measured.notes.push(format!(
                "hellasd's engine (pid {}) still ran after hellasd exited; killed it",
                sides.engine.0
            ));
        }
        measured.notes.sort();
        measured.notes.dedup();
        Ok(measured)
    }
}

/// hellasd, its engine and the bare relay in front of it, in the order they are stopped when
/// dropped: hellasd (which stops its engine), then the engine if it outlived it.
struct Sides {
    daemon: Server,
    engine: Reaper,
    /// hellasd's engine command line.
    engine_argv: Vec<String>,
    relay: Relay,
    /// Indexed by `DIRECT`, `HELLASD` and `RELAY`.
    endpoints: [Endpoint; 3],
}

impl Sides {
    fn start(
        agent: &ureq::Agent,
        dir: &Path,
        hellasd: &Path,
        llama_server: &Path,
        model: &Path,
    ) -> Result<Sides> {
        let (hellasd_port, web_port, tls_port) = (
            servers::free_port()?,
            servers::free_port()?,
            servers::free_port()?,
        );
        let config = dir.join("hellasd.toml");
        fs::write(
            &config,
            hellasd_config(dir, llama_server, hellasd_port, [web_port, tls_port]),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let cli = |args: &[&str], stdin: Option<&str>| hellasd_cli(hellasd, &config, args, stdin);
        cli(
            &[
                "models",
                "add",
                &model.to_string_lossy(),
                "--name",
                MODEL_NAME,
            ],
            None,
        )?;
        // The API answers no one on a box without an owner: claim it, as an owner would.
        cli(
            &["set-password"],
            Some(&format!("bench-owner-{}\n", std::process::id())),
        )?;
        let key = cli(&["keys", "create", "bench"], None)?.trim().to_string();
        let hellasd_endpoint = Endpoint {
            base: format!("http://127.0.0.1:{hellasd_port}"),
            key: Some(key),
        };

        println!("==> bench: starting hellasd on 127.0.0.1:{hellasd_port}");
        let serve = [
            "--no-system-config".into(),
            "--config".into(),
            config.into(),
            "serve".into(),
        ];
        let daemon = Server::start(
            "hellasd",
            hellasd.into(),
            serve.into(),
            dir.join("hellasd.log"),
        )?;
        daemon.wait_healthy(agent, &hellasd_endpoint.base, Duration::from_secs(60))?;
        // The first request makes hellasd start the model's engine.
        chat::stream(agent, &hellasd_endpoint, &request(SEQUENTIAL_TOKENS))
            .context("the first request through hellasd failed")?;
        let (engine_pid, engine_argv) = servers::child_command(daemon.pid(), "llama-server")
            .context("hellasd answered a request but runs no engine")?;
        let engine = Reaper(engine_pid);
        let port = engine_argv.iter().skip_while(|arg| *arg != "--port").nth(1);
        let Some(port) = port else {
            bail!("hellasd's engine has no --port: {}", engine_argv.join(" "));
        };
        println!("==> bench: asking hellasd's engine directly at 127.0.0.1:{port}");
        let direct = Endpoint {
            base: format!("http://127.0.0.1:{port}"),
            key: None,
        };
        let port: u16 = port
            .parse()
            .with_context(|| format!("hellasd's engine listens on port {port:?}"))?;
        // One thread per client, and one more.
        let relay = Relay::start(([127, 0, 0, 1], port).into(), PARALLEL + 1)?;
        let relayed = Endpoint {
            base: format!("http://127.0.0.1:{}", relay.port),
            key: None,
        };
        Ok(Sides {
            daemon,
            engine,
            engine_argv,
            relay,
            endpoints: [direct, hellasd_endpoint, relayed],
        })
    }

    /// The CPU time used so far by what stands between `side`'s clients and the engine: the
    /// relay's threads for the bare relay; otherwise hellasd, which for the direct side is what
    /// it spends meanwhile (reading its engine's log).
    fn proxy_cpu(&self, side: usize) -> Result<Duration> {
        match side {
            RELAY => self.relay.cpu(),
            _ => servers::cpu_time(self.daemon.pid()),
        }
    }

    /// Fails if a server exited, or if hellasd's engine did (hellasd would start a new one,
    /// and the bench would measure a cold engine).
    fn ensure_running(&self) -> Result<()> {
        self.daemon.ensure_running()?;
        if !servers::is_running(self.engine.0) {
            bail!(
                "hellasd's engine (pid {}) exited during the bench",
                self.engine.0
            );
        }
        Ok(())
    }
}

/// hellasd's configuration: state in `dir`, the API and the web pages on loopback ports of their
/// own, and pooling (its control port, mDNS and the RPC worker) off, so that nothing the bench
/// starts is reachable from another machine.
fn hellasd_config(
    dir: &Path,
    llama_server: &Path,
    api_port: u16,
    [web_port, tls_port]: [u16; 2],
) -> String {
    // A JSON string is a valid TOML basic string, quotes and escapes included.
    let quoted = |path: &Path| Value::from(path.to_string_lossy()).to_string();
    format!(
        "state_dir = {}\n\n[api]\nlisten = \"127.0.0.1:{api_port}\"\nqueue_depth = 256\n\n\
         [engine]\nllama_server = {}\nctx = {CTX}\nparallel = {PARALLEL}\nthreads = {THREADS}\n\n\
         [web]\nlisten = \"127.0.0.1:{web_port}\"\ntls_listen = \"127.0.0.1:{tls_port}\"\nruntime_dir = {}\ncatalog = {}\n\n\
         [cluster]\nenabled = false\n\n\
         [sandbox]\nread_only = [{}]\n",
        quoted(&dir.join("state")),
        quoted(llama_server),
        quoted(&dir.join("run")),
        quoted(&dir.join("no-catalog.toml")),
        // The engine tree (bin/llama-server beside the tree it runs from) lives outside /usr.
        quoted(llama_server.parent().and_then(Path::parent).unwrap_or(llama_server)),
    )
}

/// The request every side gets: greedy, seeded, streamed, and generating exactly `max_tokens`.
fn request(max_tokens: u64) -> Value {
    json!({
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 42,
        "ignore_eos": true,
        "stream": true,
    })
}

/// The order of the sides in `round`: rotating, so none always runs after the same other.
fn order(round: usize) -> [usize; 3] {
    let mut sides = [DIRECT, HELLASD, RELAY];
    sides.rotate_left(round % 3);
    sides
}

/// `PARALLEL` clients, released together, each sending `per_client` requests one after the
/// other. Returns every request's outcome and the wall time from the first start to the last
/// answer.
fn load_round(
    agent: &ureq::Agent,
    endpoint: &Endpoint,
    per_client: usize,
) -> (Vec<Result<Timed>>, Duration) {
    let barrier = Barrier::new(PARALLEL);
    let request = request(LOAD_TOKENS);
    let clients: Vec<(Instant, Instant, Vec<Result<Timed>>)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..PARALLEL)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    let outcomes = (0..per_client)
                        .map(|_| chat::stream(agent, endpoint, &request))
                        .collect();
                    (start, Instant::now(), outcomes)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a bench client panicked"))
            .collect()
    });
    let start = clients
        .iter()
        .map(|client| client.0)
        .min()
        .expect("clients");
    let end = clients
        .iter()
        .map(|client| client.1)
        .max()
        .expect("clients");
    let outcomes = clients.into_iter().flat_map(|client| client.2).collect();
    (outcomes, end - start)
}

/// The first line of `llama-server --version`, which reads `version: N (build …)`.
fn engine_version(output: &str) -> String {
    let line = output.lines().next().unwrap_or("unknown").trim();
    line.strip_prefix("version:")
        .unwrap_or(line)
        .trim()
        .to_string()
}

/// Runs `hellasd --no-system-config --config CONFIG ARGS…` with `stdin` as its input and
/// returns what it printed.
fn hellasd_cli(
    hellasd: &Path,
    config: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String> {
    let shown = format!("hellasd {}", args.join(" "));
    let mut all: Vec<OsString> = vec!["--no-system-config".into(), "--config".into()];
    all.push(config.into());
    all.extend(args.iter().map(OsString::from));
    let command = match stdin {
        Some(text) => cmd(hellasd, all).stdin_bytes(text.as_bytes().to_vec()),
        None => cmd(hellasd, all).stdin_null(),
    };
    let output = command
        .stdout_capture()
        .stderr_capture()
        .unchecked()
        .run()
        .with_context(|| format!("`{shown}` failed to start"))?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The flags of an engine command line, as the report shows them: what follows the binary,
/// with the model and port (which differ between the sides) as placeholders.
fn flags(argv: &[String]) -> String {
    let binary = argv.iter().position(|arg| arg.ends_with("/llama-server"));
    let rest = &argv[binary.map_or(0, |at| at + 1)..];
    let mut shown = Vec::with_capacity(rest.len());
    for (at, arg) in rest.iter().enumerate() {
        match rest.get(at.wrapping_sub(1)).map(String::as_str) {
            Some("--model") => shown.push("MODEL"),
            Some("--port") => shown.push("PORT"),
            _ => shown.push(arg.as_str()),
        }
    }
    shown.join(" ")
}

/// The commit hellasd was built from, and whether its sources had uncommitted changes.
fn hellasd_commit(root: &Path) -> String {
    let git = |args: &[&str]| cmd("git", args).dir(root).stdin_null().stderr_null().read();
    let Ok(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "an uncommitted tree".into();
    };
    match git(&["status", "--porcelain", "--", "services/hellasd"]) {
        Ok(changes) if changes.trim().is_empty() => format!("commit {commit}"),
        _ => format!("commit {commit} with uncommitted changes in services/hellasd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_hide_what_differs_between_sides() {
        let argv: Vec<String> = "/ld.so --library-path /lib /tree/usr/bin/llama-server --model /m.gguf --port 9 --threads 2"
            .split(' ')
            .map(String::from)
            .collect();
        assert_eq!(flags(&argv), "--model MODEL --port PORT --threads 2");
    }

    #[test]
    fn hellasd_listens_on_loopback_only() {
        let text = hellasd_config(
            Path::new("/tmp/b \"q\""),
            Path::new("/e/llama-server"),
            1001,
            [1002, 1003],
        );
        let config: toml::Table = text.parse().unwrap();
        assert_eq!(config["api"]["listen"].as_str(), Some("127.0.0.1:1001"));
        assert_eq!(config["web"]["listen"].as_str(), Some("127.0.0.1:1002"));
        assert_eq!(config["web"]["tls_listen"].as_str(), Some("127.0.0.1:1003"));
        assert_eq!(config["cluster"]["enabled"].as_bool(), Some(false));
        assert_eq!(config["state_dir"].as_str(), Some("/tmp/b \"q\"/state"));
    }

    #[test]
    fn sides_take_turns_going_first() {
        assert_eq!(order(0), [DIRECT, HELLASD, RELAY]);
        assert_eq!(order(1), [HELLASD, RELAY, DIRECT]);
        assert_eq!(order(3), order(0));
    }
}
