//! Fixtures for tests here and in the crates that use this one (feature `testing`).

use crate::gguf::{GgufFile, ModelInfo, ModelKind, MAGIC};
use crate::plan::{CacheType, Margin, PlanRequest};
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
        kind: ModelKind::Generative,
        projector: None,
        draft: None,
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

/// The fuzz target's body, which the corpus and crasher replay test runs too: `bytes` read
/// through every path hellasd reads an untrusted GGUF by, down to the plans made from it. It
/// must return for any input; it panics only where the reader breaks a promise its callers
/// rely on.
pub fn read_untrusted(bytes: &[u8]) {
    // A whole file (`hellasd models add`, the library's blobs); then the catalog's case, a
    // header prefix of a remote file that claims to be larger.
    for file_size in [bytes.len() as u64, u64::MAX] {
        if let Ok(file) = GgufFile::parse(bytes, file_size) {
            // Tensors may not overlap, so their sizes add up within the file (hellasd sums them).
            // The data may start past the end of a file without tensors: its padding is optional.
            let data = file.tensors.iter().try_fold(0u64, |sum, t| sum.checked_add(t.n_bytes));
            let room = file.file_size.saturating_sub(file.data_offset);
            assert!(data.is_some_and(|d| d <= room), "tensor data exceeds the file");
            plan_from(&file);
        }
    }
    // A split model: the input cut into parts at each later magic, joined as the library does.
    let mut starts: Vec<usize> = bytes.windows(4).enumerate().filter(|(_, w)| *w == MAGIC).map(|(i, _)| i).collect();
    starts.truncate(4);
    if starts.len() > 1 && starts[0] == 0 {
        starts.push(bytes.len());
        let parts: Result<Vec<GgufFile>, _> =
            starts.windows(2).map(|w| GgufFile::parse(&bytes[w[0]..w[1]], u64::MAX)).collect();
        if let Ok(joined) = parts.and_then(GgufFile::join_split) {
            plan_from(&joined);
        }
    }
}

/// What hellasd derives from a header: the model's facts, its projector's memory, and plans on
/// one box and across a pool.
fn plan_from(file: &GgufFile) {
    let _ = file.split_count();
    let projector = crate::projector::estimate(file).ok();
    if let Some(p) = projector {
        let _ = p.total();
    }
    let Ok(info) = file.model_info() else { return };
    let _ = (info.display_name(), crate::plan::format_bytes(info.tensor_bytes));
    let info = ModelInfo { projector, ..info };
    let head = member("head", 8 << 30, false);
    let peers = [member("b", 16 << 30, true), member("c", 4 << 30, true)];
    // The model's own context on one slot, as hellasd plans by default; then the largest
    // request the API and the configuration let through.
    let requests = [
        PlanRequest { ctx: 0, parallel: 1, cache_type: CacheType::F16, budget: 8 << 30 },
        PlanRequest { ctx: u32::MAX, parallel: 64, cache_type: CacheType::Q4_0, budget: u64::MAX },
    ];
    for req in requests {
        let plan = crate::plan::plan(&info, &req);
        let _ = (plan.local_bytes(), crate::plan::format_bytes(plan.total));
        if let Some(split) = crate::pool::plan_split_largest(&info, &req, &head, &peers, &Margin::default()) {
            let _ = (split.local_bytes(), split.split.map(|s| (s.rpc_arg(), s.device_args(true))));
        }
    }
}
