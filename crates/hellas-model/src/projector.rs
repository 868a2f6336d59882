//! The memory of a vision projector (`llama-server --mmproj FILE`): its weights plus the compute
//! buffer clip.cpp reserves for the largest image it warms up with.
//!
//! Both as llama-server's start-up reports them (`[mtmd] estimated worst-case memory usage of
//! mmproj`, clip's `load_hparams: model size` and `reserve_compute_meta: compute buffer size`);
//! `tests/catalog_shapes.rs` checks them for each projector in the catalog. The compute buffer is
//! fixed per projector, whatever the context: clip reserves it once, for one image.

use serde::Serialize;

use crate::gguf::{GgufError, GgufFile};

/// What llama-server allocates for a vision projector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProjectorEstimate {
    /// Every tensor of the mmproj file (clip loads them all).
    pub weights: u64,
    /// clip's compute buffer for its warm-up image.
    pub compute: u64,
}

impl ProjectorEstimate {
    pub fn total(&self) -> u64 {
        self.weights.saturating_add(self.compute)
    }
}

/// Plans the projector in an mmproj GGUF (`general.architecture` "clip").
pub fn estimate(mmproj: &GgufFile) -> Result<ProjectorEstimate, GgufError> {
    let key = |k: &str| mmproj.get_u32(k)?.ok_or_else(|| GgufError::MissingKey(k.to_string()));
    let vision = Vision {
        projector: mmproj.get_str("clip.projector_type").unwrap_or("").to_string(),
        image_size: u64::from(key("clip.vision.image_size")?),
        patch_size: u64::from(key("clip.vision.patch_size")?.max(1)),
        n_embd: u64::from(key("clip.vision.embedding_length")?),
        n_ff: u64::from(key("clip.vision.feed_forward_length")?),
        merge: u64::from(mmproj.get_u32("clip.vision.spatial_merge_size")?.unwrap_or(2).max(1)),
    };
    let weights = mmproj.tensors.iter().map(|t| t.n_bytes).fold(0u64, u64::saturating_add);
    Ok(ProjectorEstimate { weights, compute: vision.compute_bytes() })
}

/// The vision encoder's shape, from the `clip.vision.*` keys.
struct Vision {
    projector: String,
    image_size: u64,
    patch_size: u64,
    n_embd: u64,
    n_ff: u64,
    /// Patches merged into one token per side (Qwen-VL's patch merger).
    merge: u64,
}

impl Vision {
    /// clip's compute buffer with flash attention on (llama-server passes `-fa` through): the
    /// f32 activations live at the peak of an encoder layer, for every patch of the warm-up image,
    /// plus what the projector type adds. Fitted to the buffers llama-server b11669 reserves,
    /// varying each width of the catalog's two projectors (MiB):
    ///
    /// | projector | patches | n_embd, n_ff | llama-server | formula |
    /// |---|---|---|---|---|
    /// | gemma3 (SigLIP, 896 px) | 4096 | 1152, 4304 | 121.25 | 121.25 |
    /// | gemma3 | 4096 | 1280, 4304 | 127.25 | 127.25 |
    /// | gemma3 | 4096 | 1152, 4560 | 125.25 | 125.25 |
    /// | qwen2.5vl_merger (1288 px) | 8464 | 1280, 3420 | 569.70 | 569.68 |
    /// | qwen2.5vl_merger | 8464 | 1536, 3420 | 586.23 | 586.21 |
    /// | qwen2.5vl_merger | 8464 | 1280, 3676 | 594.50 | 594.47 |
    ///
    /// The layer count does not matter (ggml-alloc reuses one layer's memory for the next).
    /// The widths come from an untrusted file, so the arithmetic saturates (see `plan::estimate`).
    fn compute_bytes(&self) -> u64 {
        let mul = u64::saturating_mul;
        match self.projector.as_str() {
            // Gemma 3: SigLIP at its fixed image size; the peak is the residual, the normed input,
            // the attention output and the MLP's hidden layer.
            "gemma3" => mul(mul(self.fixed_patches(), 4), 3 * self.n_embd + self.n_ff),
            // Qwen2.5-VL reserves for an image of 46 × 46 merged tokens (clip's
            // `set_warmup_n_tokens(46 * 46)`, 1288 px), whatever image_size says. On top of the
            // gated MLP's activations: the f16 window-attention mask over all patches, the f32
            // image and the four M-RoPE positions per patch.
            "qwen2.5vl_merger" => {
                let side = mul(46 * self.merge, self.patch_size);
                let patches = (side / self.patch_size).saturating_pow(2);
                [
                    mul(mul(patches, patches), 2),
                    mul(mul(patches, 4), 2 * self.n_embd + 3 * self.n_ff),
                    mul(mul(side, side), 3 * 4),
                    mul(patches, 4 * 4),
                ]
                .into_iter()
                .fold(0, u64::saturating_add)
            }
            // Not measured: the gated-MLP peak at the image size, which covers both above.
            _ => mul(mul(self.fixed_patches(), 4), 3 * self.n_embd + 3 * self.n_ff),
        }
    }

    fn fixed_patches(&self) -> u64 {
        (self.image_size / self.patch_size).saturating_pow(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::testing::GgufBuilder;

    fn mmproj(projector: &str, image_size: u32, n_embd: u32, n_ff: u32) -> GgufFile {
        let bytes = GgufBuilder::new()
            .str("general.architecture", "clip")
            .str("clip.projector_type", projector)
            .u32("clip.vision.image_size", image_size)
            .u32("clip.vision.patch_size", 14)
            .u32("clip.vision.embedding_length", n_embd)
            .u32("clip.vision.feed_forward_length", n_ff)
            .tensor("v.patch_embd.weight", &[14, 14, 3, u64::from(n_embd)], 1, 14 * 14 * 3 * u64::from(n_embd) * 2)
            .build();
        let len = bytes.len() as u64;
        GgufFile::parse(bytes.as_slice(), len).unwrap()
    }

    #[test]
    fn gemma3_projector_matches_llama_server() {
        let p = estimate(&mmproj("gemma3", 896, 1152, 4304)).unwrap();
        assert_eq!(p.compute, 4096 * 4 * (3 * 1152 + 4304));
        // 121.25 MiB, as llama-server reserves it.
        assert_eq!(p.compute as f64 / (1 << 20) as f64, 121.25);
        assert_eq!(p.weights, 14 * 14 * 3 * 1152 * 2);
        assert_eq!(p.total(), p.weights + p.compute);
    }

    #[test]
    fn qwen25vl_projector_ignores_image_size() {
        let a = estimate(&mmproj("qwen2.5vl_merger", 560, 1280, 3420)).unwrap();
        let b = estimate(&mmproj("qwen2.5vl_merger", 1120, 1280, 3420)).unwrap();
        assert_eq!(a.compute, b.compute);
        // 569.70 MiB measured.
        assert!((a.compute as f64 / (1 << 20) as f64 - 569.70).abs() < 0.05);
    }

    #[test]
    fn compute_saturates_on_absurd_sizes() {
        // (image_size / patch_size)² overflowed (crashers/projector-overflow.gguf).
        for projector in ["gemma3", "qwen2.5vl_merger", "other"] {
            let bytes = GgufBuilder::new()
                .str("clip.projector_type", projector)
                .u32("clip.vision.image_size", u32::MAX)
                .u32("clip.vision.patch_size", 1)
                .u32("clip.vision.embedding_length", u32::MAX)
                .u32("clip.vision.feed_forward_length", u32::MAX)
                .u32("clip.vision.spatial_merge_size", u32::MAX)
                .build();
            let p = estimate(&GgufFile::parse(bytes.as_slice(), bytes.len() as u64).unwrap()).unwrap();
            assert_eq!((p.compute, p.total()), (u64::MAX, u64::MAX), "{projector}");
        }
    }

    #[test]
    fn missing_vision_keys_are_an_error() {
        let bytes = GgufBuilder::new().str("general.architecture", "clip").build();
        let len = bytes.len() as u64;
        let err = estimate(&GgufFile::parse(bytes.as_slice(), len).unwrap()).unwrap_err();
        assert!(err.to_string().contains("clip.vision.image_size"), "{err}");
    }
}
