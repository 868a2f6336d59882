//! Fixtures for tests here and in the crates that use this one (feature `testing`).

use crate::gguf::ModelInfo;
use crate::split::Member;

pub use crate::gguf::testing::GgufBuilder;

const MIB: u64 = 1 << 20;

/// A SmolLM2-shaped model: 30 layers.
pub fn model() -> ModelInfo {
    // 30 layers of 3 MiB weights plus 20 MiB of embeddings and output.
    ModelInfo {
        architecture: "llama".into(),
        name: Some("Synthetic".into()),
        n_layer: 30,
        n_embd: 576,
        n_vocab: 49152,
        context_length: 8192,
        n_head: vec![9; 30],
        n_head_kv: vec![3; 30],
        key_length: 64,
        value_length: 64,
        sliding_window: None,
        swa_layers: vec![false; 30],
        n_ff: 1536,
        n_expert: 0,
        n_expert_used: 0,
        n_ff_expert: 0,
        n_ff_shared: 0,
        tensor_bytes: 110 * MIB,
        layer_tensor_bytes: 90 * MIB,
        parameter_count: 135_000_000,
        file_type: Some("Q4_1".into()),
        chat_template: None,
        embedding: false,
        projector: None,
    }
}

pub fn member(name: &str, free: u64, rpc: bool) -> Member {
    Member {
        node_id: name.to_lowercase(),
        name: name.into(),
        rpc: rpc.then(|| format!("10.0.0.{}:50052", name.len()).parse().unwrap()),
        free,
    }
}
