//! Relaying an engine's answer to the client as it arrives.
//!
//! A task reads llama-server's response chunk by chunk and hands each chunk to a [`Relay`], which
//! passes it through (OpenAI routes) or translates it (Ollama routes). The task holds the request's
//! admission slot and engine lease until the answer ends or the client goes away, so a dropped
//! client frees its slot and closes the upstream connection, which stops generation. When the
//! engine dies mid-answer the relay ends the stream with an error the client can see.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{AppState, Dispatched};
use crate::engine::{EngineLease, EngineStatus};
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

pub fn spawn(state: Arc<AppState>, dispatched: Dispatched, route: &'static str, mut relay: impl Relay) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(32);
    let status = dispatched.upstream.status().as_u16();
    tokio::spawn(async move {
        let Dispatched { model, lease, permit, upstream, started } = dispatched;
        let labels = Metrics::model(&model);
        let mut stream = upstream.bytes_stream();
        let mut out = Vec::new();
        let mut first = true;
        let mut final_status = status;
        let mut cut_with = None;
        loop {
            let next = stream.next().await;
            let done = !matches!(next, Some(Ok(_)));
            match next {
                Some(Ok(chunk)) => {
                    if first {
                        state.metrics.time_to_first_token.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                        first = false;
                    }
                    relay.chunk(chunk, &mut out);
                }
                Some(Err(e)) => {
                    final_status = 502;
                    let message = engine_failure(&lease, &format!("broke off its answer: {e}")).await;
                    if !relay.error(&message, &mut out) {
                        cut_with = Some(message);
                    }
                }
                None => relay.end(&mut out),
            }
            let mut client_gone = false;
            for bytes in out.drain(..) {
                if tx.send(Ok(bytes)).await.is_err() {
                    client_gone = true;
                    break;
                }
            }
            if let Some(message) = cut_with.take() {
                let _ = tx.send(Err(std::io::Error::other(message))).await;
            }
            if done || client_gone {
                break;
            }
        }
        let (prompt, generated) = relay.tokens();
        state.metrics.count_tokens(&model, prompt, generated);
        state.metrics.request_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        state.metrics.count_request(route, &model, final_status);
        drop(lease);
        drop(permit);
    });
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }))
}

/// What to tell a client whose request an engine failed. The supervisor is given a moment to
/// notice a dead child, so the client learns why rather than only that the connection broke.
pub async fn engine_failure(lease: &EngineLease, what: &str) -> String {
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let message = match lease.status() {
        EngineStatus::Exited { reason } => format!("{}; retry the request", reason.lines().next().unwrap_or_default()),
        _ => format!("engine for '{}' {what}", lease.model),
    };
    tracing::warn!(model = %lease.model, "{message}");
    message
}

/// Splits a server-sent event stream into the payloads of its `data:` lines.
#[derive(Default)]
pub struct SseReader {
    pending: Vec<u8>,
}

impl SseReader {
    pub fn feed(&mut self, chunk: &[u8], mut on_data: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + pos];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(data) = line.strip_prefix(b"data:") {
                on_data(data.strip_prefix(b" ").unwrap_or(data));
            }
            start += pos + 1;
        }
        self.pending.drain(..start);
    }
}

/// Prompt and generated token counts from an OpenAI-style `usage` object or llama-server's
/// `timings`.
pub fn token_counts(value: &serde_json::Value) -> Option<(u64, u64)> {
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        return Some((usage["prompt_tokens"].as_u64().unwrap_or(0), usage["completion_tokens"].as_u64().unwrap_or(0)));
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
    }
}
