//! The model kinds end to end, through the clients people use: the official `openai` and
//! `ollama` Python packages (pinned in xtask/src/python.rs, driven by `support/clients.py`)
//! against a real hellasd running real llama-server engines, one daemon for all of it.
//!
//! An embedding model (all-MiniLM-L6-v2, converted from its published weights by `cargo xtask
//! models`) answers both clients' embedding calls with the vectors sentence-transformers
//! computes; a chat model asked for embeddings is refused with the name of the one to ask. The
//! ollama client pulls a vision model from a stand-in Hub (Gemma 3 270M beside a projector with
//! pseudo-random weights): it comes with its projector, says it sees images, and answers a
//! question about an image, asked by either client, as llama-server does given the same
//! projector directly. Tool calls and JSON-schema answers go through the OpenAI, Ollama and
//! Anthropic routes (`anthropic` package too) in each API's own shape, as llama-server makes them.
//! A reranker (all-MiniLM-L6-v2 given a classification head by `cargo xtask models`) answers
//! `/v1/rerank` as llama-server does; no official client reranks, so it is asked over HTTP.

mod support;

use std::ffi::OsStr;
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};
use support::hub_server::{HubFile, HubServer};
use support::{cache_dir, model, Daemon, DirectEngine, Setup, GEMMA, GEMMA_PROJECTOR, MINILM, MINILM_REFERENCE, SMOLLM};

const CHAT_MODEL: &str = "smollm2:135m-q4_1";
const EMBEDDING_MODEL: &str = "all-minilm:l6-v2";
/// all-MiniLM-L6-v2 with rank pooling and a classification head of pseudo-random weights, made
/// by `cargo xtask models` (xtask/scripts/minilm_reranker.py).
const RERANKER: &str = "minilm-reranker-test-F16.gguf";
const RERANK_MODEL: &str = "minilm-reranker:test";
const VISION_REPO: &str = "test/gemma-3-270m-vision-GGUF";
/// Two alike and one apart; the reference file holds sentence-transformers' vectors for them.
const SENTENCES: [&str; 3] = ["The cat sits on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply on Monday."];

/// Runs one step of `support/clients.py` against `base` and returns what it printed.
fn client(step: &str, base: &str, key: &str, args: &[&str]) -> Value {
    let python = cache_dir().join("python");
    for package in ["openai", "ollama"] {
        assert!(python.join(package).is_dir(), "the {package} client is missing from {}: run `cargo xtask models` (or `cargo xtask test`)", python.display());
    }
    let started = Instant::now();
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/clients.py"))
        .args([step, base, key])
        .args(args)
        .env("PYTHONPATH", &python)
        // The box is on loopback: no proxy in between, whatever the environment says.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .expect("running python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{step} failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{step} {}: {:.1}s", args.first().unwrap_or(&""), started.elapsed().as_secs_f64());
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{step} printed no JSON ({e}): {stdout}"))
}

fn vectors(value: &Value) -> Vec<Vec<f64>> {
    let vector = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
    value.as_array().unwrap_or_else(|| panic!("no vectors: {value}")).iter().map(vector).collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>() / (norm(a) * norm(b))
}

#[test]
fn embedding_and_vision_models_answer_the_official_clients() {
    let hub = HubServer::start();
    hub.add_repo(VISION_REPO, vec![HubFile::lfs("gemma-3-270m-Q4_K_M.gguf", model(GEMMA)), HubFile::lfs("mmproj-F16.gguf", model(GEMMA_PROJECTOR))]);
    let daemon = Daemon::start(Setup {
        models: vec![(CHAT_MODEL, SMOLLM), (EMBEDDING_MODEL, MINILM)],
        budget_bytes: Some(4 << 30),
        hub: Some(hub.endpoint.clone()),
        ..Setup::default()
    });
    let key = daemon.key.clone().unwrap();
    let ask = |step: &str, args: &[&str]| client(step, &daemon.url, &key, args);
    let sentences = json!(SENTENCES).to_string();

    // The openai client's embeddings are sentence-transformers' own, and mean what they should.
    let reference: Value = serde_json::from_slice(&std::fs::read(model(MINILM_REFERENCE)).unwrap()).unwrap();
    let reference: Vec<Vec<f64>> = SENTENCES
        .iter()
        .map(|s| vectors(&json!([reference["embeddings"][s].clone()])).remove(0))
        .collect();
    let openai = vectors(&ask("openai-embed", &[EMBEDDING_MODEL, &sentences])["embeddings"]);
    assert_eq!(openai.iter().map(Vec::len).collect::<Vec<_>>(), [384, 384, 384], "all-MiniLM-L6-v2 makes 384 dimensions");
    for ((sentence, got), expected) in SENTENCES.iter().zip(&openai).zip(&reference) {
        let similarity = cosine(got, expected);
        eprintln!("cosine to sentence-transformers' embedding of {sentence:?}: {similarity:.6}");
        assert!(similarity > 0.99, "{sentence:?}: cosine {similarity} to the reference");
        assert!((norm(got) - 1.0).abs() < 1e-3, "OpenAI embeddings are of unit length");
    }
    let (alike, apart) = (cosine(&openai[0], &openai[1]), cosine(&openai[0], &openai[2]));
    eprintln!("cosine of the two cat sentences {alike:.3}, of a cat and the markets {apart:.3}");
    assert!(alike > 0.6 && apart < 0.2, "alike {alike}, apart {apart}");

    // The ollama client's embed gets the same vectors; the older embeddings call, one of them.
    let ollama = ask("ollama-embed", &[EMBEDDING_MODEL, &sentences]);
    assert!(ollama["prompt_eval_count"].as_u64().is_some_and(|n| n > 0), "{ollama}");
    for (got, expected) in vectors(&ollama["embeddings"]).iter().zip(&openai) {
        let largest = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(largest < 1e-4, "ollama's embed differs from openai's by {largest}");
    }
    let one = ask("ollama-embeddings", &[EMBEDDING_MODEL, SENTENCES[0]]);
    let one = vectors(&json!([one["embedding"]])).remove(0);
    assert!(cosine(&one, &openai[0]) > 0.9999, "/api/embeddings: the same direction");
    assert!(norm(&one) > 1.5, "/api/embeddings: the model's own vector, not normalised, as Ollama's older route gives it");
    let short: Value = daemon.post("/api/embed", &json!({"model": EMBEDDING_MODEL, "input": SENTENCES[0], "dimensions": 8})).json().unwrap();
    let short = vectors(&short["embeddings"]).remove(0);
    assert!(short.len() == 8 && (norm(&short) - 1.0).abs() < 1e-6 && cosine(&short, &openai[0][..8]) > 0.9999, "dimensions: the first 8, renormalised: {short:?}");
    let metrics = daemon.get("/metrics").text().unwrap();
    assert!(metrics.contains(&format!("hellas_requests_total{{route=\"/api/embed\",model=\"{EMBEDDING_MODEL}\",status=\"200\"}} 2")), "{metrics}");

    // A chat model asked for embeddings: a 400 from the box naming the model to ask instead.
    let refused = ask("openai-embed-refused", &[CHAT_MODEL]);
    assert_eq!(refused["status"], 400, "{refused}");
    eprintln!("refused: {}", refused["message"]);
    assert!(refused["message"].as_str().unwrap().contains(EMBEDDING_MODEL), "{refused}");
    let refused = daemon.post("/api/embed", &json!({"model": CHAT_MODEL, "input": "hello"}));
    assert_eq!(refused.status(), 400);
    assert!(refused.json::<Value>().unwrap()["error"].as_str().unwrap().contains(EMBEDDING_MODEL));
    let anonymous = daemon.client().post(format!("{}/api/embed", daemon.url)).json(&json!({"model": EMBEDDING_MODEL, "input": "hello"})).send().unwrap();
    assert_eq!(anonymous.status(), 401, "embeddings need an API key like every model route");
    assert_eq!(ask("ollama-show", &[EMBEDDING_MODEL])["capabilities"], json!(["embedding"]));
    let chat = ask("ollama-show", &[CHAT_MODEL]);
    assert!(chat["capabilities"].as_array().unwrap().contains(&json!("completion")) && !chat.to_string().contains("vision"), "{chat}");

    // The ollama client pulls the vision model with its progress, and it comes with its projector.
    let reference = format!("hf.co/{VISION_REPO}:Q4_K_M");
    let pulled = ask("ollama-pull", &[&reference]);
    let events = pulled["events"].as_array().unwrap();
    let statuses: Vec<&str> = events.iter().filter_map(|e| e["status"].as_str()).collect();
    assert_eq!((statuses.first(), statuses.last()), (Some(&"pulling manifest"), Some(&"success")), "{pulled}");
    let size = |file: &str| std::fs::metadata(model(file)).unwrap().len();
    let whole = size(GEMMA) + size(GEMMA_PROJECTOR);
    let counts: Vec<(u64, u64)> = events.iter().filter_map(|e| Some((e["completed"].as_u64()?, e["total"].as_u64()?))).collect();
    assert!(!counts.is_empty() && counts.iter().all(|&(done, total)| done <= total && total == whole), "progress over model and projector ({whole} bytes): {counts:?}");
    let name = reference.to_ascii_lowercase();
    assert!(pulled["models"].as_array().unwrap().contains(&json!(name)), "{pulled}");
    let vision = ask("ollama-show", &[&name]);
    assert_eq!(vision["capabilities"], json!(["completion", "vision"]), "{vision}");

    // It answers about an image, as llama-server does with the same projector.
    let answer = ask("openai-vision", &[&name]);
    let direct = DirectEngine::start_with(&model(GEMMA), 2048, 2, &[OsStr::new("--mmproj"), model(GEMMA_PROJECTOR).as_os_str()]);
    let expected = client("openai-vision", &direct.url, "unused", &["any"]);
    eprintln!("vision answer {answer}, directly {expected}");
    assert!(!answer["answer"].as_str().unwrap_or_default().is_empty(), "{answer}");
    assert_eq!(answer, expected, "the box's answer is llama-server's own, image tokens included");
    let ollama = ask("ollama-vision", &[&name]);
    assert_eq!(ollama, expected, "an Ollama message's images reach the engine as OpenAI's image parts do");
}

#[test]
fn a_reranker_answers_rerank_as_llama_server_does() {
    let started = Instant::now();
    let daemon = Daemon::start(Setup { models: vec![(CHAT_MODEL, SMOLLM), (RERANK_MODEL, RERANKER)], ..Setup::default() });
    let documents = ["Paris is the capital of France.", "The cat sits on the mat.", "Stock markets fell sharply on Monday.", "Berlin is a city in Germany."];
    let request = json!({"model": RERANK_MODEL, "query": "What is the capital of France?", "documents": documents});
    let top_two = json!({"model": RERANK_MODEL, "query": "What is the capital of France?", "documents": documents, "top_n": 2});
    let rerank = |body: &Value| {
        let response = daemon.post("/v1/rerank", body);
        assert_eq!(response.status(), 200);
        response.json::<Value>().unwrap()
    };

    // Every document scored once, each differently, the same again when asked again.
    let answer = rerank(&request);
    eprintln!("reranked through the box: {answer}");
    let results = answer["results"].as_array().unwrap_or_else(|| panic!("no results: {answer}"));
    let mut indices: Vec<u64> = results.iter().map(|r| r["index"].as_u64().unwrap()).collect();
    indices.sort();
    assert_eq!(indices, [0, 1, 2, 3], "{answer}");
    let mut scores: Vec<f64> = results.iter().map(|r| r["relevance_score"].as_f64().unwrap()).collect();
    scores.sort_by(f64::total_cmp);
    scores.dedup();
    assert_eq!(scores.len(), 4, "a score for each document, each its own: {answer}");
    assert_eq!(rerank(&request), answer, "the same scores again");
    assert!(answer["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 0), "{answer}");
    let top = rerank(&top_two);
    assert_eq!(top["results"].as_array().unwrap().len(), 2, "top_n: {top}");

    // Each kind of model is asked for what it does, or told which to ask.
    let refused = daemon.post("/v1/rerank", &json!({"model": CHAT_MODEL, "query": "q", "documents": ["d"]}));
    assert_eq!(refused.status(), 400);
    let refused: Value = refused.json().unwrap();
    eprintln!("chat model asked to rerank: {refused}");
    assert_eq!(refused["error"]["type"], "model_not_reranker", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains(RERANK_MODEL), "names the reranker: {refused}");
    let chat = daemon.post("/v1/chat/completions", &json!({"model": RERANK_MODEL, "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(chat.status(), 400);
    let chat: Value = chat.json().unwrap();
    eprintln!("reranker asked to chat: {chat}");
    assert!(chat["error"]["message"].as_str().unwrap().contains("/v1/rerank"), "{chat}");
    let embeddings = daemon.post("/v1/embeddings", &json!({"model": RERANK_MODEL, "input": "hi"}));
    assert_eq!(embeddings.status(), 400, "a reranker's embeddings would be its score, not a vector");
    let ollama = daemon.post("/api/chat", &json!({"model": RERANK_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": false}));
    assert_eq!(ollama.status(), 400);
    let shown: Value = daemon.post("/api/show", &json!({"model": RERANK_MODEL})).json().unwrap();
    assert_eq!(shown["capabilities"], json!(["rerank"]), "{shown}");
    let anonymous = daemon.client().post(format!("{}/v1/rerank", daemon.url)).json(&request).send().unwrap();
    assert_eq!(anonymous.status(), 401, "reranking needs an API key like every model route");
    let metrics = daemon.get("/metrics").text().unwrap();
    for (model, status, count) in [(RERANK_MODEL, 200, 3), (CHAT_MODEL, 400, 1)] {
        let line = format!("hellas_requests_total{{route=\"/v1/rerank\",model=\"{model}\",status=\"{status}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }
    drop(daemon);

    // llama-server started directly with --reranking gives the same answers.
    let direct = DirectEngine::start_with(&model(RERANKER), 2048, 2, &[OsStr::new("--reranking")]);
    let expected: Value = direct.post("/v1/rerank", &request).json().unwrap();
    eprintln!("reranked by llama-server directly: {expected}");
    assert_eq!(answer, expected, "the box's answer is llama-server's own");
    assert_eq!(top, direct.post("/v1/rerank", &top_two).json::<Value>().unwrap(), "top_n: the box's answer is llama-server's own");
    eprintln!("reranking through the box and directly: {:.1}s", started.elapsed().as_secs_f64());
}

#[test]
fn responses_and_messages_answer_the_official_sdks() {
    let daemon = Daemon::start(Setup { ctx: 1024, parallel: 1, ..Setup::default() });
    let key = daemon.key.clone().unwrap();
    let prompt = "Name a colour.";

    // OpenAI's Responses: the same greedy text whole and streamed, with the token counts.
    let responses = client("openai-responses", &daemon.url, &key, &[CHAT_MODEL, prompt]);
    println!("openai Responses: {responses}");
    assert!(!responses["text"].as_str().unwrap().is_empty(), "{responses}");
    assert_eq!(responses["streamed"], responses["text"], "{responses}");
    assert_eq!(responses["usage"]["output_tokens"], 8, "{responses}");

    // Anthropic's Messages, by the anthropic SDK with its x-api-key header: the same text whole
    // and streamed, and the prompt counted by the model's own tokenizer as the answer counts it.
    let messages = client("anthropic-messages", &daemon.url, &key, &[CHAT_MODEL, prompt]);
    println!("anthropic Messages: {messages}");
    assert!(!messages["text"].as_str().unwrap().is_empty(), "{messages}");
    assert_eq!(messages["streamed"], messages["text"], "{messages}");
    assert_eq!(messages["stop_reason"], "max_tokens", "{messages}");
    // Anthropic counts the prompt's cached tokens apart from the rest.
    let prompt_tokens = messages["usage"]["input_tokens"].as_u64().unwrap() + messages["usage"]["cache_read_input_tokens"].as_u64().unwrap_or(0);
    assert_eq!(messages["counted"], prompt_tokens, "{messages}");

    // Hellas' own refusals in Anthropic's shape, which the SDK turns into its exceptions.
    let bad_key = client("anthropic-refused", &daemon.url, "hls_wrong", &[CHAT_MODEL]);
    assert_eq!((bad_key["error"].as_str(), bad_key["type"].as_str()), (Some("AuthenticationError"), Some("authentication_error")), "{bad_key}");
    let unknown = client("anthropic-refused", &daemon.url, &key, &["no-such-model"]);
    assert_eq!((unknown["error"].as_str(), unknown["type"].as_str()), (Some("NotFoundError"), Some("not_found_error")), "{unknown}");
    assert!(unknown["message"].as_str().unwrap().contains(CHAT_MODEL), "the refusal names the models there are: {unknown}");

    // Counted like every other route.
    let metrics = daemon.get("/metrics").text().unwrap();
    for route in ["/v1/responses", "/v1/messages", "/v1/messages/count_tokens"] {
        assert!(metrics.contains(&format!("route=\"{route}\"")), "{route} in /metrics");
    }
}


/// A JSON answer held to `PICK` in clients.py: a string `colour` and an integer `count`, nothing else.
fn assert_pick(content: &Value) {
    let pick: Value = serde_json::from_str(content.as_str().unwrap_or_else(|| panic!("no text: {content}"))).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
    let fields = pick.as_object().unwrap_or_else(|| panic!("not an object: {pick}"));
    assert_eq!(fields.keys().collect::<Vec<_>>(), ["colour", "count"], "{pick}");
    assert!(pick["colour"].is_string() && (pick["count"].is_i64() || pick["count"].is_u64()), "{pick}");
}

/// One call of get_weather with an object of a string `city` for its arguments.
fn assert_weather_call(calls: &Value, arguments_as_text: bool) {
    let calls = calls.as_array().unwrap_or_else(|| panic!("no calls: {calls}"));
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (name, arguments) = (&calls[0]["name"], &calls[0]["arguments"]);
    assert_eq!(name, "get_weather", "{calls:?}");
    let arguments: Value = match arguments_as_text {
        true => serde_json::from_str(arguments.as_str().expect("OpenAI's arguments are JSON text")).expect("the arguments are JSON"),
        false => arguments.clone(),
    };
    let fields = arguments.as_object().unwrap_or_else(|| panic!("arguments not an object: {arguments}"));
    assert!(fields.len() == 1 && fields["city"].is_string(), "{arguments}");
}

#[test]
fn tools_and_json_schema_through_every_route() {
    let started = Instant::now();
    let template_args = ["--chat-template", support::SMOLLM_TOOLS_TEMPLATE];
    let daemon = Daemon::start(Setup { ctx: 1024, parallel: 1, engine_args: template_args.map(String::from).to_vec(), ..Setup::default() });
    let key = daemon.key.clone().unwrap();
    let ask = |step: &str| client(step, &daemon.url, &key, &[CHAT_MODEL]);

    // OpenAI: tool_choice "required" makes even this small model call the tool, by grammar; the
    // stream's pieces make the same call; given the tool's answer, the model answers in words.
    let openai = ask("openai-tools");
    println!("openai tools: {openai}");
    assert_eq!(openai["finish_reason"], "tool_calls", "{openai}");
    assert_weather_call(&openai["calls"], true);
    assert_eq!(openai["streamed"]["finish_reason"], "tool_calls", "{openai}");
    assert_eq!(openai["streamed"]["calls"], openai["calls"], "streamed, the same call");
    let answer = &openai["answer"];
    assert_eq!((answer["finish_reason"].as_str(), answer["calls"].as_u64()), (Some("stop"), Some(0)), "{answer}");
    assert!(answer["content"].as_str().unwrap().contains("sunny"), "the answer uses the tool's: {answer}");

    // OpenAI's response_format json_schema: JSON that follows the schema, whole and streamed.
    let schema = ask("openai-json-schema");
    println!("openai json_schema: {schema}");
    assert_pick(&schema["content"]);
    assert_eq!(schema["streamed"], schema["content"], "{schema}");

    // Ollama's chat with tools: no tool_choice there, so the call comes from a conversation that
    // had one before; it comes back in Ollama's shape (arguments an object, or the client
    // refuses it), whole and streamed, and the tool's answer sent back gets words.
    let ollama = ask("ollama-tools");
    println!("ollama tools: {ollama}");
    assert_weather_call(&ollama["calls"], false);
    assert_eq!(ollama["done_reason"], "stop", "{ollama}");
    assert_eq!(ollama["streamed"]["calls"], ollama["calls"], "streamed, the same call, once");
    assert_eq!((&ollama["streamed"]["content"], &ollama["streamed"]["done_reason"]), (&ollama["content"], &json!("stop")), "{ollama}");
    let answer = &ollama["answer"];
    assert!(answer["calls"] == 0 && !answer["content"].as_str().unwrap().is_empty(), "{answer}");
    // A question the model answers itself, the tool offered: words, and the tool in the prompt.
    let plain = &ollama["plain"];
    assert!(plain["calls"] == json!([]) && !plain["content"].as_str().unwrap().is_empty(), "{plain}");
    assert!(plain["prompt_tokens"].as_u64() > plain["prompt_tokens_without_tools"].as_u64().map(|n| n + 20), "the tool reaches the prompt: {plain}");

    // Ollama's format with a JSON schema: the same grammar, so the same JSON as OpenAI's.
    let format = ask("ollama-format");
    println!("ollama format: {format}");
    assert_pick(&format["content"]);
    assert_eq!((&format["content"], &format["streamed"]), (&schema["content"], &schema["content"]), "{format}");

    // Anthropic's Messages: tool_choice "any" and the tool by name each make a tool_use block,
    // streamed too; a tool_result sent back gets words.
    let anthropic = ask("anthropic-tools");
    println!("anthropic tools: {anthropic}");
    for how in ["any", "tool", "streamed"] {
        assert_eq!(anthropic[how]["stop_reason"], "tool_use", "{how}: {anthropic}");
        let blocks = anthropic[how]["content"].as_array().unwrap();
        assert!(blocks.iter().all(|b| b["type"] == "tool_use"), "{how}: {anthropic}");
        let calls: Vec<Value> = blocks.iter().map(|b| json!({"name": b["name"], "arguments": b["input"]})).collect();
        assert_weather_call(&json!(calls), false);
    }
    let answer = &anthropic["answer"];
    assert_eq!(answer["stop_reason"], "end_turn", "{answer}");
    assert!(answer["content"][0]["type"] == "text" && answer["content"][0]["text"].as_str().unwrap().contains("sunny"), "{answer}");

    // The same requests to llama-server directly, with the same template: the same answers (tool
    // call ids aside, which the engine makes up each time).
    drop(daemon);
    let direct = DirectEngine::start_with(&model(SMOLLM), 1024, 1, &template_args.map(OsStr::new));
    for (step, through_box) in [("openai-tools", &openai), ("openai-json-schema", &schema), ("anthropic-tools", &anthropic)] {
        assert_eq!(&client(step, &direct.url, "unused", &["any"]), through_box, "{step}: the box's answer is llama-server's own");
    }
    // Ollama's conversation, in OpenAI's shape, makes the engine call what Ollama's client got.
    let expected = client("openai-tools-history", &direct.url, "unused", &["any"]);
    assert_eq!(expected["calls"], ollama["calls"], "the Ollama route's call is the engine's");
    eprintln!("tools and JSON schemas through every route: {:.1}s", started.elapsed().as_secs_f64());
}
