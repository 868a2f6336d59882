//! Where an engine's model really sits, read from the real llama-server's load log. On the CPU,
//! `/api/ps` reports nothing in VRAM, and on a box that should run its engines on the GPU that
//! is an error the owner sees on the dashboard, in `/metrics` and in the journal, while the model
//! still answers. On a Vulkan device (Mesa's software one, lavapipe, the only one this machine
//! has) every layer and buffer is seen there, and the answer is the one llama-server gives on
//! that device directly. `hellasd bench` (and the dashboard's "Measure") reports how fast the
//! engine prefills and decodes, against this machine's memory bandwidth.

mod support;

use serde_json::{json, Value};
use support::{lavapipe, model, Daemon, DirectEngine, Setup, Visitor, SMOLLM};

fn greedy() -> Value {
    json!({"model": "smollm2:135m-q4_1", "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "seed": 42, "max_tokens": 8})
}

fn ask(daemon: &Daemon) -> String {
    let response = daemon.post("/v1/chat/completions", &greedy());
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().unwrap();
    answer["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no answer: {answer}")).to_string()
}

fn metric(daemon: &Daemon, name: &str) -> Option<f64> {
    let text = daemon.get("/metrics").text().unwrap();
    let line = text.lines().find(|l| l.starts_with(&format!("{name}{{model=\"smollm2:135m-q4_1\"}}")))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[test]
fn the_engine_says_where_it_runs_and_a_cpu_engine_on_a_gpu_box_is_an_error() {
    let cpu_box = Daemon::start(Setup::default());
    ask(&cpu_box);
    let ps: Value = cpu_box.get("/api/ps").json().unwrap();
    let model = &ps["models"][0];
    assert_eq!(model["size_vram"], 0, "nothing on a GPU here: {ps}");
    assert!(model["size"].as_u64().unwrap() > 100 << 20, "{ps}");
    assert_eq!(metric(&cpu_box, "hellas_memory_gpu_bytes"), Some(0.0));
    assert_eq!(metric(&cpu_box, "hellas_placement_problem"), Some(0.0), "a box without a GPU runs on the CPU as it should");
    let dashboard = Visitor::login(&cpu_box).get("/dashboard").text().unwrap();
    assert!(dashboard.contains("CPU: ") && dashboard.contains("in system memory, nothing on a GPU"), "{dashboard}");
    assert!(!dashboard.contains("class=\"warning\">the engine runs on the CPU"));
    let log = cpu_box.log();
    assert!(log.lines().any(|l| l.contains("engine ready") && l.contains("CPU: ") && l.contains("nothing on a GPU")), "the journal says where it loaded:\n{log}");
    assert!(!log.contains("get_availabl"), "per-request chatter stays out of the journal");

    let ps = support::run(cpu_box.cli().arg("ps").env("HELLAS_API_KEY", cpu_box.key.as_ref().unwrap()));
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("smollm2:135m-q4_1  planned") && ps.contains("on the GPU 0 B") && ps.contains("runs on CPU: ") && !ps.contains("problem"), "{ps}");

    let gpu_box = Daemon::start(Setup { expect_gpu: Some(true), ..Setup::default() });
    ask(&gpu_box);
    assert_eq!(metric(&gpu_box, "hellas_placement_problem"), Some(1.0));
    let ps = support::run(gpu_box.cli().arg("ps").env("HELLAS_API_KEY", gpu_box.key.as_ref().unwrap()));
    assert!(String::from_utf8_lossy(&ps.stdout).contains("problem: the engine runs on the CPU"), "{}", String::from_utf8_lossy(&ps.stdout));
    let dashboard = Visitor::login(&gpu_box).get("/dashboard").text().unwrap();
    assert!(dashboard.contains("class=\"warning\">the engine runs on the CPU, about ten times slower"), "{dashboard}");
    assert!(gpu_box.log().contains("the engine runs on the CPU"), "the journal has the error too");
}

#[test]
fn a_model_on_a_vulkan_device_is_seen_there_and_answers_as_llama_server_does_on_it() {
    let vulkan = Daemon::start(Setup { expect_gpu: Some(true), parallel: 1, engine_env: lavapipe(), ..Setup::default() });
    let answer = ask(&vulkan);
    let ps: Value = vulkan.get("/api/ps").json().unwrap();
    let (size, vram) = (ps["models"][0]["size"].as_u64().unwrap(), ps["models"][0]["size_vram"].as_u64().unwrap());
    // Weights (92 MiB), KV cache (45 MiB) and compute on Vulkan0; only staging buffers on the host.
    assert!(vram > 140 << 20 && vram < size, "size_vram {vram} of {size}: {ps}");
    assert_eq!(metric(&vulkan, "hellas_placement_problem"), Some(0.0));
    assert_eq!(metric(&vulkan, "hellas_memory_gpu_bytes"), Some(vram as f64));
    let dashboard = Visitor::login(&vulkan).get("/dashboard").text().unwrap();
    assert!(dashboard.contains("GPU Vulkan0 (llvmpipe") && dashboard.contains("31/31 layers"), "{dashboard}");
    assert!(!dashboard.contains("class=\"warning\">"), "{dashboard}");

    let direct = DirectEngine::start_in(&model(SMOLLM), 2048, 1, &[], &lavapipe());
    let expected: Value = direct.post("/v1/chat/completions", &greedy()).json().unwrap();
    assert_eq!(Some(answer.as_str()), expected["choices"][0]["message"]["content"].as_str(), "the same greedy answer as llama-server on the same device");
}

#[test]
fn the_bench_reports_prefill_and_decode_against_the_memory_bandwidth() {
    let daemon = Daemon::start(Setup { parallel: 1, ..Setup::default() });
    let out = support::run(daemon.cli().args(["bench", "smollm2:135m-q4_1", "--json"]).env("HELLAS_API_KEY", daemon.key.as_ref().unwrap()));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let number = |key: &str| report[key].as_f64().unwrap_or_else(|| panic!("no {key}: {report}"));
    assert!(number("prefill_tokens") >= 500.0 && number("decode_tokens") == 128.0, "{report}");
    assert!(number("prefill_per_sec") > number("decode_per_sec") && number("decode_per_sec") > 1.0, "{report}");
    // SmolLM2's weights less its tied embeddings' rows: ~92 MiB read per token.
    assert!((80e6..100e6).contains(&number("bytes_per_token")), "{report}");
    assert!(report["bandwidth"]["source"].as_str().unwrap().starts_with("measured by copying memory"), "{report}");
    assert!(number("ceiling_fraction") > 0.0 && number("ceiling_fraction") < 1.5, "{report}");
    assert!(report["placement"].as_str().unwrap().starts_with("CPU: ") && report["engine"].as_str().unwrap().starts_with('b'), "{report}");

    let text = support::run(daemon.cli().args(["bench", "smollm2:135m-q4_1"]).env("HELLAS_API_KEY", daemon.key.as_ref().unwrap()));
    let line = String::from_utf8_lossy(&text.stdout);
    assert!(line.contains("decode") && line.contains("memory bandwidth ceiling"), "{line}");
    println!("{line}");
    let refused = support::run(daemon.cli().args(["bench", "smollm2:135m-q4_1", "--key", "hls_wrong"]));
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("401"), "{}", String::from_utf8_lossy(&refused.stderr));

    // The dashboard keeps the latest report, and measures again on the owner's click.
    let mut owner = Visitor::login(&daemon);
    let page = owner.get("/dashboard").text().unwrap();
    assert!(page.contains("<table id=\"bench\">") && page.contains("measured by copying memory"), "{page}");
    let csrf = owner.csrf("/dashboard");
    let measured = owner.post("/models/bench", &[("csrf", &csrf), ("name", "smollm2:135m-q4_1")]);
    assert_eq!(measured.headers()["location"], "/dashboard");
}
