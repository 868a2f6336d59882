//! How much of an engine's KV cache its running requests hold, from llama-server's `/slots`.
//!
//! Each slot owns `n_ctx` cells. A slot that is answering holds the cells of its prompt and what
//! it has generated so far (`n_prompt_tokens` counts both as it goes); an idle slot's cells only
//! keep a prefix llama-server may reuse or overwrite, so they count as free, as a freed block
//! in vLLM's prefix cache does.
//!
//! llama-server answers `/slots` between two decoding steps, with every slot's parameters. A
//! gateway's endpoint picker scrapes every 50 ms by default; so an engine is asked at most once
//! per [`FRESH_FOR`] and scrapes in between get that answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Engine, Supervisor};

#[derive(Deserialize)]
struct Slot {
    n_ctx: u64,
    is_processing: bool,
    #[serde(default)]
    n_prompt_tokens: u64,
}

/// The fraction (0 to 1) of the slots' cells that answering slots hold.
fn usage(slots: &[Slot]) -> f64 {
    let total: u64 = slots.iter().map(|s| s.n_ctx).sum();
    let held: u64 = slots.iter().filter(|s| s.is_processing).map(|s| s.n_prompt_tokens.min(s.n_ctx)).sum();
    if total == 0 {
        return 0.0;
    }
    held as f64 / total as f64
}

/// How long an engine's answer stands for the next scrapes.
const FRESH_FOR: Duration = Duration::from_millis(250);

/// The last answer of each engine (by its process), with when it was read.
#[derive(Default)]
pub struct KvCacheReadings(Mutex<HashMap<u32, (Instant, f64)>>);

impl KvCacheReadings {
    fn fresh(&self, pid: u32, now: Instant) -> Option<f64> {
        self.0.lock().unwrap().get(&pid).filter(|(at, _)| now.duration_since(*at) < FRESH_FOR).map(|(_, usage)| *usage)
    }

    fn keep(&self, pid: u32, now: Instant, usage: f64) {
        let mut readings = self.0.lock().unwrap();
        // Engines come and go; the stale readings of those gone are dropped on the way.
        readings.retain(|_, (at, _)| now.duration_since(*at) < FRESH_FOR);
        readings.insert(pid, (now, usage));
    }
}

impl Supervisor {
    /// The share of `engine`'s KV cache in use; `None` when it does not say within a moment.
    pub async fn kv_cache_usage(&self, engine: &Engine) -> Option<f64> {
        if let Some(usage) = self.kv_cache.fresh(engine.pid, Instant::now()) {
            return Some(usage);
        }
        let url = format!("{}/slots", engine.base_url());
        let response = self.http.get(&url).timeout(Duration::from_millis(500)).send().await.ok()?;
        let slots: Vec<Slot> = response.error_for_status().ok()?.json().await.ok()?;
        let usage = usage(&slots);
        self.kv_cache.keep(engine.pid, Instant::now(), usage);
        Some(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answering_slots_hold_cells() {
        let slots: Vec<Slot> = serde_json::from_str(
            r#"[{"id":0,"n_ctx":1024,"is_processing":true,"n_prompt_tokens":256,"next_token":[{"n_decoded":10}]},
                {"id":1,"n_ctx":1024,"is_processing":false,"n_prompt_tokens":900}]"#,
        )
        .unwrap();
        assert_eq!(usage(&slots), 0.125);
        assert_eq!(usage(&[]), 0.0);
        let overfull = [Slot { n_ctx: 10, is_processing: true, n_prompt_tokens: 50 }];
        assert_eq!(usage(&overfull), 1.0);
    }

    #[test]
    fn a_reading_stands_for_a_quarter_second() {
        let readings = KvCacheReadings::default();
        let at = Instant::now();
        assert_eq!(readings.fresh(7, at), None);
        readings.keep(7, at, 0.5);
        assert_eq!(readings.fresh(7, at + Duration::from_millis(200)), Some(0.5));
        assert_eq!(readings.fresh(7, at + FRESH_FOR), None, "then the engine is asked again");
        assert_eq!(readings.fresh(8, at), None, "each engine its own");
        readings.keep(8, at + FRESH_FOR, 0.1);
        assert_eq!(readings.0.lock().unwrap().len(), 1, "stale readings are dropped");
    }
}
