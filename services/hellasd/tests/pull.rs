//! Pulling models from Hugging Face, against a local stand-in for the Hub (`support::hub_server`)
//! that speaks the part of its API the box uses: a split model (SmolLM2 cut into three parts by
//! llama.cpp's own gguf-split) is pulled whole, verified, resumed after a cut connection, and
//! answers through the daemon as the unsplit file does directly; every failure says what to do
//! and leaves nothing in the library.

mod support;

use std::path::PathBuf;
use std::process::Output;

use serde_json::{json, Value};
use support::hub_server::{part_name, smollm_repo, REPO};
use support::{model, run, Daemon, DirectEngine, Setup, SMOLLM};

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn greedy(post: impl Fn(&Value) -> reqwest::blocking::Response, name: &str) -> String {
    let body = json!({"model": name, "messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0, "seed": 42, "max_tokens": 16});
    let answer: Value = post(&body).json().unwrap();
    answer["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no answer: {answer}")).to_string()
}

#[test]
fn a_split_model_is_pulled_whole_verified_resumed_and_served() {
    let (_dir, hub) = smollm_repo();
    let part = part_name;
    let daemon = Daemon::start(Setup { models: vec![], budget_bytes: Some(4 << 30), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    let pull = |reference: &str| run(daemon.cli().args(["models", "pull", reference]));
    let library = || String::from_utf8(run(daemon.cli().args(["models", "list"])).stdout).unwrap();

    for (reference, says) in [
        ("hf.co/test/Nothing-GGUF:Q4_1", "no such repository on Hugging Face"),
        (&format!("hf.co/{REPO}:Q4_1@v9"), "no such revision"),
        (&format!("hf.co/{REPO}:Q9_9"), "has no Q9_9 model"),
        (&format!("hf.co/{REPO}:Q5_0"), "lacks part(s) Gappy-Q5_0-00002-of-00002.gguf"),
        (&format!("hf.co/{REPO}:Q8_0"), "is it a GGUF file?"),
        (&format!("hf.co/{REPO}:Q3_K_M"), "not the abababab"),
        ("huggingface.co/test", "hf.co/ORG/REPO:QUANT"),
    ] {
        let out = pull(reference);
        assert!(!out.status.success() && text(&out).contains(says), "{reference}: {}", text(&out));
    }
    assert_eq!(library().trim(), "", "nothing half-fetched is ever named in the library");
    let partials: Vec<PathBuf> = std::fs::read_dir(daemon.state_dir().join("downloads")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(partials.is_empty(), "a file that failed its sha256 is deleted: {partials:?}");

    // The connection breaks in the middle of the second part: the download resumes from there.
    hub.cut_next(&part(2), 1 << 20);
    let out = pull(&format!("hf.co/{REPO}:Q4_1"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("on this box: fits at context 2048") && text(&out).contains("added hf.co/test/smollm2-135m-instruct-gguf:q4_1"), "{}", text(&out));
    assert!(hub.requests(&part(2)).ends_with(&[0, 1 << 20]), "resumed from the cut: {:?}", hub.requests(&part(2)));
    assert!(library().contains("hf.co/test/smollm2-135m-instruct-gguf:q4_1"), "{}", library());

    // Served from its first part, named as the client pulled it, it answers as the whole file.
    let direct = DirectEngine::start(&model(SMOLLM), 2048, 2);
    let expected = greedy(|b| direct.post("/v1/chat/completions", b), "any");
    let answer = greedy(|b| daemon.post("/v1/chat/completions", b), &format!("hf.co/{REPO}:Q4_1"));
    assert_eq!(answer, expected);
    let fetched = hub.requests(&part(1)).len();
    let again = pull(&format!("hf.co/{REPO}:Q4_1"));
    assert!(again.status.success() && text(&again).contains("in the library already"), "{}", text(&again));
    assert_eq!(hub.requests(&part(1)).len(), fetched, "a model already pulled is not fetched again");
}

#[test]
fn ollama_pull_streams_its_progress_and_refuses_what_does_not_fit() {
    let (_dir, hub) = smollm_repo();
    let daemon = Daemon::start(Setup { models: vec![], budget_bytes: Some(4 << 30), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    let reference = format!("hf.co/{REPO}:Q4_1");
    let response = daemon.post("/api/pull", &json!({ "model": reference }));
    assert_eq!(response.status(), 200);
    let lines: Vec<Value> = response.text().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let statuses: Vec<&str> = lines.iter().filter_map(|l| l["status"].as_str()).collect();
    assert_eq!(statuses.first(), Some(&"pulling manifest"), "{lines:?}");
    assert_eq!(&statuses[statuses.len() - 2..], ["writing manifest", "success"], "{lines:?}");
    // Byte counts over all the files: they only grow, up to the whole (a watcher sees the
    // latest count, so the last one it streams may fall short of the total).
    let counts: Vec<(u64, u64)> = lines.iter().filter_map(|l| Some((l["completed"].as_u64()?, l["total"].as_u64()?))).collect();
    assert!(!counts.is_empty() && counts.windows(2).all(|w| w[0].0 <= w[1].0) && counts.iter().all(|(done, total)| done <= total), "{counts:?}");
    assert!(lines.iter().filter_map(|l| l["digest"].as_str()).all(|d| d.starts_with("sha256:")), "{lines:?}");
    let tags: Value = daemon.get("/api/tags").json().unwrap();
    assert!(tags.to_string().contains("hf.co/test/smollm2-135m-instruct-gguf:q4_1"), "{tags}");
    let chat = daemon.post("/api/chat", &json!({"model": reference, "messages": [{"role": "user", "content": "Hi"}], "stream": false, "options": {"num_predict": 4}}));
    assert_eq!(chat.status(), 200, "the pulled model answers under the name it was pulled by");

    let small = Daemon::start(Setup { models: vec![], budget_bytes: Some(64 << 20), hub: Some(hub.endpoint.clone()), ..Setup::default() });
    let refused = small.post("/api/pull", &json!({ "model": reference, "stream": false }));
    assert_eq!(refused.status(), 507);
    assert!(refused.text().unwrap().contains("does not fit"));
    let unknown = small.post("/api/pull", &json!({ "model": "llama3" }));
    assert_eq!(unknown.status(), 404);
    assert!(unknown.text().unwrap().contains("hf.co/ORG/REPO:QUANT"));
}
