//! Memory planner: how much memory llama-server will take for a model at a given context and
//! slot count, and whether that fits the budget.
//!
//! `need = weights + KV cache + compute buffers + margin`, each matching what llama.cpp itself
//! allocates when hellasd starts it as `llama-server -c (ctx × parallel) -np parallel
//! -fa on -ub 512` (hellasd's engine settings, `services/hellasd/src/engine/settings.rs`, keep
//! both on every backend):
//!
//! * **weights**: every tensor's data llama.cpp loads (`model buffer size`, all buffers incl.
//!   `CPU_REPACK`; see [`ModelInfo::tensor_bytes`]).
//!   With the whole model on the host, or on an APU where GTT and VRAM are the same RAM, all of it
//!   counts.
//! * **KV cache**: per layer `cells × n_head_kv × (key_length + value_length) × bytes/element`.
//!   llama.cpp pads the total context to a multiple of 256 and gives each of the `parallel`
//!   sequences its own stream of `n_ctx_seq = pad256(pad256(ctx × parallel) / parallel)` cells.
//!   Sliding-window layers keep only `pad256(min(n_ctx_seq, window + n_ubatch))` cells per stream
//!   (`llama_kv_cache_iswa`). See [`KvLayout`].
//! * **compute**: the scheduler's graph buffer plus the logits output buffer; see
//!   [`compute_graph_bytes`] for the formula and its calibration.
//! * **margin**: see [`Margin`].
//!
//! `tests/planner_accuracy.rs` starts the real llama-server and checks the first three against
//! the buffer sizes it reports; `tests/catalog_shapes.rs` does the same for every catalog
//! architecture, on shape-only GGUFs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::gguf::ModelInfo;

/// llama-server's physical batch size (`-ub`, default 512); hellasd does not change it.
pub const N_UBATCH: u32 = 512;
/// llama.cpp rounds contexts up to multiples of this (`GGML_PAD(n_ctx, 256)`).
pub const CTX_STEP: u32 = 256;
/// The smallest per-slot context a plan will offer. Below this a chat model cannot hold a system
/// prompt, a question and an answer, so a smaller context is reported as not fitting.
pub const MIN_CTX: u32 = 512;

const MIB: u64 = 1 << 20;

/// KV cache element type, named as llama-server's `-ctk`/`-ctv` take them.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CacheType {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
}

impl CacheType {
    pub const ALL: [CacheType; 8] = [
        CacheType::F32,
        CacheType::F16,
        CacheType::Bf16,
        CacheType::Q8_0,
        CacheType::Q4_0,
        CacheType::Q4_1,
        CacheType::Q5_0,
        CacheType::Q5_1,
    ];

    /// The name llama-server's `--cache-type-k/-v` take.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheType::F32 => "f32",
            CacheType::F16 => "f16",
            CacheType::Bf16 => "bf16",
            CacheType::Q8_0 => "q8_0",
            CacheType::Q4_0 => "q4_0",
            CacheType::Q4_1 => "q4_1",
            CacheType::Q5_0 => "q5_0",
            CacheType::Q5_1 => "q5_1",
        }
    }

    /// (elements per block, bytes per block), as ggml stores the type.
    fn block(self) -> (u64, u64) {
        match self {
            CacheType::F32 => (1, 4),
            CacheType::F16 | CacheType::Bf16 => (1, 2),
            CacheType::Q8_0 => (32, 34),
            CacheType::Q4_0 => (32, 18),
            CacheType::Q4_1 => (32, 20),
            CacheType::Q5_0 => (32, 22),
            CacheType::Q5_1 => (32, 24),
        }
    }

    /// Bytes for a row of `n` elements (`ggml_row_size`); a partial block counts whole.
    pub fn row_bytes(self, n: u64) -> u64 {
        let (block, size) = self.block();
        n.div_ceil(block).saturating_mul(size)
    }
}

impl fmt::Display for CacheType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CacheType {
    type Err = String;

    fn from_str(s: &str) -> Result<CacheType, String> {
        CacheType::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            let names: Vec<&str> = CacheType::ALL.iter().map(|t| t.as_str()).collect();
            format!("unknown KV cache type '{s}' (expected one of {})", names.join(", "))
        })
    }
}

/// What to plan for.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct PlanRequest {
    /// Context per slot, in tokens; 0 means the model's training context.
    pub ctx: u32,
    /// Slots (llama-server `-np`); 0 is treated as 1.
    pub parallel: u32,
    pub cache_type: CacheType,
    /// Usable bytes for this model.
    pub budget: u64,
}

/// Headroom on top of llama.cpp's own buffers.
///
/// The fixed part covers what the llama-server process holds besides its reported buffers
/// (binary, libraries, vocabulary, server state): measured RSS beyond the buffers was 22 MiB for
/// SmolLM2-135M and 50 MiB for gemma-3-270m (262k-token vocabulary) on the CPU backend, and a GPU
/// runtime adds more. The fraction absorbs the compute-buffer estimate's error on architectures it
/// was not calibrated on and allocator rounding.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Margin {
    pub fraction: f64,
    pub fixed: u64,
}

impl Default for Margin {
    fn default() -> Margin {
        Margin { fraction: 0.05, fixed: 128 * MIB }
    }
}

impl Margin {
    pub fn of(&self, subtotal: u64) -> u64 {
        // The float-to-integer cast saturates, and so does the sum.
        ((subtotal as f64 * self.fraction.max(0.0)).ceil() as u64).saturating_add(self.fixed)
    }
}

/// The verdict of a plan.
#[derive(Serialize, Clone, Debug, PartialEq)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Fits,
    /// The requested context does not fit, but `max_ctx` (per slot) does.
    FitsSmallerContext {
        max_ctx: u32,
    },
    /// Not even [`MIN_CTX`] fits; `short_by` is what that would need beyond the budget.
    DoesNotFit {
        short_by: u64,
    },
}

/// A memory plan. The sizes are for the requested context (after clamping to the model's
/// training context), also when the verdict says only a smaller one fits.
#[derive(Serialize, Clone, Debug)]
pub struct Plan {
    pub model: String,
    /// Context per slot.
    pub ctx: u32,
    pub parallel: u32,
    /// The requested context, when it exceeded the model's training context and was clamped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx_clamped_from: Option<u32>,
    pub cache_type: CacheType,
    pub weights: u64,
    pub kv_cache: u64,
    /// Compute graph buffer plus the logits output buffer.
    pub compute: u64,
    pub margin: u64,
    pub total: u64,
    pub budget: u64,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Set when the model runs across several boxes: which box holds what. `total` and `budget`
    /// are then the pool's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::split::Split>,
}

impl Plan {
    /// What this plan takes of this box's own budget.
    pub fn local_bytes(&self) -> u64 {
        self.split.as_ref().map_or(self.total, |split| split.head().bytes)
    }
}

/// How llama.cpp lays out the KV cache for a context (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct KvLayout {
    /// Cells per stream for full-attention layers (`n_ctx_seq`).
    pub n_ctx_seq: u32,
    /// One stream per slot (hellasd passes `-np`, which turns off the unified cache).
    pub n_stream: u32,
    /// Cells per stream for sliding-window layers.
    pub swa_cells: u32,
    /// The physical batch the compute graph is reserved for.
    pub n_ubatch: u32,
}

impl KvLayout {
    pub fn new(info: &ModelInfo, ctx: u32, parallel: u32) -> KvLayout {
        let pad = |n: u64| n.div_ceil(u64::from(CTX_STEP)) * u64::from(CTX_STEP);
        let parallel = parallel.max(1);
        let requested = u64::from(ctx.max(1)) * u64::from(parallel);
        let n_ctx = pad(requested);
        let n_ctx_seq = pad(n_ctx / u64::from(parallel));
        // n_batch = min(n_ctx, 2048) before padding, n_ubatch = min(n_batch, 512).
        let n_ubatch = requested.min(u64::from(N_UBATCH));
        let swa_cells = match info.sliding_window {
            Some(window) => pad(n_ctx_seq.min(u64::from(window) + n_ubatch)),
            None => n_ctx_seq,
        };
        let clamp = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        KvLayout {
            n_ctx_seq: clamp(n_ctx_seq),
            n_stream: parallel,
            swa_cells: clamp(swa_cells),
            n_ubatch: clamp(n_ubatch),
        }
    }
}

/// The memory llama.cpp will allocate, before the margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Estimate {
    pub layout: KvLayout,
    /// `model buffer size`, all buffers.
    pub weights: u64,
    /// `KV buffer size`, all caches.
    pub kv_cache: u64,
    /// `compute buffer size`.
    pub compute_graph: u64,
    /// `output buffer size` (logits).
    pub output: u64,
}

impl Estimate {
    pub fn compute(&self) -> u64 {
        self.compute_graph.saturating_add(self.output)
    }

    pub fn subtotal(&self) -> u64 {
        self.weights.saturating_add(self.kv_cache).saturating_add(self.compute())
    }
}

/// What llama-server will allocate for `info` at `ctx` tokens per slot and `parallel` slots.
///
/// Every size here saturates at `u64::MAX` rather than overflowing: the model's dimensions come
/// from an untrusted file, and a wrapped sum would plan a model that cannot fit as fitting.
pub fn estimate(info: &ModelInfo, ctx: u32, parallel: u32, cache_type: CacheType) -> Estimate {
    let layout = KvLayout::new(info, ctx, parallel);
    // A vision projector's weights and its compute buffer (one image's) come on top.
    let projector = info.projector.unwrap_or_default();
    let alone = Estimate {
        layout,
        weights: info.tensor_bytes.saturating_add(projector.weights),
        kv_cache: kv_cache_bytes(info, &layout, cache_type),
        compute_graph: compute_graph_bytes(info, &layout).saturating_add(projector.compute),
        output: output_bytes(info, parallel),
    };
    // A draft model gets a context of its own as large as the model's, with as many slots
    // (llama-server b11669 logs the same n_ctx and n_ctx_seq for both), in the same cache type.
    match &info.draft {
        None => alone,
        Some(draft) => {
            let draft = estimate(&ModelInfo { draft: None, ..(**draft).clone() }, ctx, parallel, cache_type);
            Estimate {
                weights: alone.weights.saturating_add(draft.weights),
                kv_cache: alone.kv_cache.saturating_add(draft.kv_cache),
                compute_graph: alone.compute_graph.saturating_add(draft.compute_graph),
                output: alone.output.saturating_add(draft.output),
                ..alone
            }
        }
    }
}

fn kv_cache_bytes(info: &ModelInfo, layout: &KvLayout, cache_type: CacheType) -> u64 {
    (0..info.n_layer as usize)
        .map(|il| {
            let heads = u64::from(info.n_head_kv.get(il).copied().unwrap_or(0));
            let per_cell = cache_type
                .row_bytes(heads * u64::from(info.key_length))
                .saturating_add(cache_type.row_bytes(heads * u64::from(info.value_length)));
            let cells =
                if info.swa_layers.get(il).copied().unwrap_or(false) { layout.swa_cells } else { layout.n_ctx_seq };
            per_cell.saturating_mul(u64::from(cells)).saturating_mul(u64::from(layout.n_stream))
        })
        .fold(0, u64::saturating_add)
}

/// Logits for one output per slot (llama.cpp sizes `n_outputs_max` to the slot count).
fn output_bytes(info: &ModelInfo, parallel: u32) -> u64 {
    (u64::from(info.n_vocab) * 4).saturating_mul(u64::from(parallel.max(1)))
}

/// The scheduler's compute buffer (`sched_reserve: CPU compute buffer size`) with flash
/// attention on:
///
/// ```text
/// compute = max(n_ubatch × 4 × activations per token, n_vocab × 4 × parallel)
///         + n_ubatch × 2 × (n_ctx_seq [if any full-attention layer] + swa_cells [if any SWA layer])
/// ```
///
/// The first term is the peak of live f32 activations in a layer's feed-forward block (see
/// [`activations_per_token`]), which ggml-alloc reuses layer to layer; the logits of the last
/// layer (one row per slot) only matter when the vocabulary is huge. The second term is the f16
/// KQ masks, one `n_kv × n_ubatch` matrix per cache (with flash attention the KQ product itself
/// is never materialised).
///
/// Calibration against llama-server b11669 (CPU backend, `-fa on`, `-ub 512`), reported MiB vs
/// this formula; the MoE rows are shape-only models (`tests/catalog_shapes.rs`):
///
/// | model (n_embd, n_ff)          | -c × -np   | llama-server | formula |
/// |-------------------------------|------------|--------------|---------|
/// | SmolLM2-135M (576, 1536)      | 512 × 1    | 15.14        | 15.125  |
/// | SmolLM2-135M                  | 2048 × 1   | 16.64        | 16.625  |
/// | SmolLM2-135M                  | 8192 × 1   | 22.64        | 22.625  |
/// | SmolLM2-135M                  | 16384 × 1  | 30.64        | 30.625  |
/// | SmolLM2-135M                  | 8192 × 4   | 16.64        | 16.625  |
/// | SmolLM2-135M                  | 256 × 1    | 7.45         | 7.438   |
/// | gemma-3-270m (640, 2048), SWA | 512 × 1    | 19.28        | 19.25   |
/// | gemma-3-270m                  | 2048 × 1   | 21.28        | 21.25   |
/// | gemma-3-270m                  | 8192 × 1   | 27.28        | 27.25   |
/// | gemma-3-270m                  | 16384 × 1  | 35.28        | 35.25   |
/// | gemma-3-270m                  | 8192 × 4   | 21.28        | 21.25   |
/// | gpt-oss-20b (2880, 4 × 2880)  | 4096 × 1   | 100.40       | 100.38  |
/// | Qwen3-30B-A3B (2048, 8 × 768) | 4096 × 1   | 92.02        | 92.00   |
/// | Qwen3-235B-A22B (4096, 8 × 1536) | 4096 × 1 | 180.02      | 180.00  |
/// | GLM-4.5-Air (4096, 8 × 1408)  | 4096 × 1   | 174.02       | 174.00  |
///
/// The per-token constant (5·n_embd + 3·n_ff floats) was fitted to the two dense models' slopes
/// (29 982 and 37 437 bytes/token measured vs 29 952 and 37 376 predicted); the mask term matches
/// the measured 1024 bytes per cell exactly. Quantized caches add a little (q8_0: +0.03 MiB on
/// SmolLM2, +0.5 MiB on gemma-3), which the margin absorbs.
pub fn compute_graph_bytes(info: &ModelInfo, layout: &KvLayout) -> u64 {
    let ubatch = u64::from(layout.n_ubatch);
    let activations = (ubatch * 4).saturating_mul(activations_per_token(info));
    let logits = output_bytes(info, layout.n_stream);
    activations.max(logits).saturating_add(ubatch * 2 * mask_cells(info, layout))
}

/// The f32 values live per token at the feed-forward peak.
///
/// A dense block holds about `5·n_embd + 3·n_ff` (residual, normed input, gate, up, activation,
/// output, …). A mixture-of-experts block computes gate, up and activation for every expert a
/// token uses (`3 · n_expert_used · n_ff_expert`), then the experts' outputs, `n_embd` each. Those
/// reuse the memory the gate and up projections free as long as they are no wider
/// (`n_embd ≤ 2·n_ff_expert`, gpt-oss); otherwise (Qwen3-MoE, GLM-4.5: experts a third as wide as
/// the model) ggml-alloc places them beyond the peak. Measured by varying each width of
/// Qwen3-30B-A3B and gpt-oss-20b: 3.0 floats per expert-width unit, 5.0 per `n_embd` (plus
/// `n_expert_used` more when the outputs do not fit), none per expert count. A shared expert runs
/// after the routed ones and adds nothing (GLM-4.5-Air). The dense width still counts for models
/// with dense layers (GLM-4.5's first; it is unused, and smaller, in Qwen3-MoE).
fn activations_per_token(info: &ModelInfo) -> u64 {
    let n_embd = u64::from(info.n_embd);
    let dense_ff = if info.n_ff > 0 { u64::from(info.n_ff) } else { 4 * n_embd };
    let dense = 5 * n_embd + 3 * dense_ff;
    if info.n_expert == 0 || info.n_expert_used == 0 || info.n_ff_expert == 0 {
        return dense;
    }
    let (used, n_ff_expert) = (u64::from(info.n_expert_used), u64::from(info.n_ff_expert));
    let outputs = if n_embd > 2 * n_ff_expert { used * n_embd } else { 0 };
    dense.max((5 * n_embd).saturating_add((3 * used).saturating_mul(n_ff_expert)).saturating_add(outputs))
}

/// Cells of the f16 KQ masks: one mask per KV cache (full-attention and sliding-window), each as
/// wide as its cache's stream.
fn mask_cells(info: &ModelInfo, layout: &KvLayout) -> u64 {
    let has_kv = |swa: bool| {
        (0..info.n_layer as usize).any(|il| {
            info.swa_layers.get(il).copied().unwrap_or(false) == swa && info.n_head_kv.get(il).copied().unwrap_or(0) > 0
        })
    };
    let mut cells = 0;
    if has_kv(false) {
        cells += u64::from(layout.n_ctx_seq);
    }
    if has_kv(true) {
        cells += u64::from(layout.swa_cells);
    }
    cells
}

/// Plans `info` for `req` with the default [`Margin`].
pub fn plan(info: &ModelInfo, req: &PlanRequest) -> Plan {
    plan_with_margin(info, req, &Margin::default())
}

/// Plans `info` for `req`: clamps the context to the model's training context, sizes it, and if
/// it does not fit finds the largest context (a multiple of [`CTX_STEP`], at least [`MIN_CTX`])
/// that does.
pub fn plan_with_margin(info: &ModelInfo, req: &PlanRequest, margin: &Margin) -> Plan {
    let parallel = req.parallel.max(1);
    let mut ctx = if req.ctx == 0 { info.context_length } else { req.ctx };
    let mut ctx_clamped_from = None;
    if info.context_length > 0 && ctx > info.context_length {
        ctx_clamped_from = Some(ctx);
        ctx = info.context_length;
    }
    let ctx = ctx.max(1);
    let total_at = |c: u32| {
        let e = estimate(info, c, parallel, req.cache_type);
        e.subtotal().saturating_add(margin.of(e.subtotal()))
    };

    let e = estimate(info, ctx, parallel, req.cache_type);
    let total = e.subtotal().saturating_add(margin.of(e.subtotal()));
    let verdict = if total <= req.budget {
        Verdict::Fits
    } else {
        let floor = MIN_CTX.min(ctx);
        let at_floor = total_at(floor);
        if at_floor > req.budget {
            Verdict::DoesNotFit { short_by: at_floor - req.budget }
        } else {
            Verdict::FitsSmallerContext { max_ctx: largest_fitting_ctx(floor, ctx, |c| total_at(c) <= req.budget) }
        }
    };

    Plan {
        model: info.display_name().to_string(),
        ctx,
        parallel,
        ctx_clamped_from,
        cache_type: req.cache_type,
        weights: e.weights,
        kv_cache: e.kv_cache,
        compute: e.compute(),
        margin: total - e.subtotal(),
        total,
        budget: req.budget,
        verdict,
        split: None,
    }
}

/// The largest multiple of [`CTX_STEP`] from `floor` (which fits) up to below `ctx` (which does
/// not) for which `fits` holds, by binary search: the need grows with the context.
pub fn largest_fitting_ctx(floor: u32, ctx: u32, fits: impl Fn(u32) -> bool) -> u32 {
    // Invariant: `lo` steps fit, `hi` steps do not.
    let (mut lo, mut hi) = (floor / CTX_STEP, ctx.div_ceil(CTX_STEP));
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid * CTX_STEP) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo * CTX_STEP
}

/// A size for people: "1.25 GiB", "92.1 MiB", "12.0 KiB", "512 B".
pub fn format_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A llama-like model with easy numbers: 4 layers, 2 KV heads of 64, 1 GiB of weights.
    fn model() -> ModelInfo {
        ModelInfo {
            architecture: "llama".into(),
            name: Some("Synthetic".into()),
            n_layer: 4,
            n_embd: 512,
            n_vocab: 32000,
            context_length: 8192,
            n_head: vec![8; 4],
            n_head_kv: vec![2; 4],
            key_length: 64,
            value_length: 64,
            sliding_window: None,
            swa_layers: vec![false; 4],
            n_ff: 2048,
            n_expert: 0,
            n_expert_used: 0,
            n_ff_expert: 0,
            n_ff_shared: 0,
            tensor_bytes: 1 << 30,
            layer_tensor_bytes: 1 << 30,
            parameter_count: 1 << 31,
            file_type: Some("Q4_0".into()),
            chat_template: None,
            kind: crate::gguf::ModelKind::Generative,
            projector: None,
            draft: None,
        }
    }

    fn swa_model() -> ModelInfo {
        ModelInfo {
            sliding_window: Some(512),
            // Layers 0-2 windowed, 3 global.
            swa_layers: vec![true, true, true, false],
            ..model()
        }
    }

    #[test]
    fn a_vision_projector_is_planned_beside_its_model() {
        let alone = estimate(&model(), 2048, 1, CacheType::F16);
        let projector = crate::projector::ProjectorEstimate { weights: 800 * MIB, compute: 120 * MIB };
        let paired = estimate(&ModelInfo { projector: Some(projector), ..model() }, 2048, 1, CacheType::F16);
        assert_eq!(paired.weights - alone.weights, 800 * MIB);
        assert_eq!(paired.compute_graph - alone.compute_graph, 120 * MIB);
        assert_eq!(paired.kv_cache, alone.kv_cache);
    }

    #[test]
    fn a_draft_model_is_planned_beside_its_model_at_the_same_context() {
        let alone = estimate(&model(), 4096, 2, CacheType::Q8_0);
        let small = ModelInfo { n_layer: 2, n_head: vec![8; 2], n_head_kv: vec![8; 2], tensor_bytes: 100 * MIB, n_vocab: 32_000, ..model() };
        let draft = estimate(&small, 4096, 2, CacheType::Q8_0);
        let paired = estimate(&ModelInfo { draft: Some(Box::new(small)), ..model() }, 4096, 2, CacheType::Q8_0);
        assert_eq!(paired.weights, alone.weights + draft.weights);
        assert_eq!(paired.kv_cache, alone.kv_cache + draft.kv_cache);
        assert_eq!(paired.compute(), alone.compute() + draft.compute());
        assert_eq!(paired.layout, alone.layout);
    }

    #[test]
    fn cache_type_names_round_trip() {
        for t in CacheType::ALL {
            assert_eq!(t.as_str().parse::<CacheType>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{}\"", t.as_str()));
        }
        assert_eq!("Q8_0".parse::<CacheType>().unwrap(), CacheType::Q8_0);
        assert!("q3_k".parse::<CacheType>().unwrap_err().contains("expected one of f32, f16"));
        assert_eq!(CacheType::Q8_0.row_bytes(128), 4 * 34);
    }

    #[test]
    fn kv_cache_arithmetic() {
        // 4 layers × 4096 cells × 2 heads × (64 + 64) × 2 bytes = 8 MiB.
        let e = estimate(&model(), 4096, 1, CacheType::F16);
        assert_eq!(e.layout, KvLayout { n_ctx_seq: 4096, n_stream: 1, swa_cells: 4096, n_ubatch: 512 });
        assert_eq!(e.kv_cache, 4 * 4096 * 2 * 128 * 2);
        assert_eq!(e.kv_cache, 8 * MIB);
        // Two slots of 4096 are two streams of 4096: twice the cache.
        assert_eq!(estimate(&model(), 4096, 2, CacheType::F16).kv_cache, 16 * MIB);
        // q8_0: 34 bytes per 32 elements.
        assert_eq!(estimate(&model(), 4096, 1, CacheType::Q8_0).kv_cache, 4 * 4096 * (256 / 32 * 34));
        // Contexts are padded to 256 as llama.cpp does: 1000 → 1024, and 3000 × 3 → 3072 / 3 → 1024.
        assert_eq!(estimate(&model(), 1000, 1, CacheType::F16).layout.n_ctx_seq, 1024);
        assert_eq!(KvLayout::new(&model(), 1000, 3).n_ctx_seq, 1024);
    }

    #[test]
    fn sliding_window_layers_keep_window_plus_ubatch() {
        let e = estimate(&swa_model(), 4096, 2, CacheType::F16);
        // pad256(min(4096, 512 + 512)) = 1024 cells per stream on the 3 windowed layers.
        assert_eq!(e.layout.swa_cells, 1024);
        let per_cell = 2 * 128 * 2;
        assert_eq!(e.kv_cache, (3 * 1024 + 4096) * per_cell * 2);
        // A context smaller than the window: the windowed layers hold all of it.
        assert_eq!(KvLayout::new(&swa_model(), 512, 1).swa_cells, 512);
    }

    #[test]
    fn compute_and_output_arithmetic() {
        let e = estimate(&model(), 4096, 1, CacheType::F16);
        let activations = 512 * 4 * (5 * 512 + 3 * 2048);
        assert_eq!(e.compute_graph, activations + 512 * 2 * 4096);
        assert_eq!(e.output, 32000 * 4);
        let e = estimate(&swa_model(), 4096, 1, CacheType::F16);
        assert_eq!(e.compute_graph, activations + 512 * 2 * (4096 + 1024));
        // A tiny context reserves a smaller batch.
        assert_eq!(estimate(&model(), 256, 1, CacheType::F16).layout.n_ubatch, 256);
    }

    #[test]
    fn moe_compute_counts_expert_outputs_only_when_they_do_not_fit() {
        let moe = |n_embd: u32, n_ff_expert: u32| ModelInfo {
            n_embd,
            n_ff: 0,
            n_expert: 128,
            n_expert_used: 8,
            n_ff_expert,
            ..model()
        };
        let graph = |info: &ModelInfo| estimate(info, 4096, 1, CacheType::F16).compute_graph;
        let masks = 512 * 2 * 4096;
        // Qwen3-30B-A3B's widths: the 8 expert outputs (8 × 2048) come on top of gate, up and
        // activation (3 × 8 × 768). 92.02 MiB measured.
        assert_eq!(graph(&moe(2048, 768)), 512 * 4 * (5 * 2048 + 3 * 8 * 768 + 8 * 2048) + masks);
        // Experts half as wide as the model or wider: the outputs reuse gate's and up's memory.
        assert_eq!(graph(&moe(2048, 1024)), 512 * 4 * (5 * 2048 + 3 * 8 * 1024) + masks);
        // A wider dense layer (GLM-4.5's first) wins over narrow experts.
        let glm = ModelInfo { n_ff: 65536, ..moe(2048, 768) };
        assert_eq!(graph(&glm), 512 * 4 * (5 * 2048 + 3 * 65536) + masks);
    }

    #[test]
    fn margin_and_total() {
        let req = PlanRequest { ctx: 4096, parallel: 1, cache_type: CacheType::F16, budget: 4 << 30 };
        let p = plan(&model(), &req);
        let sub = p.weights + p.kv_cache + p.compute;
        assert_eq!(p.margin, (sub as f64 * 0.05).ceil() as u64 + 128 * MIB);
        assert_eq!(p.total, sub + p.margin);
        assert_eq!(p.verdict, Verdict::Fits);
        assert_eq!((p.model.as_str(), p.ctx, p.parallel, p.ctx_clamped_from), ("Synthetic", 4096, 1, None));
    }

    #[test]
    fn verdict_transitions() {
        let m = model();
        let need =
            |ctx| plan(&m, &PlanRequest { ctx, parallel: 1, cache_type: CacheType::F16, budget: u64::MAX }).total;
        let req = |budget| PlanRequest { ctx: 8192, parallel: 1, cache_type: CacheType::F16, budget };

        // Exactly enough fits.
        assert_eq!(plan(&m, &req(need(8192))).verdict, Verdict::Fits);
        // One byte short: the largest smaller step is 7936.
        assert_eq!(plan(&m, &req(need(8192) - 1)).verdict, Verdict::FitsSmallerContext { max_ctx: 7936 });
        // Budget between two steps picks the lower one.
        assert_eq!(plan(&m, &req(need(2048) + 1)).verdict, Verdict::FitsSmallerContext { max_ctx: 2048 });
        assert_eq!(plan(&m, &req(need(2048) - 1)).verdict, Verdict::FitsSmallerContext { max_ctx: 1792 });
        // The minimum context fits exactly.
        assert_eq!(plan(&m, &req(need(MIN_CTX))).verdict, Verdict::FitsSmallerContext { max_ctx: MIN_CTX });
        // Below the minimum: short by the difference at the minimum.
        assert_eq!(plan(&m, &req(need(MIN_CTX) - 100)).verdict, Verdict::DoesNotFit { short_by: 100 });
        assert_eq!(plan(&m, &req(0)).verdict, Verdict::DoesNotFit { short_by: need(MIN_CTX) });
        // A request already below the minimum is judged at its own size.
        let small = PlanRequest { ctx: 256, parallel: 1, cache_type: CacheType::F16, budget: need(256) - 7 };
        assert_eq!(plan(&m, &small).verdict, Verdict::DoesNotFit { short_by: 7 });
        // Monotone: the need grows with the context.
        assert!((1..=32).all(|k| need(k * 256) <= need((k + 1) * 256)));
    }

    #[test]
    fn ctx_is_clamped_to_training_context() {
        let req = PlanRequest { ctx: 100_000, parallel: 2, cache_type: CacheType::F16, budget: u64::MAX };
        let p = plan(&model(), &req);
        assert_eq!((p.ctx, p.ctx_clamped_from), (8192, Some(100_000)));
        let p = plan(&model(), &PlanRequest { ctx: 0, ..req });
        assert_eq!((p.ctx, p.ctx_clamped_from), (8192, None));
    }

    #[test]
    fn plan_json_shape() {
        let req = PlanRequest { ctx: 8192, parallel: 1, cache_type: CacheType::Q8_0, budget: 1 << 30 };
        let v = serde_json::to_value(plan(&model(), &req)).unwrap();
        assert_eq!(v["verdict"], "does_not_fit");
        assert!(v["short_by"].as_u64().unwrap() > 0);
        assert_eq!(v["cache_type"], "q8_0");
        assert!(v.get("ctx_clamped_from").is_none());
    }

    #[test]
    fn sizes_saturate_instead_of_wrapping() {
        // Widths a crafted header can claim overflowed the KV cache, logits and MoE sums
        // (crashers/planner-overflow.gguf); wrapped, a model that cannot fit could plan as fitting.
        let huge = ModelInfo {
            n_vocab: u32::MAX,
            context_length: u32::MAX,
            n_head_kv: vec![u32::MAX; 4],
            key_length: u32::MAX,
            value_length: u32::MAX,
            n_expert: u32::MAX,
            n_expert_used: u32::MAX,
            n_ff_expert: u32::MAX,
            tensor_bytes: u64::MAX,
            projector: Some(crate::projector::ProjectorEstimate { weights: u64::MAX, compute: u64::MAX }),
            ..model()
        };
        let req = PlanRequest { ctx: 0, parallel: u32::MAX, cache_type: CacheType::F32, budget: u64::MAX - 1 };
        let p = plan(&huge, &req);
        assert_eq!((p.kv_cache, p.total), (u64::MAX, u64::MAX));
        assert_eq!(p.verdict, Verdict::DoesNotFit { short_by: 1 });
        let peers = [crate::testing::member("B", u64::MAX, true)];
        let head = crate::testing::member("A", u64::MAX, false);
        assert!(crate::pool::plan_split_largest(&huge, &req, &head, &peers, &Margin::default()).is_none());
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
        assert_eq!(format_bytes(96_573_440), "92.1 MiB");
        assert_eq!(format_bytes(5 << 30), "5.00 GiB");
    }
}
