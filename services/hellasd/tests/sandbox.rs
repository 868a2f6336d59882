//! Engines run sandboxed: a probe started in llama-server's place, by the same spawn path as a
//! real engine, tries what an engine taken over by a malicious model file would try.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Daemon, Setup};

#[test]
fn an_engine_cannot_reach_the_owners_state_the_fence_or_the_network() {
    let probe = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sandbox_probe.py");
    // A port anyone outside the sandbox could connect to: the test itself listens on it.
    let outside = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let outside_port = outside.local_addr().unwrap().port();
    let setup = Setup { engine: Some(probe), engine_env: vec![("PROBE_OUTSIDE_PORT", outside_port.to_string())], ..Setup::default() };
    let daemon = Daemon::start(setup);
    let report_path = daemon.state_dir().join("scratch/engines/probe.json");
    assert!(std::fs::metadata(daemon.state_dir().join("owner.json")).is_ok(), "the box has an owner to protect");

    // Any request for the model starts its engine; the probe answers only /health.
    let trigger = {
        let daemon_url = daemon.url.clone();
        let key = daemon.key.clone().unwrap();
        std::thread::spawn(move || {
            let _ = reqwest::blocking::Client::new()
                .post(format!("{daemon_url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "smollm2:135m-q4_1", "messages": [{"role": "user", "content": "hi"}]}))
                .timeout(Duration::from_secs(120))
                .send();
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !report_path.exists() {
        assert!(Instant::now() < deadline, "the probe wrote no report; log:\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let report: BTreeMap<String, serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let _ = trigger.join();

    let status = &report["status"];
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status[set], "0000000000000000", "{set} of the engine: {status}");
    }
    assert_eq!(status["NoNewPrivs"], "1");
    for allowed in ["read its model", "write its scratch directory"] {
        assert!(report[allowed].as_str().unwrap().starts_with("allowed"), "{allowed}: {}", report[allowed]);
    }
    let refused = |what: &str, why: &str| {
        let said = report[what].as_str().unwrap();
        assert!(said.starts_with("refused") && said.contains(why), "{what}: {said}");
    };
    refused("write owner.json", "Permission denied");
    refused("make a file in the state directory", "Permission denied");
    refused("read the key store", "Permission denied");
    refused("list the model library", "Permission denied");
    refused("read /etc/passwd", "Permission denied");
    refused("touch the fence", "Operation not permitted");
    refused("connect out", "Permission denied");
    refused("bind another port", "Permission denied");
    refused("signal hellasd", "Operation not permitted");
    // Nothing the probe tried left a trace where it was refused.
    assert!(!daemon.state_dir().join("planted").exists());
    assert!(!daemon.log().contains("sandbox incomplete"), "this kernel enforces the whole sandbox; log:\n{}", daemon.log());
    let ps: serde_json::Value = daemon.get("/api/ps").json().unwrap();
    assert_eq!(ps["models"][0]["sandbox"], "sandboxed: no capabilities, Landlock fully enforced", "{ps}");
    drop(outside);
}
