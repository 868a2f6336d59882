//! Open WebUI (PyPI `open-webui`) in front of a box, as people run it: one connection to the
//! box's OpenAI API and one to its Ollama API, each with the box's key, and a person chatting in
//! Chromium through each.
//!
//! Open WebUI with its dependencies is about 7 GB (PyTorch among them), too heavy for `cargo
//! xtask test`: this test is ignored there and run by `cargo xtask clients`, which installs it
//! into `$HELLAS_CACHE/open-webui` first.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::webdriver::Browser;
use support::{cache_dir, Daemon, Setup};

const MODEL: &str = "smollm2:135m-q4_1";

/// Open WebUI serving on a port of its own, stopped when dropped.
struct OpenWebUi {
    child: Child,
    url: String,
}

impl OpenWebUi {
    fn start(daemon: &Daemon, data: &std::path::Path) -> OpenWebUi {
        let python = cache_dir().join("open-webui/bin/python");
        assert!(python.exists(), "{} is missing: run `cargo xtask clients`", python.display());
        let key = daemon.key.as_deref().unwrap();
        let port = support::free_port();
        let log = std::fs::File::create(data.join("open-webui.log")).unwrap();
        let child = Command::new(python)
            .args(["-m", "uvicorn", "open_webui.main:app", "--host", "127.0.0.1", "--port", &port.to_string()])
            // Where `open-webui serve` says its files are.
            .env("FROM_INIT_PY", "true")
            .env("DATA_DIR", data)
            .env("WEBUI_SECRET_KEY", "hellas-test")
            // One person, no sign-in: this test is about the connections, not Open WebUI's users.
            .env("WEBUI_AUTH", "False")
            .env("OPENAI_API_BASE_URL", format!("{}/v1", daemon.url))
            .env("OPENAI_API_KEY", key)
            .env("OPENAI_API_CONFIGS", json!({ "0": { "prefix_id": "openai" } }).to_string())
            .env("ENABLE_OLLAMA_API", "True")
            .env("OLLAMA_BASE_URL", &daemon.url)
            .env("OLLAMA_API_CONFIGS", json!({ "0": { "key": key, "prefix_id": "ollama" } }).to_string())
            // Greedy, so the answer is the same every run.
            .env("DEFAULT_MODEL_PARAMS", json!({ "temperature": 0, "max_tokens": 48 }).to_string())
            // No internet: no embedding model to fetch, no update check, no extra generations
            // (titles, tags, follow-ups) beside the chat.
            .env("OFFLINE_MODE", "true")
            .env("HF_HUB_OFFLINE", "1")
            .env("BYPASS_EMBEDDING_AND_RETRIEVAL", "true")
            .env("ENABLE_VERSION_UPDATE_CHECK", "false")
            .env("ENABLE_TITLE_GENERATION", "false")
            .env("ENABLE_TAGS_GENERATION", "false")
            .env("ENABLE_FOLLOW_UP_GENERATION", "false")
            .env("ENABLE_AUTOCOMPLETE_GENERATION", "false")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting Open WebUI");
        let ui = OpenWebUi { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(300);
        while !reqwest::blocking::get(format!("{}/health", ui.url)).is_ok_and(|r| r.status().is_success()) {
            assert!(Instant::now() < deadline, "Open WebUI did not start; see {}", data.join("open-webui.log").display());
            std::thread::sleep(Duration::from_millis(500));
        }
        ui
    }
}

impl Drop for OpenWebUi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs Open WebUI: cargo xtask clients"]
fn open_webui_chats_through_both_connections() {
    let daemon = Daemon::start(Setup::default());
    let dir = tempfile::tempdir().unwrap();
    let ui = OpenWebUi::start(&daemon, dir.path());
    let browser = Browser::start(&dir.path().join("chromedriver.log"));
    let artefacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("open-webui");
    std::fs::create_dir_all(&artefacts).unwrap();

    let mut answers = Vec::new();
    for (connection, route) in [("openai", "/v1/chat/completions"), ("ollama", "/api/chat")] {
        let before = daemon.answered(route, MODEL);
        // The model list Open WebUI read from the box over this connection offers the model.
        browser.goto(&format!("{}/?model={connection}.{MODEL}", ui.url));
        let selected = browser.wait_text("#model-selector-model-button", Duration::from_secs(60), |t| !t.is_empty());
        assert!(selected.contains(&format!("{connection}.{MODEL}")), "{connection}: the selected model is {selected:?}");
        // Its release notes greet a first visit.
        if let Some(okay) = browser.try_find_text("button", "Okay, Let's Go!") {
            okay.click();
        }
        let input = browser.find("#chat-input");
        input.click();
        input.type_text("What is the capital of France?");
        browser.find("#send-message-button").click();
        let deadline = Instant::now() + Duration::from_secs(180);
        while daemon.answered(route, MODEL) == before {
            assert!(Instant::now() < deadline, "{connection}: no answer came through the box's {route}");
            std::thread::sleep(Duration::from_millis(200));
        }
        // The page shows the whole answer once it stops changing.
        let mut answer = String::new();
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let now = browser.text(".chat-assistant");
            if !now.trim().is_empty() && now == answer {
                break;
            }
            assert!(Instant::now() < deadline, "{connection}: the answer on the page kept changing: {now:?}");
            answer = now;
        }
        browser.screenshot(&artefacts.join(format!("{connection}.png")));
        eprintln!("{connection}: {answer}");
        assert_eq!(daemon.answered(route, MODEL), before + 1, "{connection}: one request through the box's {route}");
        answers.push(answer);
    }
    // Greedy, the same question through either connection is the same answer from the engine.
    assert_eq!(answers[0], answers[1], "the OpenAI and the Ollama connection answered differently");
}
