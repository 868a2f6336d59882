//! Where an engine's model really sits, read from the real llama-server's load log: here on the
//! CPU (the only device this machine has), which `/api/ps` reports as nothing in VRAM, and which
//! on a box that should run its engines on the GPU is an error the owner sees on the dashboard,
//! in `/metrics` and in the journal, while the model still answers.

mod support;

use serde_json::{json, Value};
use support::{Daemon, Setup, Visitor};

fn ask(daemon: &Daemon) {
    let body = json!({"model": "smollm2:135m-q4_1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    assert_eq!(daemon.post("/v1/chat/completions", &body).status(), 200);
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

    let gpu_box = Daemon::start(Setup { expect_gpu: Some(true), ..Setup::default() });
    ask(&gpu_box);
    assert_eq!(metric(&gpu_box, "hellas_placement_problem"), Some(1.0));
    let dashboard = Visitor::login(&gpu_box).get("/dashboard").text().unwrap();
    assert!(dashboard.contains("class=\"warning\">the engine runs on the CPU, about ten times slower"), "{dashboard}");
    assert!(gpu_box.log().contains("the engine runs on the CPU"), "the journal has the error too");
}
