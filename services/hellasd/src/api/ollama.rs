//! Ollama-compatible routes, for clients that speak Ollama's API (Open WebUI, editors, scripts).
//!
//! Chat and generate requests are translated to llama-server's OpenAI routes, and its server-sent
//! events back into Ollama's newline-delimited JSON, one object per token batch and a final object
//! with `done: true` and the counts and durations Ollama reports. Embedding requests go to
//! llama-server's `/v1/embeddings` and come back in Ollama's shape, whole.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::OllamaError;
use super::relay::{self, Relay, SseReader};
use super::{internal, read_json, ApiError, AppState, ClientKey};
use crate::catalog::Progress;
use crate::library::ModelEntry;

/// The Ollama API version this compatibility layer follows.
const OLLAMA_VERSION: &str = "0.12.0";

#[derive(Deserialize)]
struct ChatRequest {
    model: String,
    #[serde(default)]
    messages: Vec<Value>,
    stream: Option<bool>,
    #[serde(default)]
    options: Map<String, Value>,
    format: Option<Value>,
    tools: Option<Value>,
    keep_alive: Option<Value>,
}

#[derive(Deserialize)]
struct GenerateRequest {
    model: String,
    #[serde(default)]
    prompt: String,
    system: Option<String>,
    #[serde(default)]
    raw: bool,
    stream: Option<bool>,
    #[serde(default)]
    options: Map<String, Value>,
    format: Option<Value>,
    /// Base64 images, seen with the prompt.
    #[serde(default)]
    images: Vec<Value>,
    keep_alive: Option<Value>,
}

/// Ollama's `keep_alive`: seconds as a number, or a duration (`"5m"`, `"1h30m"`, `"0"`); a
/// negative one keeps the model loaded until it must make room.
fn keep_alive(value: Option<&Value>) -> Result<Option<Duration>, ApiError> {
    let refuse = |v: &Value| ApiError::bad_request(format!("keep_alive {v} is not a duration: give seconds, or e.g. \"5m\", \"0\" to unload at once, \"-1\" to keep it"));
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(None) };
    let secs = match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| refuse(value))?,
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(secs) => secs,
            Err(_) if s.trim().starts_with('-') => -1.0,
            Err(_) => humantime::parse_duration(s.trim()).map_err(|_| refuse(value))?.as_secs_f64(),
        },
        _ => return Err(refuse(value)),
    };
    Ok(Some(if secs < 0.0 { Duration::MAX } else { Duration::from_secs_f64(secs) }))
}

pub async fn chat(State(state): State<Arc<AppState>>, Extension(key): Extension<ClientKey>, body: Body) -> Result<Response, OllamaError> {
    let started = Instant::now();
    let (_, request): (_, ChatRequest) = read_json(&state, body).await?;
    let stream = request.stream.unwrap_or(true);
    let messages: Vec<Value> = request.messages.into_iter().map(chat_message).collect();
    let mut upstream = json!({ "model": request.model, "messages": messages });
    apply_options(&mut upstream, &request.options, request.format.as_ref(), stream);
    if let Some(tools) = request.tools {
        upstream["tools"] = tools;
    }
    let translator = move |model| Translate::new(model, Shape::Chat, stream, started);
    let call = Call { key, model: request.model, route: "/api/chat", path: "/v1/chat/completions", stream, started, keep_alive: keep_alive(request.keep_alive.as_ref())?, num_ctx: num_ctx(&request.options) };
    respond(state, call, upstream, translator).await
}

pub async fn generate(State(state): State<Arc<AppState>>, Extension(key): Extension<ClientKey>, body: Body) -> Result<Response, OllamaError> {
    let started = Instant::now();
    let (_, request): (_, GenerateRequest) = read_json(&state, body).await?;
    let stream = request.stream.unwrap_or(true);
    let keep_alive = keep_alive(request.keep_alive.as_ref())?;
    if request.prompt.is_empty() {
        // Ollama loads the model and answers at once when the prompt is empty, and unloads it
        // when `keep_alive` is 0.
        let entry = find(&state, &request.model)?;
        if keep_alive == Some(Duration::ZERO) {
            state.supervisor.unload(&entry.name).await;
            let done = json!({ "model": entry.name, "created_at": now_rfc3339(), "response": "", "done": true, "done_reason": "unload" });
            return Ok(Json(done).into_response());
        }
        let lease = state.supervisor.acquire(&entry.name).await.map_err(ApiError::from)?;
        if let Some(keep_alive) = keep_alive {
            lease.set_keep_alive(keep_alive);
        }
        drop(lease);
        let done = json!({ "model": entry.name, "created_at": now_rfc3339(), "response": "", "done": true, "done_reason": "load" });
        return Ok(Json(done).into_response());
    }
    let (path, mut upstream) = if request.raw {
        ("/v1/completions", json!({ "model": request.model, "prompt": request.prompt }))
    } else {
        let mut messages = Vec::new();
        if let Some(system) = request.system {
            messages.push(json!({ "role": "system", "content": system }));
        }
        messages.push(chat_message(json!({ "role": "user", "content": request.prompt, "images": request.images })));
        ("/v1/chat/completions", json!({ "model": request.model, "messages": messages }))
    };
    apply_options(&mut upstream, &request.options, request.format.as_ref(), stream);
    let shape = if request.raw { Shape::GenerateRaw } else { Shape::Generate };
    let translator = move |model| Translate::new(model, shape, stream, started);
    let call = Call { key, model: request.model, route: "/api/generate", path, stream, started, keep_alive, num_ctx: num_ctx(&request.options) };
    respond(state, call, upstream, translator).await
}

/// An Ollama message as OpenAI's: the text maps directly, and images, which Ollama carries apart
/// as base64 in `images`, become `image_url` parts ahead of the text (where Ollama puts them).
fn chat_message(message: Value) -> Value {
    let role = message.get("role").cloned().unwrap_or_else(|| json!("user"));
    let mut content = message.get("content").cloned().unwrap_or_else(|| json!(""));
    let images: Vec<&str> = message.get("images").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    if !images.is_empty() {
        let mut parts: Vec<Value> = images.into_iter().map(|image| json!({ "type": "image_url", "image_url": { "url": data_uri(image) } })).collect();
        parts.push(json!({ "type": "text", "text": content }));
        content = Value::Array(parts);
    }
    let mut out = json!({ "role": role, "content": content });
    for field in ["tool_call_id", "name"] {
        if let Some(v) = message.get(field) {
            out[field] = v.clone();
        }
    }
    // A tool's answer names its tool in `tool_name`, where OpenAI's has `name`.
    if let (None, Some(name)) = (message.get("name"), message.get("tool_name")) {
        out["name"] = name.clone();
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        out["tool_calls"] = calls.iter().map(openai_tool_call).collect();
    }
    out
}

/// A tool call the model made, as an Ollama client sends it back (`{"function": {"name",
/// "arguments": {...}}}`), in OpenAI's shape: typed, its arguments a JSON string.
fn openai_tool_call(call: &Value) -> Value {
    let function = &call["function"];
    let arguments = match &function["arguments"] {
        Value::String(text) => text.clone(),
        Value::Null => "{}".to_string(),
        object => object.to_string(),
    };
    let mut out = json!({ "type": "function", "function": { "name": function["name"], "arguments": arguments } });
    if let Some(id) = call.get("id") {
        out["id"] = id.clone();
    }
    out
}

/// A base64 image as the data URI OpenAI's `image_url` takes. llama-server decodes the image from
/// its bytes, so the type named only has to be an image's; it is read from the magic number.
fn data_uri(base64: &str) -> String {
    if base64.starts_with("data:") {
        return base64.to_string();
    }
    let kind = [("/9j/", "jpeg"), ("R0lGOD", "gif"), ("UklGR", "webp")].iter().find(|(magic, _)| base64.starts_with(magic)).map_or("png", |(_, kind)| kind);
    format!("data:image/{kind};base64,{base64}")
}

/// Maps Ollama's sampling options onto llama-server's OpenAI fields.
fn apply_options(upstream: &mut Value, options: &Map<String, Value>, format: Option<&Value>, stream: bool) {
    let renames = [
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("min_p", "min_p"),
        ("seed", "seed"),
        ("stop", "stop"),
        ("repeat_penalty", "repeat_penalty"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ];
    for (from, to) in renames {
        if let Some(v) = options.get(from) {
            upstream[to] = v.clone();
        }
    }
    if let Some(n) = options.get("num_predict").and_then(Value::as_i64).filter(|&n| n >= 0) {
        upstream["max_tokens"] = json!(n);
    }
    match format {
        Some(Value::String(s)) if s == "json" => upstream["response_format"] = json!({ "type": "json_object" }),
        Some(schema @ Value::Object(_)) => {
            upstream["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "response", "schema": schema } })
        }
        _ => {}
    }
    upstream["stream"] = json!(stream);
    if stream {
        upstream["stream_options"] = json!({ "include_usage": true });
    }
}

#[derive(Clone, Copy)]
enum Shape {
    Chat,
    Generate,
    GenerateRaw,
}

/// Sends `upstream` to the engine's `path` and answers with what `translator` (made for the
/// model's library name) makes of its answer; an engine's error leaves in Ollama's shape.
#[allow(clippy::too_many_arguments)]
/// An Ollama generation request, as sent on to llama-server.
struct Call {
    key: ClientKey,
    model: String,
    /// The Ollama route, for the metrics.
    route: &'static str,
    /// llama-server's route it goes to.
    path: &'static str,
    stream: bool,
    started: Instant,
    keep_alive: Option<Duration>,
    /// `options.num_ctx`: the context the client counts on.
    num_ctx: Option<u64>,
}

/// A request's `num_ctx` within the context each request gets on this box (the plan's: the
/// configured context, or less where memory is short); beyond it, a clear refusal rather than
/// a prompt cut short.
fn check_num_ctx(state: &AppState, model: &str, asked: u64) -> Result<(), ApiError> {
    let entry = find(state, model)?;
    let ctx = match state.supervisor.loaded().into_iter().find(|e| e.model == entry.name) {
        Some(engine) => engine.plan.ctx,
        None => state.supervisor.plan(&entry).map_err(internal)?.ctx,
    };
    if asked > u64::from(ctx) {
        return Err(ApiError::bad_request(format!(
            "num_ctx {asked} is more than '{}' has per request on this box ({ctx} tokens: engine.ctx, or less where memory is short); ask within it",
            entry.name
        )));
    }
    Ok(())
}

fn num_ctx(options: &Map<String, Value>) -> Option<u64> {
    options.get("num_ctx").and_then(Value::as_u64)
}

async fn respond<R: Relay>(state: Arc<AppState>, call: Call, upstream: Value, translator: impl FnOnce(String) -> R) -> Result<Response, OllamaError> {
    let Call { key, model, route, path, stream, started, keep_alive, num_ctx } = call;
    if let Some(asked) = num_ctx {
        check_num_ctx(&state, &model, asked)?;
    }
    let body = Bytes::from(serde_json::to_vec(&upstream).expect("JSON values serialise"));
    let dispatched = match state.dispatch(&key, &model, path, body, started).await {
        Ok(d) => d,
        Err(e) => {
            state.metrics.count_request(route, &model, e.status.as_u16());
            return Err(e.into());
        }
    };
    let upstream_status = dispatched.upstream.status();
    if !upstream_status.is_success() {
        let text = dispatched.upstream.text().await.unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text);
        state.metrics.count_request(route, &model, upstream_status.as_u16());
        return Err(ApiError::new(upstream_status, "engine_error", message).into());
    }
    if let Some(keep_alive) = keep_alive {
        dispatched.lease.set_keep_alive(keep_alive);
    }
    let translator = translator(dispatched.model.clone());
    let body = relay::body(state, dispatched, route, translator);
    let content_type = if stream { "application/x-ndjson" } else { "application/json; charset=utf-8" };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// Turns llama-server's OpenAI answer (streamed or whole) into Ollama's.
struct Translate {
    model: String,
    shape: Shape,
    stream: bool,
    started: Instant,
    sse: SseReader,
    whole: Vec<u8>,
    done_reason: Option<String>,
    tokens: (u64, u64),
    timings: Option<Value>,
    /// The tool calls of the answer so far, by index, their arguments as the engine's text.
    calls: Vec<ToolCall>,
}

#[derive(Default)]
struct ToolCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

impl Translate {
    fn new(model: String, shape: Shape, stream: bool, started: Instant) -> Translate {
        Translate {
            model,
            shape,
            stream,
            started,
            sse: SseReader::default(),
            whole: Vec::new(),
            done_reason: None,
            tokens: (0, 0),
            timings: None,
            calls: Vec::new(),
        }
    }

    /// The text of one OpenAI choice, streamed (`delta`) or whole (`message`, `text`).
    fn take_choice(&mut self, value: &Value) -> Option<String> {
        if let Some(counts) = relay::token_counts(value) {
            self.tokens = counts;
        }
        if let Some(t) = value.get("timings") {
            self.timings = Some(t.clone());
        }
        let choice = value.get("choices")?.get(0)?;
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.done_reason = Some(reason.to_string());
        }
        let message = choice.get("delta").or_else(|| choice.get("message"));
        // Tool calls come whole in a message, and in pieces in a stream's deltas: the id and
        // name first, then the arguments' text.
        for (n, call) in message.and_then(|m| m.get("tool_calls")).and_then(Value::as_array).into_iter().flatten().enumerate() {
            let index = call.get("index").and_then(Value::as_u64).map_or(n, |i| i as usize);
            if self.calls.len() <= index {
                self.calls.resize_with(index + 1, ToolCall::default);
            }
            let pending = &mut self.calls[index];
            if let Some(id) = call["id"].as_str() {
                pending.id = Some(id.to_string());
            }
            if let Some(name) = call["function"]["name"].as_str().filter(|n| !n.is_empty()) {
                pending.name = name.to_string();
            }
            pending.arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
        let text = match self.shape {
            Shape::GenerateRaw => choice.get("text"),
            _ => message.and_then(|m| m.get("content")),
        };
        text.and_then(Value::as_str).map(String::from)
    }

    /// The tool calls gathered so far, in Ollama's shape (their arguments an object), once.
    fn take_calls(&mut self) -> Option<Value> {
        if self.calls.is_empty() {
            return None;
        }
        let calls = std::mem::take(&mut self.calls).into_iter().enumerate().map(|(index, call)| {
            let arguments = match call.arguments.trim() {
                "" => json!({}),
                text => serde_json::from_str(text).unwrap_or(Value::String(call.arguments.clone())),
            };
            let mut out = json!({ "function": { "index": index, "name": call.name, "arguments": arguments } });
            if let Some(id) = call.id {
                out["id"] = json!(id);
            }
            out
        });
        Some(calls.collect())
    }

    fn object(&self, text: &str, done: bool) -> Value {
        let mut object = json!({ "model": self.model, "created_at": now_rfc3339(), "done": done });
        match self.shape {
            Shape::Chat => object["message"] = json!({ "role": "assistant", "content": text }),
            Shape::Generate | Shape::GenerateRaw => object["response"] = json!(text),
        }
        if done {
            let (prompt, generated) = self.tokens;
            let ms = |key: &str| self.timings.as_ref().and_then(|t| t[key].as_f64()).unwrap_or(0.0);
            let ns = |ms: f64| (ms * 1e6) as u64;
            let total = self.started.elapsed();
            // Ollama's answer that calls tools is done because it stopped.
            object["done_reason"] = json!(self.done_reason.as_deref().filter(|r| *r != "tool_calls").unwrap_or("stop"));
            object["total_duration"] = json!(total.as_nanos() as u64);
            object["load_duration"] = json!(0);
            object["prompt_eval_count"] = json!(prompt);
            object["prompt_eval_duration"] = json!(ns(ms("prompt_ms")));
            object["eval_count"] = json!(generated);
            object["eval_duration"] = json!(ns(ms("predicted_ms")));
        }
        object
    }

    /// A streamed answer's tool calls, whole, in a line of their own before the last, as
    /// Ollama sends them.
    fn push_calls(&mut self, out: &mut Vec<Bytes>) {
        if let Some(calls) = self.take_calls() {
            let mut object = self.object("", false);
            object["message"]["tool_calls"] = calls;
            out.push(Translate::line(&object));
        }
    }

    fn line(value: &Value) -> Bytes {
        let mut bytes = serde_json::to_vec(value).expect("JSON values serialise");
        bytes.push(b'\n');
        Bytes::from(bytes)
    }
}

impl Relay for Translate {
    fn chunk(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) {
        if !self.stream {
            self.whole.extend_from_slice(&chunk);
            return;
        }
        let mut events = Vec::new();
        self.sse.feed(&chunk, |data| {
            if data != b"[DONE]" {
                if let Ok(value) = serde_json::from_slice::<Value>(data) {
                    events.push(value);
                }
            }
        });
        for event in events {
            if let Some(text) = self.take_choice(&event).filter(|t| !t.is_empty()) {
                out.push(Translate::line(&self.object(&text, false)));
            }
            if self.done_reason.is_some() {
                self.push_calls(out);
            }
        }
    }

    fn error(&mut self, message: &str, out: &mut Vec<Bytes>) -> bool {
        if !self.stream {
            return false;
        }
        out.push(Translate::line(&json!({ "error": message })));
        true
    }

    fn end(&mut self, out: &mut Vec<Bytes>) {
        if self.stream {
            self.push_calls(out);
            out.push(Translate::line(&self.object("", true)));
            return;
        }
        let whole = std::mem::take(&mut self.whole);
        match serde_json::from_slice::<Value>(&whole) {
            Ok(value) => {
                let text = self.take_choice(&value).unwrap_or_default();
                let mut object = self.object(&text, true);
                if let Some(calls) = self.take_calls() {
                    object["message"]["tool_calls"] = calls;
                }
                out.push(Bytes::from(serde_json::to_vec(&object).expect("JSON values serialise")));
            }
            Err(e) => out.push(Bytes::from(json!({ "error": format!("engine answered with invalid JSON: {e}") }).to_string())),
        }
    }

    fn tokens(&self) -> (u64, u64) {
        self.tokens
    }
}

fn find(state: &AppState, name: &str) -> Result<ModelEntry, ApiError> {
    state
        .library
        .get(name)
        .map_err(internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "model_not_found", format!("model '{name}' not found")))
}

fn details(state: &AppState, entry: &ModelEntry) -> Value {
    match state.supervisor.model_info(entry) {
        Ok(info) => json!({
            "format": "gguf",
            "family": info.architecture,
            "families": [info.architecture],
            "parameter_size": parameter_size(info.parameter_count),
            "quantization_level": info.file_type.clone().unwrap_or_default(),
        }),
        Err(_) => json!({ "format": "gguf" }),
    }
}

/// 134515008 → "134.52M", as Ollama prints parameter counts.
fn parameter_size(count: u64) -> String {
    let (value, unit) = match count {
        c if c >= 1_000_000_000 => (c as f64 / 1e9, "B"),
        c if c >= 1_000_000 => (c as f64 / 1e6, "M"),
        c => (c as f64 / 1e3, "K"),
    };
    format!("{value:.2}{unit}")
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

pub async fn tags(State(state): State<Arc<AppState>>) -> Result<Json<Value>, OllamaError> {
    let models: Vec<Value> = state
        .library
        .list()
        .map_err(internal)?
        .iter()
        .map(|m| {
            json!({
                "name": m.name, "model": m.name, "modified_at": rfc3339(m.added), "size": m.size,
                "digest": m.sha256, "details": details(&state, m),
            })
        })
        .collect();
    Ok(Json(json!({ "models": models })))
}

#[derive(Deserialize)]
struct ShowRequest {
    model: Option<String>,
    name: Option<String>,
}

pub async fn show(State(state): State<Arc<AppState>>, body: Body) -> Result<Json<Value>, OllamaError> {
    let (_, request): (_, ShowRequest) = read_json(&state, body).await?;
    let name = request.model.or(request.name).ok_or_else(|| ApiError::bad_request("missing field `model`"))?;
    let entry = find(&state, &name)?;
    let info = state.supervisor.model_info(&entry).map_err(internal)?;
    let arch = &info.architecture;
    let model_info = json!({
        "general.architecture": arch,
        "general.parameter_count": info.parameter_count,
        format!("{arch}.block_count"): info.n_layer,
        format!("{arch}.context_length"): info.context_length,
        format!("{arch}.embedding_length"): info.n_embd,
    });
    let capabilities = crate::library::capabilities(&entry, &info);
    Ok(Json(json!({
        "modelfile": "",
        "parameters": "",
        "template": info.chat_template.clone().unwrap_or_default(),
        "details": details(&state, &entry),
        "model_info": model_info,
        "capabilities": capabilities,
        "modified_at": rfc3339(entry.added),
    })))
}

#[derive(Deserialize)]
struct EmbedRequest {
    model: String,
    /// A string or a list of strings.
    input: Option<Value>,
    /// Keep the first this many dimensions of each vector (renormalised), as Ollama does.
    dimensions: Option<usize>,
    keep_alive: Option<Value>,
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    model: String,
    #[serde(default)]
    prompt: String,
}

/// `POST /api/embed`: the embeddings of one input or several, each of unit length, from
/// llama-server's `/v1/embeddings`. Ollama's `truncate` and `options` are accepted;
/// the engine refuses an input longer than its context whatever `truncate` says.
pub async fn embed(State(state): State<Arc<AppState>>, Extension(key): Extension<ClientKey>, body: Body) -> Result<Response, OllamaError> {
    let started = Instant::now();
    let (_, request): (_, EmbedRequest) = read_json(&state, body).await?;
    let input: Vec<String> = match request.input {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(one)) => vec![one],
        Some(many) => serde_json::from_value(many).map_err(|_| ApiError::bad_request("`input` must be a string or a list of strings"))?,
    };
    if input.is_empty() {
        // Ollama loads the model and answers with no embeddings when there is no input.
        let entry = find(&state, &request.model)?;
        state.check_kind(&entry, "/v1/embeddings")?;
        drop(state.supervisor.acquire(&entry.name).await.map_err(ApiError::from)?);
        return Ok(Json(json!({ "model": entry.name, "embeddings": [] })).into_response());
    }
    let upstream = json!({ "model": request.model, "input": input });
    let translator = move |model| Embeddings { model, started, legacy: false, dimensions: request.dimensions, whole: Vec::new(), prompt_tokens: 0 };
    let call = Call { key, model: request.model, route: "/api/embed", path: "/v1/embeddings", stream: false, started, keep_alive: keep_alive(request.keep_alive.as_ref())?, num_ctx: None };
    respond(state, call, upstream, translator).await
}

/// `POST /api/embeddings`, Ollama's older route: one `prompt`, its embedding as the model makes
/// it (not normalised), `{"embedding": [...]}`.
pub async fn embeddings(State(state): State<Arc<AppState>>, Extension(key): Extension<ClientKey>, body: Body) -> Result<Response, OllamaError> {
    let started = Instant::now();
    let (_, request): (_, EmbeddingsRequest) = read_json(&state, body).await?;
    if request.prompt.is_empty() {
        let entry = find(&state, &request.model)?;
        state.check_kind(&entry, "/v1/embeddings")?;
        return Ok(Json(json!({ "embedding": [] })).into_response());
    }
    // llama-server normalises unless told not to (-1).
    let upstream = json!({ "model": request.model, "input": [request.prompt], "embd_normalize": -1 });
    let translator = move |model| Embeddings { model, started, legacy: true, dimensions: None, whole: Vec::new(), prompt_tokens: 0 };
    let call = Call { key, model: request.model, route: "/api/embeddings", path: "/v1/embeddings", stream: false, started, keep_alive: None, num_ctx: None };
    respond(state, call, upstream, translator).await
}

/// Turns llama-server's OpenAI embeddings answer into Ollama's.
struct Embeddings {
    model: String,
    started: Instant,
    /// `/api/embeddings`' shape (one vector) rather than `/api/embed`'s.
    legacy: bool,
    dimensions: Option<usize>,
    whole: Vec<u8>,
    prompt_tokens: u64,
}

impl Embeddings {
    fn translate(&mut self, answer: &Value) -> Result<Value, String> {
        let mut data: Vec<&Value> = answer["data"].as_array().ok_or("the engine's answer has no `data`")?.iter().collect();
        data.sort_by_key(|d| d["index"].as_u64());
        let mut vectors: Vec<Value> = data.iter().map(|d| d["embedding"].clone()).collect();
        if let Some(dimensions) = self.dimensions.filter(|&d| d > 0) {
            for vector in &mut vectors {
                let mut kept: Vec<f64> = vector.as_array().into_iter().flatten().filter_map(Value::as_f64).take(dimensions).collect();
                let norm = kept.iter().map(|x| x * x).sum::<f64>().sqrt();
                if norm > 0.0 {
                    kept.iter_mut().for_each(|x| *x /= norm);
                }
                *vector = json!(kept);
            }
        }
        self.prompt_tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
        if self.legacy {
            return Ok(json!({ "embedding": vectors.into_iter().next().unwrap_or_else(|| json!([])) }));
        }
        Ok(json!({
            "model": self.model,
            "embeddings": vectors,
            "total_duration": self.started.elapsed().as_nanos() as u64,
            "load_duration": 0,
            "prompt_eval_count": self.prompt_tokens,
        }))
    }
}

impl Relay for Embeddings {
    fn chunk(&mut self, chunk: Bytes, _out: &mut Vec<Bytes>) {
        self.whole.extend_from_slice(&chunk);
    }

    fn error(&mut self, _message: &str, _out: &mut Vec<Bytes>) -> bool {
        false
    }

    fn end(&mut self, out: &mut Vec<Bytes>) {
        let whole = std::mem::take(&mut self.whole);
        let answer = serde_json::from_slice::<Value>(&whole).map_err(|e| format!("engine answered with invalid JSON: {e}"));
        let object = answer.and_then(|a| self.translate(&a)).unwrap_or_else(|error| json!({ "error": error }));
        out.push(Bytes::from(serde_json::to_vec(&object).expect("JSON values serialise")));
    }

    fn tokens(&self) -> (u64, u64) {
        (self.prompt_tokens, 0)
    }
}

pub async fn ps(State(state): State<Arc<AppState>>) -> Result<Json<Value>, OllamaError> {
    let mut models = Vec::new();
    for engine in state.supervisor.loaded() {
        let Some(entry) = state.library.get(&engine.model).map_err(internal)? else { continue };
        // A model kept "forever" shows a date a century away, as Ollama's does.
        let left = state.supervisor.keep_alive(&engine).saturating_sub(engine.idle_for()).min(Duration::from_secs(100 * 365 * 86400));
        let expires = SystemTime::now() + left;
        let placement = engine.placement();
        models.push(json!({
            "name": engine.model, "model": engine.model, "size": engine.plan.total, "digest": engine.sha256,
            "details": details(&state, &entry),
            "expires_at": humantime::format_rfc3339_seconds(expires).to_string(),
            // What really sits on the GPU, from the engine's load log (0 on the CPU), as Ollama means it.
            "size_vram": placement.gpu_bytes(),
            "context_length": engine.plan.ctx,
            // Hellas' own: where the model sits, in words, and what is wrong with it if anything.
            "placement": placement.describe(),
            "placement_problem": state.supervisor.placement_problem(&engine),
            "sandbox": engine.sandbox,
        }));
    }
    Ok(Json(json!({ "models": models })))
}

#[derive(Deserialize)]
struct CopyRequest {
    source: String,
    destination: String,
}

/// `POST /api/copy`: a second library name for a model (its files are shared, not copied).
pub async fn copy(State(state): State<Arc<AppState>>, body: Body) -> Result<StatusCode, OllamaError> {
    let (_, request): (_, CopyRequest) = read_json(&state, body).await?;
    let (source, destination) = (request.source.to_ascii_lowercase(), request.destination.to_ascii_lowercase());
    if state.library.get(&source).map_err(internal)?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "model_not_found", format!("model '{source}' is not in the library")).into());
    }
    state.library.copy(&source, &destination).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    tracing::info!(%source, %destination, "model copied");
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct DeleteRequest {
    #[serde(alias = "name")]
    model: String,
}

/// `DELETE /api/delete`: a model out of the library, its engine stopped first; its files go
/// when no other name uses them.
pub async fn delete(State(state): State<Arc<AppState>>, body: Body) -> Result<StatusCode, OllamaError> {
    let (_, request): (_, DeleteRequest) = read_json(&state, body).await?;
    let Some(entry) = state.library.get(&request.model).map_err(internal)? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "model_not_found", format!("model '{}' is not in the library", request.model)).into());
    };
    if let Some(refusal) = state.library.removal_refusal(&entry.name).map_err(internal)? {
        return Err(ApiError::new(StatusCode::CONFLICT, "model_in_use", refusal).into());
    }
    state.supervisor.unload(&entry.name).await;
    state.library.remove(&entry.name).map_err(internal)?;
    tracing::info!(model = %entry.name, "model deleted");
    Ok(StatusCode::OK)
}

/// `version` is the Ollama API this layer follows, which clients compare to enable features;
/// what really answers is said beside it: hellasd, the image and llama.cpp's llama-server.
pub async fn version(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "version": OLLAMA_VERSION,
        "hellasd": env!("CARGO_PKG_VERSION"),
        "image": crate::update::booted_version(std::path::Path::new("/")).ok(),
        "engine": state.supervisor.engine_version().await.map(|v| format!("llama.cpp llama-server {v}")),
    }))
}

#[derive(Deserialize)]
struct PullRequest {
    #[serde(alias = "name")]
    model: String,
    stream: Option<bool>,
}

/// `POST /api/pull`: fetches a catalog model by name, or a Hugging Face model by its
/// `hf.co/ORG/REPO:QUANT` reference, into the library, with Ollama's progress lines: "pulling
/// manifest", "pulling <file>" with the bytes done of all files, "verifying sha256 digest",
/// "writing manifest", "success". A model that does not fit this box (nor the pool) is refused
/// before anything is downloaded.
pub async fn pull(State(state): State<Arc<AppState>>, body: Body) -> Result<Response, OllamaError> {
    let (_, request): (_, PullRequest) = read_json(&state, body).await?;
    let pull = state.pull_for(&request.model).await.map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "model_not_found", format!("{e:#}")))?;
    let fit = state.fit(&pull).await;
    if !fit.allows_pull() {
        return Err(ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "model_too_large", format!("{} is not downloaded: {}", request.model, fit.describe())).into());
    }
    let files: Vec<(String, String)> = pull.parts.iter().chain(&pull.projector).map(|f| (f.file_name().to_string(), format!("sha256:{}", f.sha256))).collect();
    let job = state.downloads.start(pull);
    let mut progress = job.watch();
    if request.stream == Some(false) {
        let outcome = progress.wait_for(|p| p.finished()).await.map(|p| p.clone());
        return match outcome {
            Ok(Progress::Done { .. }) => Ok(Json(json!({ "status": "success" })).into_response()),
            Ok(Progress::Failed { error }) => Err(ApiError::new(StatusCode::BAD_GATEWAY, "pull_failed", error).into()),
            _ => Err(ApiError::new(StatusCode::CONFLICT, "pull_cancelled", "the download was cancelled").into()),
        };
    }
    let lines = futures_util::stream::unfold((progress, true, false), move |(mut rx, first, ended)| {
        let files = files.clone();
        async move {
            if ended || (!first && rx.changed().await.is_err()) {
                return None;
            }
            let now = rx.borrow_and_update().clone();
            let mut out = match &now {
                Progress::Starting => vec![json!({ "status": "pulling manifest" })],
                Progress::Downloading { file, done, total, .. } => {
                    let digest = files.iter().find(|(name, _)| name == file).map_or_else(|| files[0].1.clone(), |(_, d)| d.clone());
                    vec![json!({ "status": format!("pulling {}", &digest["sha256:".len()..][..12]), "digest": digest, "total": total, "completed": done })]
                }
                // The connection broke and the download resumes: Ollama has no word for it, so
                // the progress stands still.
                Progress::Retrying { done, total, .. } => vec![json!({ "status": "pulling", "total": total, "completed": done })],
                Progress::Verifying { .. } => vec![json!({ "status": "verifying sha256 digest" })],
                Progress::Done { .. } => vec![json!({ "status": "writing manifest" }), json!({ "status": "success" })],
                Progress::Failed { error } => vec![json!({ "error": error })],
                Progress::Cancelled => vec![json!({ "error": "the download was cancelled" })],
            };
            let text: String = out.iter_mut().map(|line| line.to_string() + "\n").collect();
            Some((Ok::<_, std::io::Error>(Bytes::from(text)), (rx, false, now.finished())))
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_become_image_parts_ahead_of_the_text() {
        let message = chat_message(json!({ "role": "user", "content": "What is this?", "images": ["iVBORw0KGgoAAAA", "/9j/4AAQ"] }));
        assert_eq!(
            message,
            json!({ "role": "user", "content": [
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgoAAAA" } },
                { "type": "image_url", "image_url": { "url": "data:image/jpeg;base64,/9j/4AAQ" } },
                { "type": "text", "text": "What is this?" },
            ] })
        );
        let plain = chat_message(json!({ "role": "user", "content": "Hi", "images": [] }));
        assert_eq!(plain, json!({ "role": "user", "content": "Hi" }), "no images: the text as it is");
    }

    #[test]
    fn tool_calls_sent_back_go_on_in_openais_shape() {
        let call = json!({ "function": { "name": "get_weather", "arguments": { "city": "Paris" } } });
        let message = chat_message(json!({ "role": "assistant", "content": "", "tool_calls": [call] }));
        assert_eq!(
            message["tool_calls"],
            json!([{ "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } }]),
            "typed, the arguments as JSON text"
        );
        let answer = chat_message(json!({ "role": "tool", "content": "18 degrees", "tool_name": "get_weather" }));
        assert_eq!(answer, json!({ "role": "tool", "content": "18 degrees", "name": "get_weather" }));
    }

    fn translated(stream: bool, chunks: &[&str]) -> Vec<Value> {
        let mut translate = Translate::new("m".into(), Shape::Chat, stream, Instant::now());
        let mut out = Vec::new();
        for chunk in chunks {
            translate.chunk(Bytes::from(chunk.to_string()), &mut out);
        }
        translate.end(&mut out);
        out.iter().flat_map(|bytes| std::str::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>()).collect()
    }

    #[test]
    fn tool_calls_come_back_in_ollamas_shape() {
        let whole = json!({ "choices": [{ "finish_reason": "tool_calls", "message": { "role": "assistant", "content": null, "tool_calls": [
            { "type": "function", "id": "abc", "function": { "name": "get_weather", "arguments": "{\"city\": \"Paris\"}" } }
        ] } }] });
        let out = translated(false, &[&whole.to_string()]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["message"]["tool_calls"], json!([{ "id": "abc", "function": { "index": 0, "name": "get_weather", "arguments": { "city": "Paris" } } }]));
        assert_eq!((out[0]["message"]["content"].as_str(), out[0]["done_reason"].as_str()), (Some(""), Some("stop")));

        // Streamed: the pieces put together, in a line of their own before the last.
        let events = [
            json!({ "choices": [{ "delta": { "role": "assistant", "content": null } }] }),
            json!({ "choices": [{ "delta": { "tool_calls": [{ "index": 0, "id": "abc", "type": "function", "function": { "name": "get_weather", "arguments": "" } }] } }] }),
            json!({ "choices": [{ "delta": { "tool_calls": [{ "index": 0, "function": { "arguments": "{\"city\": " } }] } }] }),
            json!({ "choices": [{ "delta": { "tool_calls": [{ "index": 0, "function": { "arguments": "\"Paris\"}" } }] } }] }),
            json!({ "choices": [{ "delta": {}, "finish_reason": "tool_calls" }] }),
        ];
        let sse: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).chain(["data: [DONE]\n\n".to_string()]).collect();
        let out = translated(true, &sse.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0]["message"]["tool_calls"], json!([{ "id": "abc", "function": { "index": 0, "name": "get_weather", "arguments": { "city": "Paris" } } }]));
        assert_eq!(out[0]["done"], false);
        assert_eq!((out[1]["done"].as_bool(), out[1]["done_reason"].as_str()), (Some(true), Some("stop")));
        assert!(out[1]["message"].get("tool_calls").is_none(), "the calls are not repeated: {}", out[1]);
    }

    #[test]
    fn embeddings_in_ollamas_shapes() {
        let answer = json!({ "data": [{ "index": 1, "embedding": [0.0, 3.0] }, { "index": 0, "embedding": [3.0, 4.0, 12.0] }], "usage": { "prompt_tokens": 7 } });
        let mut embed = Embeddings { model: "m".into(), started: Instant::now(), legacy: false, dimensions: Some(2), whole: Vec::new(), prompt_tokens: 0 };
        let out = embed.translate(&answer).unwrap();
        assert_eq!(out["embeddings"], json!([[0.6, 0.8], [0.0, 1.0]]), "in input order, cut to 2 dimensions and renormalised");
        assert_eq!((out["model"].as_str(), out["prompt_eval_count"].as_u64()), (Some("m"), Some(7)));
        let mut legacy = Embeddings { legacy: true, dimensions: None, ..embed };
        assert_eq!(legacy.translate(&answer).unwrap(), json!({ "embedding": [3.0, 4.0, 12.0] }));
    }
}
