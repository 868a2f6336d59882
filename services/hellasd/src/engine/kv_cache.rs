//! How much of an engine's KV cache its running requests hold, from llama-server's `/slots`.
//!
//! Each slot owns `n_ctx` cells. A slot that is answering holds the cells of its prompt and what
//! it has generated so far (`n_prompt_tokens` counts both as it goes); an idle slot's cells only
//! keep a prefix llama-server may reuse or overwrite, so they count as free, as a freed block
//! in vLLM's prefix cache does.

use std::time::Duration;

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

impl Supervisor {
    /// The share of `engine`'s KV cache in use; `None` when it does not say within a moment
    /// (it answers `/slots` between two decoding steps).
    pub async fn kv_cache_usage(&self, engine: &Engine) -> Option<f64> {
        let url = format!("{}/slots", engine.base_url());
        let response = self.http.get(&url).timeout(Duration::from_millis(500)).send().await.ok()?;
        let slots: Vec<Slot> = response.error_for_status().ok()?.json().await.ok()?;
        Some(usage(&slots))
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
}
