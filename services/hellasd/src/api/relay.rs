//! Relaying an engine's answer to the client as it arrives.
//!
//! The response body is a stream that reads llama-server's answer chunk by chunk and hands each
//! chunk to a [`Relay`], which passes it through (OpenAI routes) or translates it (Ollama routes).
//! It is polled by the client's connection itself, with no task or channel in between, so a
//! relayed token costs no extra wake-up. The stream holds the request's admission slot and engine
//! lease until the answer ends or the client goes away: a dropped client drops the stream, which
//! frees its slot and closes the upstream connection, and that stops generation. When the engine
//! dies mid-answer the relay ends the stream with an error the client can see.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{AppState, Dispatched};
use crate::admission::Permit;
use crate::engine::{EngineLease, EngineStatus};
use crate::lines::Lines;
use crate::metrics::Metrics;

/// Turns upstream chunks into what the client receives.
pub trait Relay: Send + 'static {
    fn chunk(&mut self, chunk: Bytes, out: &mut Vec<Bytes>);
    /// The engine failed mid-answer. Returns false when the format has no way to say so, and
    /// the connection is then cut instead.
    fn error(&mut self, message: &str, out: &mut Vec<Bytes>) -> bool;
    fn end(&mut self, out: &mut Vec<Bytes>);
    /// Prompt and generated tokens, as far as the answer reported them.
    fn tokens(&self) -> (u64, u64);
}

/// One answer on its way; its metrics are recorded when it is dropped, finished or not.
struct Relaying<R: Relay> {
    state: Arc<AppState>,
    route: &'static str,
    model: String,
    lease: EngineLease,
    _permit: Permit,
    started: Instant,
    upstream: BoxStream<'static, reqwest::Result<Bytes>>,
    relay: R,
    out: VecDeque<Bytes>,
    scratch: Vec<Bytes>,
    first: bool,
    done: bool,
    cut_with: Option<String>,
    status: u16,
}

impl<R: Relay> Relaying<R> {
    /// The next piece for the client: `None` at the end.
    async fn next(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                return Some(Ok(bytes));
            }
            if let Some(message) = self.cut_with.take() {
                return Some(Err(std::io::Error::other(message)));
            }
            if self.done {
                return None;
            }
            match self.upstream.next().await {
                Some(Ok(chunk)) => {
                    if self.first {
                        let labels = Metrics::model(&self.model);
                        self.state.metrics.time_to_first_token.get_or_create(&labels).observe(self.started.elapsed().as_secs_f64());
                        self.first = false;
                    }
                    self.relay.chunk(chunk, &mut self.scratch);
                }
                Some(Err(e)) => {
                    self.status = 502;
                    self.done = true;
                    let message = engine_failure(&self.lease, &format!("broke off its answer: {e}")).await;
                    if !self.relay.error(&message, &mut self.scratch) {
                        self.cut_with = Some(message);
                    }
                }
                None => {
                    self.done = true;
                    self.relay.end(&mut self.scratch);
                }
            }
            self.out.extend(self.scratch.drain(..));
        }
    }
}

impl<R: Relay> Drop for Relaying<R> {
    fn drop(&mut self) {
        let metrics = &self.state.metrics;
        let (prompt, generated) = self.relay.tokens();
        metrics.count_tokens(&self.model, prompt, generated);
        metrics.request_duration.get_or_create(&Metrics::model(&self.model)).observe(self.started.elapsed().as_secs_f64());
        metrics.count_request(self.route, &self.model, self.status);
        if generated > 0 {
            self.state.record_recent(crate::app::RecentRequest {
                model: self.model.clone(),
                generated,
                duration: self.started.elapsed(),
                at: Instant::now(),
            });
        }
    }
}

pub fn body(state: Arc<AppState>, dispatched: Dispatched, route: &'static str, relay: impl Relay) -> Body {
    let Dispatched { model, lease, permit, upstream, started } = dispatched;
    let relaying = Relaying {
        state,
        route,
        model,
        lease,
        _permit: permit,
        started,
        status: upstream.status().as_u16(),
        upstream: upstream.bytes_stream().boxed(),
        relay,
        out: VecDeque::new(),
        scratch: Vec::new(),
        first: true,
        done: false,
        cut_with: None,
    };
    Body::from_stream(futures_util::stream::unfold(relaying, |mut r| async move { r.next().await.map(|item| (item, r)) }))
}

/// What to tell a client whose request an engine failed. The supervisor is given a moment to
/// notice a dead child and read its last words, so the client learns why rather than only that
/// the connection broke.
pub async fn engine_failure(lease: &EngineLease, what: &str) -> String {
    let message = match lease.exit_within(std::time::Duration::from_secs(1)).await {
        EngineStatus::Exited { reason } => format!("{}; retry the request", reason.lines().next().unwrap_or_default()),
        _ => format!("engine for '{}' {what}", lease.model),
    };
    tracing::warn!(model = %lease.model, "{message}");
    message
}

/// Splits a server-sent event stream into the payloads of its `data:` lines.
#[derive(Default)]
pub struct SseReader {
    lines: Lines,
}

impl SseReader {
    pub fn feed(&mut self, chunk: &[u8], mut on_data: impl FnMut(&[u8])) {
        self.lines.feed(chunk, |line| {
            if let Some(data) = line.strip_prefix(b"data:") {
                on_data(data.strip_prefix(b" ").unwrap_or(data));
            }
        });
    }
}

/// Prompt and generated token counts from an OpenAI-style `usage` object or llama-server's
/// `timings`.
pub fn token_counts(value: &serde_json::Value) -> Option<(u64, u64)> {
    // At the top, or in a Responses stream's `response.completed` and Anthropic's `message_start`.
    let usage = [&value["usage"], &value["response"]["usage"], &value["message"]["usage"]].into_iter().find(|u| u.is_object());
    if let Some(usage) = usage {
        // OpenAI's chat names, or the Responses' and Anthropic's; Anthropic counts the prompt's
        // cached tokens apart.
        let count = |names: &[&str]| names.iter().filter_map(|n| usage[n].as_u64()).sum::<u64>();
        let prompt = count(&["prompt_tokens", "input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"]);
        return Some((prompt, count(&["completion_tokens", "output_tokens"])));
    }
    let timings = value.get("timings").filter(|t| t.is_object())?;
    Some((timings["prompt_n"].as_u64().unwrap_or(0), timings["predicted_n"].as_u64().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_split_across_chunks() {
        let mut reader = SseReader::default();
        let mut seen = Vec::new();
        for chunk in ["data: {\"a\"", ":1}\n\nda", "ta: [DONE]\r\n\n", ": comment\n"] {
            reader.feed(chunk.as_bytes(), |d| seen.push(String::from_utf8_lossy(d).into_owned()));
        }
        assert_eq!(seen, vec!["{\"a\":1}", "[DONE]"]);
    }

    #[test]
    fn counts_from_usage_or_timings() {
        let usage = serde_json::json!({"usage": {"prompt_tokens": 3, "completion_tokens": 5}});
        assert_eq!(token_counts(&usage), Some((3, 5)));
        let timings = serde_json::json!({"timings": {"prompt_n": 7, "predicted_n": 2}});
        assert_eq!(token_counts(&timings), Some((7, 2)));
        assert_eq!(token_counts(&serde_json::json!({"choices": []})), None);
        let responses = serde_json::json!({"type": "response.completed", "response": {"usage": {"input_tokens": 31, "output_tokens": 5}}});
        assert_eq!(token_counts(&responses), Some((31, 5)));
        let anthropic = serde_json::json!({"type": "message_delta", "usage": {"input_tokens": 1, "cache_read_input_tokens": 33, "output_tokens": 4}});
        assert_eq!(token_counts(&anthropic), Some((34, 4)));
    }
}
