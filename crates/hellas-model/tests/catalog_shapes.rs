//! The planner on every catalog architecture, against llama.cpp itself.
//!
//! `shapes/shape_gguf.py` writes each catalog model as a shape-only GGUF: its real metadata and
//! tensor table (from the published config.json values in `shapes/models.toml`), its data a
//! sparse hole. This test starts llama-server on each, as hellasd does, reads the buffers
//! llama.cpp sizes for it (weights, KV cache, compute, output; the vision projector's weights and
//! compute buffer) and checks the planner against them: total within 5%, KV cache within 2%.
//! Run with `--nocapture` to see the table.
//!
//! Two things differ from how hellasd runs llama-server, both so that no tensor data is read:
//! `--load-mode mmap` instead of `none` (which reads every byte into memory: 140 GB here), with
//! `shapes/no_prefetch.c` preloaded so the mapping is not faulted in ahead of use, and the server
//! is stopped once its last buffer is sized, before its first decode (`--no-warmup`, and the
//! check it decodes for at start-up). The sizes are the same either way; see
//! docs/memory-planning.md.
//!
//! Needs the engine and the `gguf` Python package under `$HELLAS_CACHE` (`cargo xtask engine &&
//! cargo xtask models`) and a C compiler (`cc`, which cargo links with anyway).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hellas_model::gguf::{GgufFile, ModelKind};
use hellas_model::plan::{self, CacheType};
use hellas_model::projector;

mod support;
use support::{cache_dir, free_port, pct, Reported, Server, MIB};

/// One llama-server start: a model of models.toml at a context, slot count and cache type.
struct Case {
    model: &'static str,
    ctx: u32,
    parallel: u32,
    cache: CacheType,
}

const fn case(model: &'static str, ctx: u32, parallel: u32, cache: CacheType) -> Case {
    Case { model, ctx, parallel, cache }
}

/// Small contexts keep the KV cache llama.cpp clears at start-up small; two slots and a q8_0 cache
/// each appear on MoE, sliding-window and dense models.
const CASES: &[Case] = &[
    case("gpt-oss-20b", 4096, 1, CacheType::F16),
    case("gpt-oss-20b", 16384, 1, CacheType::Q8_0),
    case("gpt-oss-120b", 4096, 2, CacheType::F16),
    case("qwen3-30b-a3b", 4096, 1, CacheType::F16),
    case("qwen3-30b-a3b", 16384, 1, CacheType::Q8_0),
    case("qwen3-235b-a22b", 4096, 1, CacheType::F16),
    case("llama-3.3-70b", 4096, 1, CacheType::F16),
    case("llama-3.3-70b", 4096, 2, CacheType::Q8_0),
    case("gemma-3-27b", 4096, 1, CacheType::F16),
    case("gemma-3-27b", 16384, 1, CacheType::Q8_0),
    case("glm-4.5-air", 4096, 1, CacheType::F16),
    case("glm-4.5-air", 4096, 2, CacheType::Q8_0),
    case("qwen3-embedding-0.6b", 4096, 1, CacheType::F16),
    case("qwen3-embedding-0.6b", 8192, 2, CacheType::F16),
    case("qwen2.5-vl-7b", 4096, 1, CacheType::F16),
];

const TOTAL_TOLERANCE: f64 = 0.05;
const KV_TOLERANCE: f64 = 0.02;
const TIMEOUT: Duration = Duration::from_secs(90);
const SETUP: &str = "run `cargo xtask engine && cargo xtask models`";

/// Where the test finds what it needs.
struct Engine {
    server: PathBuf,
    /// The generated models (and the compiled no_prefetch.so).
    shapes: PathBuf,
}

impl Engine {
    fn model(&self, name: &str) -> PathBuf {
        self.shapes.join(format!("{name}.gguf"))
    }

    /// The model's vision projector, where models.toml gives it one.
    fn projector(&self, name: &str) -> Option<PathBuf> {
        Some(self.shapes.join(format!("{name}-mmproj.gguf"))).filter(|p| p.exists())
    }

    fn preload(&self) -> PathBuf {
        self.shapes.join("no_prefetch.so")
    }
}

/// The shape-only models, generated once per version of the script, its data and the shim, under
/// `$HELLAS_CACHE/shape-models/<digest>/` (a few MB on disk: the data are holes).
fn prepare() -> Engine {
    let cache = cache_dir();
    let server = cache.join("engine/bin/llama-server");
    let python = cache.join("python");
    assert!(server.exists(), "{} missing: {SETUP}", server.display());
    assert!(python.join("gguf").is_dir(), "the gguf Python package is missing from {}: {SETUP}", python.display());

    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shapes");
    let inputs = ["shape_gguf.py", "models.toml", "no_prefetch.c"].map(|f| sources.join(f));
    let digest = inputs.iter().fold(FNV_OFFSET, |h, p| fnv1a(h, &fs::read(p).unwrap()));
    let root = cache.join("shape-models");
    let shapes = root.join(format!("{digest:016x}"));
    if !shapes.join("done").exists() {
        // Older generations are stale: their files are holes, but their headers are not.
        let _ = fs::remove_dir_all(&root);
        let staging = root.join("staging");
        fs::create_dir_all(&staging).unwrap();
        run(Command::new("python3").arg(&inputs[0]).arg(&staging).env("PYTHONPATH", &python), "shape_gguf.py");
        let so = staging.join("no_prefetch.so");
        run(Command::new("cc").args(["-shared", "-fPIC", "-O2", "-o"]).arg(&so).arg(&inputs[2]).arg("-ldl"), "cc");
        fs::write(staging.join("done"), "").unwrap();
        fs::rename(&staging, &shapes).unwrap();
    }
    Engine { server, shapes }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("starting {what}: {e} ({SETUP})"));
    assert!(out.status.success(), "{what} failed ({SETUP}):\n{}", String::from_utf8_lossy(&out.stderr));
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: a digest that stays the same across Rust releases, to name the cache directory.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Starts llama-server with `args` and stops it once the log holds every one of `markers`;
/// returns the log.
fn run_until(engine: &Engine, args: &[&str], markers: &[&str], log_path: &Path) -> String {
    let log = File::create(log_path).unwrap();
    let port = free_port().to_string();
    let child = Command::new(&engine.server)
        .args(args)
        .args(["--host", "127.0.0.1", "--port", &port, "-lv", "4"])
        .env("LD_PRELOAD", engine.preload())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", engine.server.display()));
    let mut server = Server(child);
    let started = Instant::now();
    loop {
        let log = fs::read_to_string(log_path).unwrap_or_default();
        if markers.iter().all(|m| log.contains(m)) {
            return log;
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("llama-server {args:?} exited with {status}; its log ends:\n{}", tail(&log));
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "llama-server {args:?}: no {markers:?} after {TIMEOUT:?}; its log ends:\n{}",
            tail(&log)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last lines of a log (at `-lv 4` llama-server lists every tensor before it says what failed).
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// llama.cpp's sizes for one case: the model run as hellasd runs it, and, for a vision model,
/// the projector's estimate llama-server prints before it loads anything.
fn measure(engine: &Engine, c: &Case, embedding: bool, logs: &Path) -> Reported {
    let model = engine.model(c.model);
    let model = model.to_str().unwrap();
    let projector = engine.projector(c.model);
    let ctx = (c.ctx * c.parallel).to_string();
    let np = c.parallel.to_string();
    let mut args =
        vec!["-m", model, "-c", &ctx, "-np", &np, "-fa", "on", "-ctk", c.cache.as_str(), "-ctv", c.cache.as_str()];
    if embedding {
        args.push("--embeddings");
    }
    let stem = format!("{}-{}x{}-{}", c.model, c.ctx, c.parallel, c.cache);
    let mut markers = vec!["sched_reserve: reserve took"];
    let mut log = String::new();
    if let Some(projector) = &projector {
        let projector = projector.to_str().unwrap();
        // With warmup on (hellasd's default) clip reserves its compute buffer, and llama-server
        // prints its estimate of the projector, weights and that buffer, before loading anything.
        let mut with_warmup = args.clone();
        with_warmup.extend(["--mmproj", projector]);
        let estimate = ["memory usage of mmproj is"];
        log += &run_until(engine, &with_warmup, &estimate, &logs.join(format!("{stem}-mmproj.log")));
        args.extend(["--mmproj", projector]);
        markers.push("load_hparams: model size:");
    }
    args.extend(["--load-mode", "mmap", "--no-repack", "--no-warmup", "--fit", "off"]);
    log += &run_until(engine, &args, &markers, &logs.join(format!("{stem}.log")));
    Reported::parse(&log)
}

#[test]
fn planner_matches_llama_server_on_catalog_shapes() {
    let engine = prepare();
    let logs = tempfile::tempdir().unwrap();
    println!(
        "\n{:<22} {:>10} {:>5} | {:>19} {:>15} {:>15} {:>11} | {:>9} {:>9} {:>6} {:>6}",
        "model",
        "ctx×slots",
        "cache",
        "weights MiB",
        "KV MiB",
        "compute MiB",
        "output MiB",
        "plan MiB",
        "real MiB",
        "total",
        "KV"
    );
    let mut failures = Vec::new();
    let mut projectors: Vec<(&str, PathBuf, Reported)> = Vec::new();
    for c in CASES {
        let info = GgufFile::open(&engine.model(c.model)).unwrap().model_info().unwrap();
        let real = measure(&engine, c, info.kind == ModelKind::Embedding, logs.path());
        assert!(real.model > 0.0 && real.kv > 0.0 && real.compute > 0.0, "no buffer sizes logged for {}", c.model);

        let e = plan::estimate(&info, c.ctx, c.parallel, c.cache);
        let planned = e.subtotal() as f64;
        let total_error = (planned - real.total()) / real.total();
        let kv_error = (e.kv_cache as f64 - real.kv) / real.kv;
        let pair = |p: u64, r: f64| format!("{:.2}/{:.2}", p as f64 / MIB, r / MIB);
        let name = format!("{} {}×{} {}", c.model, c.ctx, c.parallel, c.cache);
        println!(
            "{:<22} {:>10} {:>5} | {:>19} {:>15} {:>15} {:>11} | {:>9.2} {:>9.2} {:>6} {:>6}",
            c.model,
            format!("{}×{}", c.ctx, c.parallel),
            c.cache.as_str(),
            pair(e.weights, real.model),
            pair(e.kv_cache, real.kv),
            pair(e.compute_graph, real.compute),
            pair(e.output, real.output),
            planned / MIB,
            real.total() / MIB,
            pct(planned, real.total()),
            pct(e.kv_cache as f64, real.kv),
        );
        if total_error.abs() > TOTAL_TOLERANCE {
            failures.push(format!(
                "{name}: total planned {planned} vs {} ({:+.1}%)",
                real.total(),
                total_error * 100.0
            ));
        }
        if kv_error.abs() > KV_TOLERANCE {
            failures.push(format!("{name}: KV planned {} vs {} ({:+.1}%)", e.kv_cache, real.kv, kv_error * 100.0));
        }
        // A projector's buffers do not depend on the case: check each once.
        if let Some(path) = engine.projector(c.model).filter(|_| projectors.iter().all(|(m, ..)| *m != c.model)) {
            projectors.push((c.model, path, real));
        }
    }
    println!("(each cell: planner/llama-server)\n");

    println!("{:<22} | {:>17} {:>17} | {:>6}", "projector", "weights MiB", "compute MiB", "total");
    for (model, path, real) in projectors {
        let p = projector::estimate(&GgufFile::open(&path).unwrap()).unwrap();
        let real_compute = real.projector_total - real.projector_weights;
        assert!(real.projector_weights > 0.0 && real_compute > 0.0, "no projector sizes logged for {model}");
        let error = (p.total() as f64 - real.projector_total) / real.projector_total;
        println!(
            "{:<22} | {:>17} {:>17} | {:>6}",
            model,
            format!("{:.2}/{:.2}", p.weights as f64 / MIB, real.projector_weights / MIB),
            format!("{:.2}/{:.2}", p.compute as f64 / MIB, real_compute / MIB),
            pct(p.total() as f64, real.projector_total),
        );
        if error.abs() > TOTAL_TOLERANCE {
            failures.push(format!(
                "{model} projector: planned {} vs {} ({:+.1}%)",
                p.total(),
                real.projector_total,
                error * 100.0
            ));
        }
    }
    println!();
    assert!(failures.is_empty(), "planner off llama.cpp's own sizes:\n{}", failures.join("\n"));
}
