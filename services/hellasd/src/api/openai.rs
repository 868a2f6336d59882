//! OpenAI-compatible routes, and Anthropic's Messages: requests go to llama-server unchanged (it
//! speaks these APIs), so the answer a client gets through hellasd is byte for byte the
//! engine's; hellasd's own errors come in the shape of the route's API.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::relay::{self, Relay, SseReader};
use super::{internal, read_json, ApiError, AppState, ClientKey};

#[derive(Deserialize)]
struct ModelField {
    model: String,
}

pub async fn chat_completions(state: State<Arc<AppState>>, key: Extension<ClientKey>, body: Body) -> Result<Response, ApiError> {
    passthrough(state, key, body, "/v1/chat/completions").await
}

pub async fn completions(state: State<Arc<AppState>>, key: Extension<ClientKey>, body: Body) -> Result<Response, ApiError> {
    passthrough(state, key, body, "/v1/completions").await
}

pub async fn embeddings(state: State<Arc<AppState>>, key: Extension<ClientKey>, body: Body) -> Result<Response, ApiError> {
    passthrough(state, key, body, "/v1/embeddings").await
}

/// Reranking, as Jina's and Cohere's APIs shape it (`query`, `documents`, `top_n`), by a
/// reranker model.
pub async fn rerank(state: State<Arc<AppState>>, key: Extension<ClientKey>, body: Body) -> Result<Response, ApiError> {
    passthrough(state, key, body, "/v1/rerank").await
}

/// OpenAI's Responses API.
pub async fn responses(state: State<Arc<AppState>>, key: Extension<ClientKey>, body: Body) -> Response {
    passthrough(state, key, body, "/v1/responses").await.unwrap_or_else(|e| e.into_openai())
}

/// Anthropic's Messages API.
pub async fn messages(state: State<Arc<AppState>>, key: Extension<ClientKey>, body: Body) -> Response {
    passthrough(state, key, body, "/v1/messages").await.unwrap_or_else(|e| e.into_anthropic())
}

/// Anthropic's token counting, by the model's own tokenizer and chat template.
pub async fn count_tokens(state: State<Arc<AppState>>, key: Extension<ClientKey>, body: Body) -> Response {
    passthrough(state, key, body, "/v1/messages/count_tokens").await.unwrap_or_else(|e| e.into_anthropic())
}

async fn passthrough(State(state): State<Arc<AppState>>, Extension(key): Extension<ClientKey>, body: Body, path: &'static str) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (bytes, ModelField { model }) = read_json(&state, body).await?;
    let dispatched = match state.dispatch(&key, &model, path, bytes, started).await {
        Ok(d) => d,
        Err(e) => {
            state.metrics.count_request(path, &model, e.status.as_u16());
            return Err(e);
        }
    };
    let status = dispatched.upstream.status();
    let content_type = dispatched.upstream.headers().get(header::CONTENT_TYPE).cloned();
    let sse = content_type.as_ref().is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let body = relay::body(state.clone(), dispatched, path, Passthrough::new(sse));
    let mut response = Response::builder().status(status);
    if let Some(content_type) = content_type {
        response = response.header(header::CONTENT_TYPE, content_type);
    }
    if sse {
        response = response.header(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    Ok(response.body(body).expect("a valid response"))
}

/// Forwards chunks untouched and reads token counts out of them on the way.
struct Passthrough {
    sse: Option<SseReader>,
    /// A non-streamed answer, kept (up to a bound) to read its `usage` at the end.
    whole: Vec<u8>,
    tokens: (u64, u64),
}

const MAX_KEPT_ANSWER: usize = 4 << 20;

impl Passthrough {
    fn new(sse: bool) -> Passthrough {
        Passthrough { sse: sse.then(SseReader::default), whole: Vec::new(), tokens: (0, 0) }
    }
}

impl Relay for Passthrough {
    fn chunk(&mut self, chunk: Bytes, out: &mut Vec<Bytes>) {
        match &mut self.sse {
            Some(reader) => {
                let tokens = &mut self.tokens;
                reader.feed(&chunk, |data| {
                    // Only the last event carries usage; skip parsing the others.
                    if memchr_str(data, b"\"usage\"") || memchr_str(data, b"\"timings\"") {
                        // Anthropic's stream gives the prompt's count first, the answer's last.
                        if let Some((prompt, answer)) = serde_json::from_slice(data).ok().as_ref().and_then(relay::token_counts) {
                            *tokens = (tokens.0.max(prompt), tokens.1.max(answer));
                        }
                    }
                });
            }
            None if self.whole.len() + chunk.len() <= MAX_KEPT_ANSWER => self.whole.extend_from_slice(&chunk),
            None => {}
        }
        out.push(chunk);
    }

    fn error(&mut self, message: &str, out: &mut Vec<Bytes>) -> bool {
        if self.sse.is_none() {
            return false;
        }
        let event = json!({ "error": { "message": message, "type": "engine_error", "code": 502 } });
        out.push(Bytes::from(format!("data: {event}\n\n")));
        true
    }

    fn end(&mut self, _out: &mut Vec<Bytes>) {
        if self.sse.is_none() {
            if let Some(counts) = serde_json::from_slice(&self.whole).ok().as_ref().and_then(relay::token_counts) {
                self.tokens = counts;
            }
        }
    }

    fn tokens(&self) -> (u64, u64) {
        self.tokens
    }
}

fn memchr_str(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub async fn models(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let loaded: Vec<String> = state.supervisor.loaded().iter().map(|e| e.model.clone()).collect();
    let data: Vec<Value> = state
        .library
        .list()
        .map_err(internal)?
        .into_iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": m.added,
                "owned_by": "hellas",
                "meta": { "size": m.size, "sha256": m.sha256, "loaded": loaded.contains(&m.name) },
            })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}
