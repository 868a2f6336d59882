//! The model facts ([`ModelInfo`]) that serving and memory planning need, read from the metadata.

use super::*;

impl GgufFile {
    /// The facts about the model that serving and memory planning need.
    pub fn model_info(&self) -> Result<ModelInfo> {
        let architecture = self
            .get_str("general.architecture")
            .ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?
            .to_string();
        let arch = architecture.as_str();
        let key = |suffix: &str| format!("{arch}.{suffix}");

        let n_layer = self.require_u32(&key("block_count"))?;
        if n_layer > MAX_LAYERS {
            return Err(GgufError::BadValue {
                key: key("block_count"),
                reason: format!("{n_layer} layers is more than the {MAX_LAYERS} this reader accepts"),
            });
        }
        let n_embd = self.require_u32(&key("embedding_length"))?;
        let context_length = self.require_u32(&key("context_length"))?;

        let n_vocab = match self.get_u32(&key("vocab_size"))? {
            Some(n) => n,
            None => match self.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
                Some(tokens) => u32::try_from(tokens.len).unwrap_or(u32::MAX),
                None => self
                    .tensors
                    .iter()
                    .find(|t| t.name == "token_embd.weight")
                    .and_then(|t| t.dims.get(1))
                    .and_then(|&d| u32::try_from(d).ok())
                    .ok_or_else(|| GgufError::MissingKey("tokenizer.ggml.tokens".into()))?,
            },
        };

        // Attention-free models (Mamba, RWKV) have no head count; llama.cpp defaults it to 0.
        let n_head =
            self.per_layer_u32(&key("attention.head_count"), n_layer)?.unwrap_or_else(|| vec![0; n_layer as usize]);
        let mut n_head_kv =
            self.per_layer_u32(&key("attention.head_count_kv"), n_layer)?.unwrap_or_else(|| n_head.clone());
        let head0 = n_head.first().copied().unwrap_or(0);
        let default_head_dim = n_embd.checked_div(head0).unwrap_or(0);
        let mut key_length = self.get_u32(&key("attention.key_length"))?.unwrap_or(default_head_dim);
        let mut value_length = self.get_u32(&key("attention.value_length"))?.unwrap_or(default_head_dim);
        // Multi-head latent attention (DeepSeek2-style, MLA-converted GGUFs): the cache holds one
        // compressed "head" of key_length (kv_lora_rank + rope dims) per token and no V at all
        // (llama.cpp's KV layout gives MLA layers n_embd_v_gqa = 0).
        let is_mla = self.get(&key("attention.key_length_mla")).is_some()
            && self.get(&key("attention.value_length_mla")).is_some();
        if is_mla {
            n_head_kv = vec![1; n_layer as usize];
            value_length = 0;
            if key_length == 0 {
                key_length = self
                    .get_u32(&key("attention.kv_lora_rank"))?
                    .unwrap_or(0)
                    .saturating_add(self.get_u32(&key("rope.dimension_count"))?.unwrap_or(0));
            }
        }

        let (sliding_window, swa_layers) = self.sliding_window(arch, n_layer)?;

        let n_ff =
            self.per_layer_u32(&key("feed_forward_length"), n_layer)?.and_then(|v| v.into_iter().max()).unwrap_or(0);
        let n_expert = self.get_u32(&key("expert_count"))?.unwrap_or(0);
        let n_expert_used = self.get_u32(&key("expert_used_count"))?.unwrap_or(0);
        let n_ff_expert = self.get_u32(&key("expert_feed_forward_length"))?.unwrap_or(0);
        let n_ff_shared = self.get_u32(&key("expert_shared_feed_forward_length"))?.unwrap_or(0);

        // Layers from `first_unloaded` on are in the file but llama.cpp never loads them: no
        // weights, no KV cache.
        let first_unloaded = n_layer - self.unloaded_layers(arch, n_layer)?;
        for kv in n_head_kv.iter_mut().skip(first_unloaded as usize) {
            *kv = 0;
        }
        let loaded = self.tensors.iter().filter(|t| layer_of(&t.name).is_none_or(|il| il < first_unloaded));
        let tensor_bytes = loaded.clone().map(|t| t.n_bytes).fold(0u64, u64::saturating_add);
        let layer_tensor_bytes =
            loaded.filter(|t| layer_of(&t.name).is_some()).map(|t| t.n_bytes).fold(0u64, u64::saturating_add);
        let parameter_count = self.tensors.iter().map(TensorInfo::n_elements).fold(0u64, u64::saturating_add);
        let file_type = self
            .get("general.file_type")
            .and_then(MetaValue::as_u32)
            .map(|ft| file_type_name(ft).map_or_else(|| format!("file type {ft}"), str::to_string));

        Ok(ModelInfo {
            architecture: architecture.clone(),
            name: self.get_str("general.name").map(str::to_string),
            n_layer,
            n_embd,
            n_vocab,
            context_length,
            n_head,
            n_head_kv,
            key_length,
            value_length,
            sliding_window,
            swa_layers,
            n_ff,
            n_expert,
            n_expert_used,
            n_ff_expert,
            n_ff_shared,
            tensor_bytes,
            layer_tensor_bytes,
            parameter_count,
            file_type,
            chat_template: self.get_str("tokenizer.chat_template").map(str::to_string),
            kind: ModelKind::of_pooling(self.get_u32(&key("pooling_type"))?),
            projector: None,
            draft: None,
        })
    }

    /// How many of the last layers llama.cpp skips. GLM-4.5's converter appends its
    /// multi-token-prediction ("NextN") blocks to the model's (`nextn_predict_layers`); llama.cpp
    /// creates their tensors with `TENSOR_SKIP`, so they are never allocated, and leaves them out
    /// of the KV cache.
    fn unloaded_layers(&self, arch: &str, n_layer: u32) -> Result<u32> {
        let nextn = match arch {
            "glm4moe" => self.get_u32(&format!("{arch}.nextn_predict_layers"))?.unwrap_or(0),
            _ => 0,
        };
        Ok(nextn.min(n_layer))
    }

    /// The sliding window and which layers use it, following llama.cpp's per-architecture
    /// hparams loading (`hparams.set_swa_pattern(n)`: layer `il` is windowed when
    /// `il % n < n - 1`, i.e. every n-th layer is global; gemma3 uses n = 6).
    fn sliding_window(&self, arch: &str, n_layer: u32) -> Result<(Option<u32>, Vec<bool>)> {
        let none = (None, vec![false; n_layer as usize]);
        let window = match self.get_u32(&format!("{arch}.attention.sliding_window"))? {
            Some(0) => return Ok(none),
            Some(w) => w,
            // llama4 has no key for it: chunked attention over 8192 tokens on 3 of 4 layers.
            None if arch == "llama4" => 8192,
            None => return Ok(none),
        };
        let pattern_key = format!("{arch}.attention.sliding_window_pattern");
        let period = match self.get(&pattern_key) {
            Some(MetaValue::Array(arr)) => {
                let flags = arr
                    .values
                    .as_ref()
                    .filter(|v| v.len() as u64 == u64::from(n_layer))
                    .and_then(|v| v.iter().map(MetaValue::as_bool).collect::<Option<Vec<bool>>>())
                    .ok_or_else(|| GgufError::BadValue {
                        key: pattern_key.clone(),
                        reason: format!("should be {n_layer} booleans, one per layer"),
                    })?;
                return Ok((Some(window), flags));
            }
            Some(_) => self.get_u32(&pattern_key)?,
            None => match arch {
                "gemma2" | "gpt-oss" => Some(2),
                "gemma3" | "gemma-embedding" => Some(6),
                "gemma3n" => Some(5),
                "cohere2" | "exaone4" | "llama4" => Some(4),
                _ => None,
            },
        };
        Ok(match period {
            Some(n) => (Some(window), (0..n_layer).map(|il| n == 0 || il % n < n - 1).collect()),
            // A window we cannot place: plan every layer as global, which over- rather than
            // under-estimates the KV cache.
            None => (Some(window), vec![false; n_layer as usize]),
        })
    }
}

/// The layer a tensor belongs to: N for `blk.N.*`.
fn layer_of(tensor: &str) -> Option<u32> {
    tensor.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The name llama.cpp gives a `general.file_type` (`enum llama_ftype`).
pub fn file_type_name(ftype: u32) -> Option<&'static str> {
    // Bit 10 (LLAMA_FTYPE_GUESSED) marks a type inferred by an old converter.
    Some(match ftype & !1024 {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        39 => "NVFP4",
        _ => return None,
    })
}

/// What the planner and the API need to know about a model.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelInfo {
    pub architecture: String,
    pub name: Option<String>,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_vocab: u32,
    /// Training context (`{arch}.context_length`).
    pub context_length: u32,
    /// Attention heads per layer.
    pub n_head: Vec<u32>,
    /// KV heads per layer, as llama.cpp caches them (1 for MLA models; 0 for layers without
    /// attention or that llama.cpp skips).
    pub n_head_kv: Vec<u32>,
    /// Per-head K and V widths, as llama.cpp caches them (n_embd / n_head when absent; for MLA,
    /// key_length is the compressed width and value_length 0 because V is not cached).
    pub key_length: u32,
    pub value_length: u32,
    pub sliding_window: Option<u32>,
    /// Per layer: does it attend only within the sliding window?
    pub swa_layers: Vec<bool>,
    /// Widest dense feed-forward layer (0 when absent).
    pub n_ff: u32,
    pub n_expert: u32,
    pub n_expert_used: u32,
    /// Feed-forward width of one routed expert (0 for dense models).
    pub n_ff_expert: u32,
    /// Feed-forward width of the shared expert, where the model has one.
    pub n_ff_shared: u32,
    /// Sum of the tensor data llama.cpp loads: every tensor but those of layers it skips (GLM-4.5's
    /// NextN block).
    pub tensor_bytes: u64,
    /// The part of it in the repeating layers (`blk.N.*`), which a split spreads over boxes;
    /// the rest (token embeddings, output) stays with the box that runs llama-server.
    pub layer_tensor_bytes: u64,
    pub parameter_count: u64,
    /// e.g. "Q4_K_M", from `general.file_type`.
    pub file_type: Option<String>,
    pub chat_template: Option<String>,
    /// What it is for: generating text, embeddings or reranking (`{arch}.pooling_type`).
    pub kind: ModelKind,
    /// The vision projector llama-server loads beside the model (`--mmproj`): not in the model's
    /// file, so set by whoever pairs the two; the plan counts it.
    pub projector: Option<crate::projector::ProjectorEstimate>,
    /// The draft model llama-server loads beside it for speculative decoding (`--model-draft`):
    /// not in the model's file either, so set by whoever pairs the two; the plan counts its
    /// weights, its KV cache (the same context and slots as the model's) and its buffers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<Box<ModelInfo>>,
}

/// What a model is for, which decides how llama-server is started for it and which routes it
/// answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// It generates text: chat, completions.
    #[default]
    Generative,
    /// It pools its output into one vector per input (`--embeddings`, `/v1/embeddings`).
    Embedding,
    /// A cross-encoder: it scores a query against each document through a classification head
    /// (`--reranking`, `/v1/rerank`).
    Reranker,
}

impl ModelKind {
    /// By llama.cpp's `enum llama_pooling_type`: NONE (0) or none given generates; mean (1), CLS
    /// (2) and last (3) pool into an embedding; RANK (4) pools the first token into the
    /// classification head's score.
    pub fn of_pooling(pooling_type: Option<u32>) -> ModelKind {
        match pooling_type {
            None | Some(0) => ModelKind::Generative,
            Some(4) => ModelKind::Reranker,
            Some(_) => ModelKind::Embedding,
        }
    }
}

impl ModelInfo {
    /// A short label: the model's name, else its architecture.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.architecture)
    }
}
