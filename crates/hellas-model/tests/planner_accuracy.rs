//! Planner accuracy: starts the real llama-server on the test models, reads the buffer sizes it
//! reports (model, KV, compute, output), and checks the planner's weights + KV + compute against
//! their sum. Run with `--nocapture` to see the comparison table.
//!
//! The engine and models are found under `$HELLAS_CACHE` (default `$HOME/.cache/hellas`):
//! `engine/bin/llama-server` and `models/<file>`; `cargo xtask engine && cargo xtask models`
//! puts them there.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hellas_model::gguf::GgufFile;
use hellas_model::plan::{self, CacheType};

mod support;
use support::{cache_dir, free_port, pct, Reported, Server, MIB};

const MODELS: [&str; 2] = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"];
/// (model index, ctx per slot, slots, cache type).
const CASES: [(usize, u32, u32, CacheType); 6] = [
    (0, 2048, 1, CacheType::F16),
    (0, 4096, 2, CacheType::F16),
    (0, 1024, 4, CacheType::Q8_0),
    (1, 2048, 1, CacheType::F16),
    (1, 4096, 2, CacheType::F16),
    (1, 8192, 1, CacheType::Q8_0),
];
const TOLERANCE: f64 = 0.05;
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

fn health_ok(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}

/// Starts llama-server as hellasd does, waits for /health, stops it, and returns its log.
fn run_server(server: &Path, model: &Path, ctx: u32, parallel: u32, cache: CacheType, log_path: &Path) -> String {
    let log = File::create(log_path).unwrap();
    let port = free_port();
    let child = Command::new(server)
        .arg("-m")
        .arg(model)
        .args(["-c", &(ctx * parallel).to_string(), "-np", &parallel.to_string()])
        .args(["--load-mode", "none", "-fa", "on", "-ctk", cache.as_str(), "-ctv", cache.as_str()])
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-lv", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", server.display()));
    let mut guard = Server(child);
    let started = Instant::now();
    let read_log = || std::fs::read_to_string(log_path).unwrap_or_default();
    loop {
        if health_ok(port) {
            break;
        }
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!("llama-server exited with {status} before becoming healthy; log:\n{}", read_log());
        }
        if started.elapsed() > STARTUP_TIMEOUT {
            panic!("llama-server not healthy after {STARTUP_TIMEOUT:?}; log:\n{}", read_log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(guard);
    read_log()
}

#[test]
fn planner_matches_llama_server() {
    let cache = cache_dir();
    let server = cache.join("engine/bin/llama-server");
    let models: Vec<PathBuf> = MODELS.iter().map(|m| cache.join("models").join(m)).collect();
    if !server.exists() || models.iter().any(|m| !m.exists()) {
        panic!("test engine/models missing: run `cargo xtask engine && cargo xtask models`");
    }
    let infos: Vec<_> = models.iter().map(|m| GgufFile::open(m).unwrap().model_info().unwrap()).collect();
    let logs = tempfile::tempdir().unwrap();

    println!(
        "\n{:<34} {:>11} {:>5} | {:>16} {:>16} {:>16} {:>16} | {:>8} {:>8} {:>7}",
        "model",
        "ctx×slots",
        "cache",
        "weights MiB",
        "KV MiB",
        "compute MiB",
        "output MiB",
        "plan MiB",
        "real MiB",
        "error"
    );
    let mut failures = Vec::new();
    for (i, &(m, ctx, parallel, cache_type)) in CASES.iter().enumerate() {
        let log_path = logs.path().join(format!("case{i}.log"));
        let log = run_server(&server, &models[m], ctx, parallel, cache_type, &log_path);
        let real = Reported::parse(&log);
        assert!(real.model > 0.0 && real.kv > 0.0 && real.compute > 0.0, "no buffer sizes in the log:\n{log}");

        let e = plan::estimate(&infos[m], ctx, parallel, cache_type);
        let planned = e.subtotal() as f64;
        let error = (planned - real.total()) / real.total();
        let pair = |p: u64, r: f64| format!("{:.2}/{:.2}", p as f64 / MIB, r / MIB);
        println!(
            "{:<34} {:>11} {:>5} | {:>16} {:>16} {:>16} {:>16} | {:>8.2} {:>8.2} {:>7}",
            MODELS[m],
            format!("{ctx}×{parallel}"),
            cache_type.as_str(),
            pair(e.weights, real.model),
            pair(e.kv_cache, real.kv),
            pair(e.compute_graph, real.compute),
            pair(e.output, real.output),
            planned / MIB,
            real.total() / MIB,
            pct(planned, real.total()),
        );
        if error.abs() > TOLERANCE {
            failures.push(format!(
                "{} {ctx}×{parallel} {cache_type}: planned {planned} vs {} ({:+.1}%)",
                MODELS[m],
                real.total(),
                error * 100.0
            ));
        }
    }
    println!("(each cell: planner/llama-server)\n");
    assert!(failures.is_empty(), "planner off by more than {:.0}%:\n{}", TOLERANCE * 100.0, failures.join("\n"));
}
