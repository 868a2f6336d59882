//! hellasd end to end with the real llama-server and the real SmolLM2 and Gemma 3 models.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Daemon, DirectEngine, Setup, Visitor, GEMMA, SMOLLM};

const SMOL: &str = "smollm2:135m-q4_1";

fn greedy_chat(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0, "seed": 42, "max_tokens": 24, "stream": stream,
    })
}

fn content(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no content in {answer}")).to_string()
}

/// Reads an SSE body, returning each event's data with its arrival time.
fn sse_events(response: reqwest::blocking::Response) -> Vec<(Instant, String)> {
    let mut events = Vec::new();
    let reader = BufReader::new(response);
    for line in reader.lines() {
        let Ok(line) = line else { break };
        if let Some(data) = line.strip_prefix("data: ") {
            events.push((Instant::now(), data.to_string()));
        }
    }
    events
}

fn streamed_text(events: &[(Instant, String)]) -> String {
    events
        .iter()
        .filter(|(_, d)| d != "[DONE]")
        .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(String::from))
        .collect()
}

#[test]
fn greedy_answers_match_the_engine_directly_and_stream_incrementally() {
    let daemon = Daemon::start(Setup::default());
    let through = daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false));
    assert_eq!(through.status(), 200);
    let through: Value = through.json().unwrap();
    let text = content(&through);
    assert!(text.len() > 10, "answer too short: {text:?}");

    let direct = DirectEngine::start(&support::model(SMOLLM), 2048, 2);
    let direct_answer: Value = direct.post("/v1/chat/completions", &greedy_chat(SMOL, false)).json().unwrap();
    assert_eq!(text, content(&direct_answer), "hellasd and llama-server disagree");
    drop(direct);

    // Streaming: the same text, arriving in many pieces spread over the generation.
    let mut long = greedy_chat(SMOL, true);
    long["max_tokens"] = json!(64);
    let sent = Instant::now();
    let events = sse_events(daemon.post("/v1/chat/completions", &long));
    assert!(events.len() > 20, "expected one event per token, got {}", events.len());
    let first = events.first().unwrap().0;
    let last = events.last().unwrap().0;
    assert!(last.duration_since(first) > Duration::from_millis(100), "events arrived together: not streamed incrementally");
    assert!(first.duration_since(sent) < last.duration_since(sent) / 2, "first byte came late");
    let mut short = greedy_chat(SMOL, true);
    short["max_tokens"] = json!(24);
    assert_eq!(streamed_text(&sse_events(daemon.post("/v1/chat/completions", &short))), text);

    // Token counts and latencies reach the metrics.
    let metrics = daemon.get("/metrics").text().unwrap();
    assert!(metrics.contains("hellas_requests_total{route=\"/v1/chat/completions\",model=\"smollm2:135m-q4_1\",status=\"200\"} 3"), "{metrics}");
    assert!(metrics.contains("hellas_tokens_total{model=\"smollm2:135m-q4_1\",direction=\"out\"}"), "{metrics}");
    assert!(metrics.contains("hellas_time_to_first_token_seconds_count{model=\"smollm2:135m-q4_1\"} 3"), "{metrics}");
    assert!(metrics.contains("hellas_models_loaded 1"), "{metrics}");
}

#[test]
fn ollama_api_works() {
    let daemon = Daemon::start(Setup::default());
    // The API version clients compare, and what really answers beside it.
    let version: Value = daemon.get("/api/version").json().unwrap();
    assert!(version["version"].as_str().is_some_and(|v| v.split('.').count() == 3), "{version}");
    assert_eq!(version["hellasd"], env!("CARGO_PKG_VERSION"), "{version}");
    let engine = version["engine"].as_str().unwrap_or_else(|| panic!("the engine's version: {version}"));
    assert!(engine.starts_with("llama.cpp llama-server ") && engine.contains("build "), "{version}");
    let openai = content(&daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).json().unwrap());

    let request = json!({
        "model": SMOL, "stream": true,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "options": {"temperature": 0, "seed": 42, "num_predict": 24},
    });
    let response = daemon.post("/api/chat", &request);
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = BufReader::new(response).lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    assert!(lines.len() > 5, "{lines:?}");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert_eq!(last["eval_count"], 24, "{last}");
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0, "{last}");
    let text: String = lines.iter().filter_map(|l| l["message"]["content"].as_str()).collect();
    assert_eq!(text, openai);

    let mut whole = request.clone();
    whole["stream"] = json!(false);
    let answer: Value = daemon.post("/api/chat", &whole).json().unwrap();
    assert_eq!(answer["message"]["content"], openai.as_str());
    assert_eq!(answer["done"], true);

    let generated: Value = daemon
        .post("/api/generate", &json!({"model": SMOL, "prompt": "What is the capital of France?", "stream": false, "options": {"temperature": 0, "seed": 42, "num_predict": 24}}))
        .json()
        .unwrap();
    assert_eq!(generated["response"], openai.as_str(), "{generated}");

    let tags: Value = daemon.get("/api/tags").json().unwrap();
    assert_eq!(tags["models"][0]["name"], SMOL);
    assert_eq!(tags["models"][0]["details"]["family"], "llama");
    let show: Value = daemon.post("/api/show", &json!({"model": SMOL})).json().unwrap();
    assert_eq!(show["model_info"]["general.architecture"], "llama");
    assert!(show["template"].as_str().unwrap().contains("im_start"), "{show}");
    assert_eq!(show["capabilities"], json!(["completion"]), "{show}");
    let ps: Value = daemon.get("/api/ps").json().unwrap();
    assert_eq!(ps["models"][0]["name"], SMOL);
    assert!(ps["models"][0]["size"].as_u64().unwrap() > 50_000_000);

    let missing = daemon.post("/api/chat", &json!({"model": "nope", "messages": []}));
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().unwrap();
    assert!(missing["error"].as_str().unwrap().contains("nope"), "{missing}");

    // Copy gives a second name to the same files; delete takes a name away, and the files only
    // with the last name.
    assert_eq!(daemon.post("/api/copy", &json!({"source": SMOL, "destination": "mine:latest"})).status(), 200);
    assert_eq!(daemon.post("/api/copy", &json!({"source": "nope", "destination": "x"})).status(), 404);
    assert_eq!(daemon.post("/api/copy", &json!({"source": SMOL, "destination": "mine:latest"})).status(), 400, "the name is taken");
    let copied: Value = daemon.post("/api/generate", &json!({"model": "mine", "prompt": "What is the capital of France?", "stream": false, "options": {"temperature": 0, "seed": 42, "num_predict": 24}})).json().unwrap();
    assert_eq!(copied["response"], openai.as_str(), "the copy is the same model: {copied}");
    let blobs = || std::fs::read_dir(daemon.state_dir().join("models/blobs")).unwrap().count();
    let delete = |name: &str| daemon.client().delete(format!("{}/api/delete", daemon.url)).bearer_auth(daemon.key.as_ref().unwrap()).json(&json!({"model": name})).send().unwrap();
    assert_eq!(delete(SMOL).status(), 200);
    assert_eq!(blobs(), 1, "the copy still uses the file");
    assert_eq!(delete(SMOL).status(), 404);
    assert_eq!(delete("mine:latest").status(), 200);
    assert_eq!(blobs(), 0, "no name uses the file any more");
    assert!(loaded(&daemon).is_empty(), "a deleted model's engine is stopped");
}

fn loaded(daemon: &Daemon) -> Vec<String> {
    let ps: Value = daemon.get("/api/ps").json().unwrap();
    let mut names: Vec<String> = ps["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap().to_string()).collect();
    names.sort();
    names
}

fn planned_total(daemon: &Daemon, file: &str) -> u64 {
    let out = support::run(daemon.cli().args(["plan", "--ctx", "2048", "--parallel", "2", "--budget", "1000000000000", "--json"]).arg(support::model(file)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    plan["plan"]["total"].as_u64().or(plan["total"].as_u64()).unwrap_or_else(|| panic!("no total in {plan}"))
}

#[test]
fn models_that_fit_together_stay_together_and_lru_is_evicted_otherwise() {
    let models = vec![(SMOL, SMOLLM), ("gemma3:270m", GEMMA)];
    let roomy = Daemon::start(Setup { models: models.clone(), budget_bytes: Some(8 << 30), ..Setup::default() });
    let ask = |d: &Daemon, m: &str| {
        let r = d.post("/v1/completions", &json!({"model": m, "prompt": "The sky is", "max_tokens": 4, "temperature": 0}));
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    };
    ask(&roomy, SMOL);
    ask(&roomy, "gemma3:270m");
    assert_eq!(loaded(&roomy), vec!["gemma3:270m", SMOL]);
    assert_eq!(roomy.engine_pids().len(), 2);

    let smol = planned_total(&roomy, SMOLLM);
    let gemma = planned_total(&roomy, GEMMA);
    drop(roomy);
    // Room for the larger one alone, not for both.
    let tight = Daemon::start(Setup { models, budget_bytes: Some(smol.max(gemma) + smol.min(gemma) / 2), ..Setup::default() });
    ask(&tight, SMOL);
    ask(&tight, "gemma3:270m");
    assert_eq!(loaded(&tight), vec!["gemma3:270m"]);
    ask(&tight, SMOL);
    assert_eq!(loaded(&tight), vec![SMOL]);
    assert_eq!(tight.engine_pids().len(), 1, "the evicted engine's process must be gone");
}

#[test]
fn a_killed_engine_ends_its_stream_with_an_error_and_the_next_request_succeeds() {
    let mut daemon = Daemon::start(Setup::default());
    assert_eq!(daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).status(), 200);
    let pids = daemon.engine_pids();
    assert_eq!(pids.len(), 1);

    let mut long = greedy_chat(SMOL, true);
    long["max_tokens"] = json!(4000);
    long["ignore_eos"] = json!(true);
    let mut reader = BufReader::new(daemon.post("/v1/chat/completions", &long));
    let mut line = String::new();
    let mut data_lines = 0;
    while data_lines < 5 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended early");
        if line.starts_with("data: ") {
            data_lines += 1;
        }
    }
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    let last = rest.lines().rfind(|l| l.starts_with("data: ")).expect("no event after the kill");
    let event: Value = serde_json::from_str(last.trim_start_matches("data: ")).unwrap();
    assert_eq!(event["error"]["type"], "engine_error", "{event}");
    let message = event["error"]["message"].as_str().unwrap();
    assert!(message.contains("engine for 'smollm2:135m-q4_1' exited unexpectedly (signal: 9 (SIGKILL)"), "{event}");

    assert!(daemon.is_alive());
    let again = daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false));
    assert_eq!(again.status(), 200);
    let new_pids = daemon.engine_pids();
    assert_eq!(new_pids.len(), 1);
    assert_ne!(new_pids, pids);
    let metrics = daemon.get("/metrics").text().unwrap();
    assert!(metrics.contains("hellas_engine_restarts_total{model=\"smollm2:135m-q4_1\"} 1"), "{metrics}");
}

#[test]
fn bad_requests_get_clear_errors_and_the_daemon_lives_on() {
    let mut daemon = Daemon::start(Setup::default());
    let client = daemon.client();
    let base = daemon.url.clone();
    let url = |p: &str| format!("{base}{p}");
    let key = daemon.key.clone().unwrap();

    let bad = client.post(url("/v1/chat/completions")).bearer_auth(&key).body("{not json").send().unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().unwrap();
    assert_eq!(bad["error"]["type"], "invalid_request_error");
    assert!(bad["error"]["message"].as_str().unwrap().contains("invalid JSON"), "{bad}");

    let unknown = daemon.post("/v1/chat/completions", &greedy_chat("no-such-model", false));
    assert_eq!(unknown.status(), 404);
    let unknown: Value = unknown.json().unwrap();
    assert_eq!(unknown["error"]["available"], json!([SMOL]), "{unknown}");

    // A chat model asked for embeddings: what to use instead, not the engine's bare 501.
    let embeddings = daemon.post("/v1/embeddings", &json!({"model": SMOL, "input": "hello"}));
    assert_eq!(embeddings.status(), 400);
    let embeddings: Value = embeddings.json().unwrap();
    let message = embeddings["error"]["message"].as_str().unwrap();
    assert!(message.contains("makes no embeddings") && message.contains("there is none in the library"), "{embeddings}");
    assert!(loaded(&daemon).is_empty(), "nothing was started for it");

    let anonymous = client.post(url("/v1/chat/completions")).json(&greedy_chat(SMOL, false)).send().unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = client.post(url("/v1/chat/completions")).bearer_auth("hls_0000").json(&greedy_chat(SMOL, false)).send().unwrap();
    assert_eq!(wrong.status(), 401);

    let huge = json!({"model": SMOL, "messages": [{"role": "user", "content": "x".repeat(2 << 20)}]});
    let too_large = daemon.post("/v1/chat/completions", &huge);
    assert_eq!(too_large.status(), 413);
    let too_large: Value = too_large.json().unwrap();
    assert_eq!(too_large["error"]["type"], "request_too_large");

    assert_eq!(daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).status(), 200);
    let other = support::run(daemon.cli().args(["keys", "create", "other"]));
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let out = support::run(daemon.cli().args(["keys", "revoke", "test"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked = daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false));
    assert_eq!(revoked.status(), 401);
    let revoked: Value = revoked.json().unwrap();
    assert!(revoked["error"]["message"].as_str().unwrap().contains("revoked"), "{revoked}");
    assert!(support::run(daemon.cli().args(["keys", "revoke", "other"])).status.success());

    // With no key left, a request without one is told how to send one.
    let keyless = client.get(url("/v1/models")).send().unwrap();
    assert_eq!(keyless.status(), 401);
    let keyless: Value = keyless.json().unwrap();
    assert!(keyless["error"]["message"].as_str().unwrap().contains("Authorization: Bearer"), "{keyless}");

    assert!(daemon.is_alive());
    assert_eq!(client.get(url("/health")).send().unwrap().status(), 200);
}

#[test]
fn metrics_need_a_key_unless_the_owner_opened_them_to_a_network() {
    let daemon = Daemon::start(Setup { models: vec![], ..Setup::default() });
    let client = daemon.client();
    let keyless = client.get(format!("{}/metrics", daemon.url)).send().unwrap();
    assert_eq!(keyless.status(), 401);
    assert!(keyless.text().unwrap().contains("Authorization: Bearer"));
    let with_key = daemon.get("/metrics");
    assert_eq!(with_key.status(), 200);
    assert!(with_key.text().unwrap().contains("hellas_memory_budget_bytes"));
    // The owner's browser reads them on the web port with the owner's session; a visitor is sent to log in.
    let mut visitor = Visitor::new(&daemon);
    let anonymous = visitor.get("/metrics");
    assert!(anonymous.status().is_redirection() && anonymous.headers()["location"] == "/login", "{:?}", anonymous.status());
    let mut owner = Visitor::login(&daemon);
    let session = owner.get("/metrics");
    assert_eq!(session.status(), 200);
    assert!(session.text().unwrap().contains("hellas_memory_budget_bytes"));

    let open = Daemon::start(Setup { models: vec![], metrics_open_to: vec!["127.0.0.0/8"], ..Setup::default() });
    let scraped = open.client().get(format!("{}/metrics", open.url)).send().unwrap();
    assert_eq!(scraped.status(), 200, "a Prometheus on the trusted network needs no key");
    assert_eq!(open.client().get(format!("{}/v1/models", open.url)).send().unwrap().status(), 401, "the models still do");
}

#[test]
fn a_model_too_large_for_the_budget_is_refused_with_the_plan() {
    let daemon = Daemon::start(Setup { budget_bytes: Some(64 << 20), ..Setup::default() });
    let response = daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false));
    assert_eq!(response.status(), 507);
    let body: Value = response.json().unwrap();
    assert_eq!(body["error"]["type"], "insufficient_memory", "{body}");
    assert!(body["error"]["plan"]["weights"].as_u64().unwrap() > 60_000_000, "{body}");
    assert_eq!(body["error"]["plan"]["budget"], 64 << 20);
    assert!(daemon.engine_pids().is_empty(), "nothing may be started for a model that cannot fit");
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let daemon = Daemon::start(Setup { parallel: 1, queue_depth: 1, ..Setup::default() });
    assert_eq!(daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).status(), 200);
    let mut long = greedy_chat(SMOL, false);
    long["max_tokens"] = json!(100);
    long["ignore_eos"] = json!(true);
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let (daemon, long) = (&daemon, long.clone());
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(200 * i));
                    let r = daemon.post("/v1/chat/completions", &long);
                    (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert_eq!((ok, refused.len()), (2, 1), "{statuses:?}");
    assert!(refused[0].1.is_some(), "429 without Retry-After");
}

#[test]
fn an_idle_model_is_unloaded_and_its_process_stops() {
    let daemon = Daemon::start(Setup { idle_unload_secs: 2, ..Setup::default() });
    assert_eq!(daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).status(), 200);
    assert_eq!(loaded(&daemon), vec![SMOL]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !loaded(&daemon).is_empty() {
        assert!(Instant::now() < deadline, "the idle model was not unloaded");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(daemon.engine_pids().is_empty(), "the engine process outlived its unload");
    // It comes back on demand.
    assert_eq!(daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).status(), 200);
}

#[test]
fn ollama_keep_alive_loads_holds_and_unloads_per_request() {
    let daemon = Daemon::start(Setup::default());
    let expires = || -> u64 {
        let ps: Value = daemon.get("/api/ps").json().unwrap();
        let at = ps["models"][0]["expires_at"].as_str().unwrap_or_else(|| panic!("nothing loaded: {ps}"));
        humantime::parse_rfc3339(at).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    };
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();

    // An empty prompt loads; "-1" keeps it until it must make room.
    let loaded_answer: Value = daemon.post("/api/generate", &json!({"model": SMOL, "keep_alive": "-1"})).json().unwrap();
    assert_eq!(loaded_answer["done_reason"], "load", "{loaded_answer}");
    assert!(expires() > now() + 50 * 365 * 86400, "kept for good");
    // A request's duration sets it again: five minutes.
    let chat = json!({"model": SMOL, "stream": false, "keep_alive": "5m", "messages": [{"role": "user", "content": "Hi"}], "options": {"num_predict": 2}});
    assert_eq!(daemon.post("/api/chat", &chat).status(), 200);
    let left = expires() - now();
    assert!((290..=301).contains(&left), "{left} s left");

    // 0: unloaded as soon as it has answered, its process gone.
    let pids = daemon.engine_pids();
    let mut at_once = chat.clone();
    at_once["keep_alive"] = json!(0);
    assert_eq!(daemon.post("/api/chat", &at_once).status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !loaded(&daemon).is_empty() {
        assert!(Instant::now() < deadline, "keep_alive 0 left the model loaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pids.iter().all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()), "its engine process stopped");

    // An empty prompt with 0 unloads at once; a duration that is none is refused.
    daemon.post("/api/generate", &json!({"model": SMOL}));
    let unloaded: Value = daemon.post("/api/generate", &json!({"model": SMOL, "keep_alive": 0})).json().unwrap();
    assert_eq!(unloaded["done_reason"], "unload", "{unloaded}");
    assert!(loaded(&daemon).is_empty());
    let refused = daemon.post("/api/chat", &json!({"model": SMOL, "keep_alive": "soon", "messages": []}));
    assert_eq!(refused.status(), 400);
    assert!(refused.text().unwrap().contains("keep_alive"));

    // num_ctx within the plan (2048 a request here) is taken; beyond it, refused with the plan's.
    let mut within = chat.clone();
    within["options"]["num_ctx"] = json!(2048);
    assert_eq!(daemon.post("/api/chat", &within).status(), 200);
    within["options"]["num_ctx"] = json!(8192);
    let beyond = daemon.post("/api/chat", &within);
    assert_eq!(beyond.status(), 400);
    let said = beyond.text().unwrap();
    assert!(said.contains("num_ctx 8192") && said.contains("2048 tokens"), "{said}");
}

/// The value of the sample `name{model_name="…"}` in `/metrics`, as an endpoint picker reads it.
fn gateway_gauge(daemon: &Daemon, name: &str, model: &str) -> Option<f64> {
    let text = daemon.get("/metrics").text().unwrap();
    let prefix = format!("{name}{{model_name=\"{model}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
}

fn ready(daemon: &Daemon) -> (u16, Option<String>, Value) {
    let r = daemon.client().get(format!("{}/ready", daemon.url)).send().unwrap();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), retry_after, r.json().unwrap())
}

/// The gateway's view of a box: the queue, running requests and KV cache under the endpoint
/// picker's default (vLLM) names, and a drain that finishes what runs and what waits while new
/// work is refused with 503 and Retry-After, on every route and on `/ready`.
#[test]
fn a_gateway_reads_the_load_and_a_draining_box_finishes_what_it_runs() {
    let daemon = Daemon::start(Setup { parallel: 1, queue_depth: 4, api_on_every_address: true, ..Setup::default() });
    let key = daemon.key.clone().unwrap();
    assert_eq!(daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).status(), 200, "warm-up");

    // A client on the network, key or not, cannot drain the box; only the box itself can.
    let port = daemon.url.rsplit(':').next().unwrap();
    let address = support::run(std::process::Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]));
    let address = String::from_utf8_lossy(&address.stdout).split_whitespace().skip_while(|w| *w != "inet").nth(1).and_then(|a| a.split('/').next()).map(str::to_string);
    let address = address.expect("this machine has a non-loopback IPv4 address to test from");
    let remote = daemon.client().post(format!("http://{address}:{port}/v1/hellas/drain")).bearer_auth(&key).json(&json!({"drain": true})).send().unwrap();
    assert_eq!(remote.status(), 403, "a drain from {address}");
    assert!(remote.text().unwrap().contains("hellasd drain"));
    assert_eq!(ready(&daemon).0, 200, "still ready");
    assert_eq!(ready(&daemon).0, 200);
    assert_eq!(gateway_gauge(&daemon, "vllm:num_requests_running", SMOL), Some(0.0), "a loaded model is listed while idle");

    let mut long = greedy_chat(SMOL, true);
    long["max_tokens"] = json!(400);
    long["ignore_eos"] = json!(true);
    let drain = |args: &[&str]| {
        let out = support::run(daemon.cli().arg("drain").args(args).env("HELLAS_API_KEY", &key));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    std::thread::scope(|s| {
        let (first_byte_tx, first_byte) = std::sync::mpsc::channel();
        let (daemon, long) = (&daemon, &long);
        let running = s.spawn(move || {
            let mut response = daemon.post("/v1/chat/completions", long);
            assert_eq!(response.status(), 200);
            let mut first = [0u8; 1];
            response.read_exact(&mut first).unwrap();
            first_byte_tx.send(()).unwrap();
            let mut rest = String::new();
            response.read_to_string(&mut rest).unwrap();
            rest
        });
        first_byte.recv().unwrap();
        let waiting = s.spawn(move || daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).status().as_u16());
        let deadline = Instant::now() + Duration::from_secs(10);
        while gateway_gauge(daemon, "vllm:num_requests_waiting", SMOL) != Some(1.0) {
            assert!(Instant::now() < deadline, "the second request never showed as waiting");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(gateway_gauge(&daemon, "vllm:num_requests_running", SMOL), Some(1.0));
        let kv = gateway_gauge(&daemon, "vllm:kv_cache_usage_perc", SMOL).unwrap();
        assert!(kv > 0.0 && kv < 1.0, "a running request holds part of the KV cache: {kv}");

        // Draining: what runs and what waits goes on; anything new is sent elsewhere.
        assert_eq!(drain(&[]), "draining");
        let (status, retry_after, body) = ready(&daemon);
        assert_eq!((status, retry_after.is_some()), (503, true), "{body}");
        assert_eq!((body["status"].as_str(), body["running"].as_u64(), body["waiting"].as_u64()), (Some("draining"), Some(1), Some(1)), "{body}");
        for (path, request) in [
            ("/v1/chat/completions", greedy_chat(SMOL, false)),
            ("/api/chat", json!({"model": SMOL, "stream": false, "messages": [{"role": "user", "content": "Hi"}]})),
        ] {
            let refused = daemon.post(path, &request);
            assert_eq!(refused.status(), 503, "{path}");
            assert!(refused.headers().contains_key("retry-after"), "{path}: 503 without Retry-After");
            assert!(refused.text().unwrap().contains("draining"), "{path}");
        }
        let waited = drain(&["--wait"]);
        assert!(waited.starts_with("draining: 1 running, 1 waiting") && waited.ends_with("\ndrained"), "{waited}");
        let rest = running.join().unwrap();
        assert!(rest.trim_end().ends_with("data: [DONE]"), "the running stream was finished whole: …{}", &rest[rest.len().saturating_sub(200)..]);
        assert_eq!(waiting.join().unwrap(), 200, "the waiting request was answered");
    });
    let (status, _, body) = ready(&daemon);
    assert_eq!((status, body["status"].as_str()), (503, Some("drained")), "{body}");
    assert_eq!(gateway_gauge(&daemon, "vllm:kv_cache_usage_perc", SMOL), Some(0.0));

    assert_eq!(drain(&["--off"]), "ready");
    assert_eq!(ready(&daemon).0, 200);
    assert_eq!(daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false)).status(), 200, "taking requests again");

    // The owner drains from the dashboard too; while it lasts the dashboard says so, with the
    // button that ends it.
    let mut owner = Visitor::login(&daemon);
    let csrf = owner.csrf("/dashboard");
    assert!(!owner.get("/dashboard").text().unwrap().contains("id=\"draining\""));
    assert_eq!(owner.post("/drain", &[("csrf", &csrf), ("drain", "true")]).status(), 303);
    assert_eq!(ready(&daemon).2["status"], "drained");
    let page = owner.get("/dashboard").text().unwrap();
    assert!(page.contains("id=\"draining\"") && page.contains("This box is drained") && page.contains("id=\"end-drain\""), "{page}");
    assert_eq!(owner.post("/drain", &[("csrf", "forged"), ("drain", "false")]).status(), 403, "a forged form changes nothing");
    assert_eq!(ready(&daemon).0, 503);
    assert_eq!(owner.post("/drain", &[("csrf", &csrf), ("drain", "false")]).status(), 303);
    assert_eq!(ready(&daemon).0, 200);
}

/// `engine.speculative = "ngram"`: the engine drafts from what it has seen and the model checks
/// the drafts, so copying code takes drafted tokens and gives the text it gives without them.
#[test]
fn speculative_decoding_drafts_from_what_the_engine_has_seen() {
    let code: String = (0..8).map(|i| format!("def scale_{i}(x):\n    return x * {i} + {}\n\n", i * i)).collect();
    let copy = json!({
        "model": SMOL, "temperature": 0, "seed": 42, "max_tokens": 96,
        "messages": [{"role": "user", "content": format!("Copy this Python code exactly, without any change:\n\n{code}")}],
    });
    let answer = |daemon: &Daemon| -> Value {
        let response = daemon.post("/v1/chat/completions", &copy);
        assert_eq!(response.status(), 200);
        response.json().unwrap()
    };
    let plain = Daemon::start(Setup { parallel: 1, ..Setup::default() });
    let expected = answer(&plain);
    assert!(expected["timings"]["draft_n"].is_null(), "no drafts without it: {}", expected["timings"]);
    drop(plain);

    let drafting = Daemon::start(Setup { parallel: 1, speculative: Some("ngram"), ..Setup::default() });
    answer(&drafting);
    // The second time, the sequences of the first answer are there to draft from.
    let drafted = answer(&drafting);
    let accepted = drafted["timings"]["draft_n_accepted"].as_u64().unwrap_or(0);
    assert!(accepted > 20, "drafted tokens accepted: {}", drafted["timings"]);
    assert_eq!(content(&drafted), content(&expected), "the same greedy text");
}

/// `hellasd models draft`: a model drafts with a smaller one of its vocabulary. Here SmolLM2
/// drafts for itself, from a file of its own (SmolLM2's with a byte appended, which llama.cpp
/// loads the same, so the engine's sandbox must let it read a second file): no faster (the draft
/// is as large), but at greedy every drafted token is accepted, which shows the draft ran, and
/// the text is the model's own. The plan counts both models.
#[test]
fn a_model_drafts_with_the_model_named_for_it() {
    const DRAFT: &str = "smollm2-draft:135m";
    let daemon = Daemon::start(Setup { parallel: 1, models: vec![(SMOL, SMOLLM), ("gemma3:270m", GEMMA)], ..Setup::default() });
    let models = |args: &[&str]| {
        let out = support::run(support::hellasd().arg("--config").arg(&daemon.config).arg("models").args(args));
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let copy = daemon.dir.path().join("draft.gguf");
    let mut bytes = std::fs::read(support::model(SMOLLM)).unwrap();
    bytes.push(0);
    std::fs::write(&copy, bytes).unwrap();
    let (ok, said) = models(&["add", copy.to_str().unwrap(), "--name", DRAFT]);
    assert!(ok, "{said}");
    let ask = |daemon: &Daemon| -> Value {
        let response = daemon.post("/v1/chat/completions", &greedy_chat(SMOL, false));
        assert_eq!(response.status(), 200);
        response.json().unwrap()
    };
    let planned = |daemon: &Daemon| -> u64 {
        let ps: Value = daemon.get("/api/ps").json().unwrap();
        ps["models"][0]["size"].as_u64().unwrap_or_else(|| panic!("one loaded model: {ps}"))
    };
    let alone = ask(&daemon);
    assert!(alone["timings"]["draft_n"].is_null(), "no drafts without one: {}", alone["timings"]);
    let alone_size = planned(&daemon);
    assert_eq!(daemon.post("/api/generate", &json!({"model": SMOL, "keep_alive": 0})).status(), 200, "unloaded");

    // Drafts llama-server would refuse are refused here, with why.
    let (ok, said) = models(&["draft", SMOL, "gemma3:270m"]);
    assert!(!ok && said.contains("cannot draft for") && said.contains("tokenizers differ"), "{said}");
    let (ok, said) = models(&["draft", SMOL, SMOL]);
    assert!(!ok && said.contains("cannot draft for itself"), "{said}");
    let (ok, said) = models(&["draft", SMOL, DRAFT]);
    assert!(ok, "{said}");
    assert!(models(&["list"]).1.contains(&format!("draft:{DRAFT}")));
    let dashboard = Visitor::login(&daemon).get("/dashboard").text().unwrap();
    assert!(dashboard.contains(&format!("drafts with {DRAFT}")), "the dashboard says which model drafts");
    // Removing the draft from the dashboard is refused with why.
    let mut owner = Visitor::login(&daemon);
    let csrf = owner.csrf("/dashboard");
    let refused = owner.post("/models/remove", &[("csrf", &csrf), ("name", DRAFT)]);
    assert_eq!(refused.status(), 409);
    assert!(refused.text().unwrap().contains(&format!("is the draft model of &#x27;{SMOL}&#x27;")));
    let (ok, said) = models(&["rm", DRAFT]);
    assert!(!ok && said.contains(&format!("is the draft model of '{SMOL}'")), "{said}");
    let refused = daemon.client().delete(format!("{}/api/delete", daemon.url)).bearer_auth(daemon.key.as_deref().unwrap()).json(&json!({"model": DRAFT})).send().unwrap();
    assert_eq!(refused.status(), 409, "Ollama's delete of a draft in use");

    let drafted = ask(&daemon);
    let (made, accepted) = (drafted["timings"]["draft_n"].as_u64().unwrap_or(0), drafted["timings"]["draft_n_accepted"].as_u64().unwrap_or(0));
    assert!(made > 0 && accepted == made, "the draft's guesses, all accepted: {}", drafted["timings"]);
    assert_eq!(content(&drafted), content(&alone), "the same greedy text");
    // The plan grew by at least what the draft itself takes (its margin grew too).
    let out = support::run(support::hellasd().arg("plan").arg(support::model(SMOLLM)).args(["--ctx", "2048", "--parallel", "1", "--budget", "8GiB", "--json"]));
    let draft_plan: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("hellasd plan --json ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let draft_bytes: u64 = ["weights", "kv_cache", "compute"].iter().map(|k| draft_plan["plan"][k].as_u64().unwrap()).sum();
    let grown = planned(&daemon) - alone_size;
    assert!(grown >= draft_bytes && grown < alone_size, "the plan holds the model and its draft: +{grown} bytes for a draft of {draft_bytes}");

    let (ok, said) = models(&["draft", SMOL, "--none"]);
    assert!(ok, "{said}");
    assert!(models(&["rm", DRAFT]).0, "no longer a draft, it can go");
}
