//! How llama-server is asked to run on each backend: flash attention, batch sizes and how the
//! weights are loaded, chosen from what others measured on Strix Halo. Each choice names its
//! source; docs/hardware.md ("Engine settings") has the table with the numbers.
//!
//! Where the measurements do not clearly favour a value, llama.cpp's default stays, passed
//! explicitly so that a new llama.cpp with another default cannot change what hellasd runs (the
//! memory plan depends on the micro-batch and on flash attention).

use hellas_model::plan::N_UBATCH;

use crate::config::{EngineConfig, LoadMode};

/// The llama.cpp backend an engine runs on. The image's llama-server has two: Vulkan (Mesa
/// RADV) on the box's AMD GPU, and the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Vulkan,
    Cpu,
}

impl Backend {
    /// Vulkan when the engines belong on the box's GPU (`engine.expect_gpu`, by default when it
    /// has an AMD GPU and offloading is not turned off), else the CPU.
    pub fn of(engines_on_gpu: bool) -> Backend {
        if engines_on_gpu {
            Backend::Vulkan
        } else {
            Backend::Cpu
        }
    }

    pub fn settings(self) -> EngineSettings {
        match self {
            Backend::Vulkan => VULKAN,
            Backend::Cpu => CPU,
        }
    }
}

/// llama-server's arguments for one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// `--flash-attn on|off`.
    pub flash_attn: bool,
    /// `--batch-size`: the logical batch, the most tokens handed to one decode call.
    pub batch: u32,
    /// `--ubatch-size`: the physical batch the compute buffers are sized for.
    pub ubatch: u32,
    /// `--load-mode`.
    pub load_mode: LoadMode,
}

/// Vulkan (Mesa RADV) on the Radeon 8060S (gfx1151).
const VULKAN: EngineSettings = EngineSettings {
    // On. kyuz0's toolbox benchmarks (17 models, RADV, -fa 1 vs -fa 0): pp512 +4.8% median
    // (-0.5 to +20.1%), tg128 -0.1% (-2.1 to +2.0%),
    // https://github.com/kyuz0/amd-strix-halo-toolboxes/blob/ba88675b9c0dc9ef688532db98974fb8fe63935d/docs/benchmarks.md
    // The gain grows with the context: lhl's GLM-4.5-Air Q4_K_XL sweep on RADV, 4096-token
    // prompt 117.9 vs 103.0 t/s, 4096 generated tokens 20.7 vs 13.6 t/s,
    // https://github.com/lhl/strix-halo-testing/blob/main/llm-bench/GLM-4.5-Air-UD-Q4_K_XL/README.md
    // Without it the KQ matrix is materialised, which the memory plan does not count.
    flash_attn: true,
    // llama.cpp's default, 2048. The only Strix Halo sweep found moved -b the other way and
    // lost a little: -b 256 gave pp512 55.9 vs 57.4 t/s on Vulkan (lhl, Llama 4 Scout),
    // https://github.com/lhl/strix-halo-testing/blob/main/llm-bench/Llama-4-Scout-17B-16E-Instruct-UD-Q4_K_XL-00001-of-00002/summary.md
    batch: 2048,
    // llama.cpp's default, 512, which the planner sizes compute buffers for. Sweeps on RADV
    // disagree by model: Qwen3-Next 80B pp4096 was 390.6 / 431.5 / 334.7 t/s at -ub 256 / 512 /
    // 1024 (https://github.com/ggml-org/llama.cpp/issues/18725, lemmi, numbers in
    // https://github.com/ggml-org/llama.cpp/pull/18683); after the SSM_CONV fix the same family
    // gained 3% at 1024 and lost 8% at 2048 on a Radeon 890M
    // (https://github.com/ggml-org/llama.cpp/pull/20379); Qwen3-30B-A3B was faster below 512
    // on an 8060S (https://github.com/ggml-org/llama.cpp/issues/13217). Larger -ub also grows
    // the compute buffers linearly (4x at 2048).
    ubatch: N_UBATCH,
    // Read into the engine's own memory (`none`). With mmap, a model offloaded past ~64 GB on
    // RADV was "impossibly slow" to load and run (kyuz0,
    // https://github.com/ggml-org/llama.cpp/issues/14854); read in, Qwen3-235B-A22B Q3_K_XL
    // (97 GiB) loaded in 40.7 s on RADV,
    // https://github.com/kyuz0/amd-strix-halo-toolboxes/blob/e7e27e6cf39ce809146a15743e6c87e92789c21b/benchmark/loadtime_results/Qwen3-235B-A22B-Instruct-2507-UD-Q3_K_XL-00001-of-00003__vulkan_radv.log
    // It also keeps what the engine holds equal to what was planned.
    load_mode: LoadMode::Read,
};

/// The CPU backend: boxes without an AMD GPU, `engine.gpu_layers = 0`, and the tests.
const CPU: EngineSettings = EngineSettings {
    // On. No Strix Halo CPU measurement was found either way; on, the KQ matrix is never
    // materialised and the planner's compute formula (checked against llama-server's CPU
    // buffers in crates/hellas-model/tests/planner_accuracy.rs) holds.
    flash_attn: true,
    // llama.cpp's defaults; nothing published for Strix Halo's CPU.
    batch: 2048,
    ubatch: N_UBATCH,
    // Read in, as on Vulkan: the planned budget is what the engine holds, and a model file on
    // slow storage is not paged in mid-request. (Nothing published measures this box's CPU.)
    load_mode: LoadMode::Read,
};

impl EngineSettings {
    /// These settings with the configuration's overrides (`engine.load_mode`,
    /// `engine.batch_size`). Flash attention and the micro-batch have none: the memory plan is
    /// computed for them.
    pub fn configured(self, config: &EngineConfig) -> EngineSettings {
        EngineSettings {
            load_mode: config.load_mode.unwrap_or(self.load_mode),
            batch: config.batch_size.map_or(self.batch, |b| b.get()),
            ..self
        }
    }

    pub fn args(&self) -> Vec<String> {
        let flash_attn = if self.flash_attn { "on" } else { "off" };
        [
            "--flash-attn",
            flash_attn,
            "--batch-size",
            &self.batch.to_string(),
            "--ubatch-size",
            &self.ubatch.to_string(),
            "--load-mode",
            self.load_mode.as_str(),
        ]
        .map(String::from)
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::Arc;

    use hellas_model::gguf::{ModelInfo, ModelKind};
    use hellas_model::plan::{self as planner, CacheType, PlanRequest};

    use super::*;
    use crate::engine::Supervisor;
    use crate::library::{ModelEntry, ModelLibrary};
    use crate::metrics::Metrics;

    /// The arguments hellasd starts an engine with, on a box whose engines are on its GPU or not.
    fn engine_args(config: EngineConfig, on_gpu: bool) -> Vec<String> {
        model_engine_args(config, on_gpu, None)
    }

    /// The same for a model in the library made of `gguf`; with none, for a model whose file
    /// cannot be read.
    fn model_engine_args(config: EngineConfig, on_gpu: bool, gguf: Option<Vec<u8>>) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let library = Arc::new(ModelLibrary::open(dir.path().join("library")));
        let entry = match gguf {
            Some(bytes) => {
                let file = dir.path().join("tiny.gguf");
                std::fs::write(&file, bytes).unwrap();
                library.add_file(&file, "tiny").unwrap()
            }
            None => ModelEntry {
                name: "tiny".into(),
                sha256: "0".repeat(64),
                size: 0,
                added: 0,
                parts: Vec::new(),
                projector: None,
                source: None,
                draft: None,
            },
        };
        let supervisor = Supervisor::new(config, Default::default(), 1 << 30, on_gpu, library, Arc::new(Metrics::new()));
        let request = PlanRequest { ctx: 2048, parallel: 1, cache_type: CacheType::F16, budget: 1 << 30 };
        let command = supervisor.command(&entry, 8080, &planner::plan(&tiny_model(), &request));
        command.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    /// The value after `flag`, which must appear exactly once.
    fn value<'a>(args: &'a [String], flag: &str) -> &'a str {
        let at: Vec<usize> = args.iter().enumerate().filter(|(_, a)| *a == flag).map(|(i, _)| i).collect();
        assert_eq!(at.len(), 1, "{flag} in {args:?}");
        &args[at[0] + 1]
    }

    fn tiny_model() -> ModelInfo {
        ModelInfo {
            architecture: "llama".into(),
            name: None,
            n_layer: 1,
            n_embd: 64,
            n_vocab: 256,
            context_length: 2048,
            n_head: vec![1],
            n_head_kv: vec![1],
            key_length: 64,
            value_length: 64,
            sliding_window: None,
            swa_layers: vec![false],
            n_ff: 128,
            n_expert: 0,
            n_expert_used: 0,
            n_ff_expert: 0,
            n_ff_shared: 0,
            tensor_bytes: 1 << 20,
            layer_tensor_bytes: 1 << 20,
            parameter_count: 1 << 19,
            file_type: None,
            chat_template: None,
            kind: ModelKind::Generative,
            projector: None,
            draft: None,
        }
    }

    #[test]
    fn engines_are_started_with_their_backends_settings() {
        for (on_gpu, backend) in [(true, Backend::Vulkan), (false, Backend::Cpu)] {
            let args = engine_args(EngineConfig::default(), on_gpu);
            let table = backend.settings();
            assert_eq!(value(&args, "--flash-attn"), if table.flash_attn { "on" } else { "off" });
            assert_eq!(value(&args, "--batch-size"), table.batch.to_string());
            assert_eq!(value(&args, "--ubatch-size"), table.ubatch.to_string());
            assert_eq!(value(&args, "--load-mode"), table.load_mode.as_str());
        }
    }

    #[test]
    fn an_engine_is_started_for_what_its_model_is_for() {
        // llama-server answers /v1/embeddings only with --embeddings and /v1/rerank only with
        // --reranking; the model's pooling type says which it is.
        let model = |pooling: Option<u32>| {
            let mut builder = hellas_model::testing::GgufBuilder::new()
                .str("general.architecture", "bert")
                .u32("bert.block_count", 1)
                .u32("bert.context_length", 512)
                .u32("bert.embedding_length", 64)
                .u32("bert.attention.head_count", 4)
                .u32("bert.feed_forward_length", 128)
                .tensor("token_embd.weight", &[64, 256], 0, 64 * 256 * 4);
            if let Some(pooling) = pooling {
                builder = builder.u32("bert.pooling_type", pooling);
            }
            builder.build()
        };
        // Speculative decoding, when on, only for a model that generates: the others draft nothing.
        let drafting = EngineConfig { speculative: crate::config::Speculative::Ngram, ..EngineConfig::default() };
        for (pooling, flag) in [(None, None), (Some(0), None), (Some(1), Some("--embeddings")), (Some(2), Some("--embeddings")), (Some(4), Some("--reranking"))] {
            let args = model_engine_args(drafting.clone(), false, Some(model(pooling)));
            for kind_flag in ["--embeddings", "--reranking"] {
                assert_eq!(args.iter().any(|a| a == kind_flag), flag == Some(kind_flag), "pooling {pooling:?}: {args:?}");
            }
            assert_eq!(args.iter().any(|a| a == "--spec-type"), flag.is_none(), "pooling {pooling:?}: {args:?}");
        }
    }

    #[test]
    fn the_configuration_overrides_load_mode_and_batch() {
        let config = EngineConfig { load_mode: Some(LoadMode::Mmap), batch_size: NonZeroU32::new(1024), ..EngineConfig::default() };
        for on_gpu in [true, false] {
            let args = engine_args(config.clone(), on_gpu);
            assert_eq!(value(&args, "--load-mode"), "mmap");
            assert_eq!(value(&args, "--batch-size"), "1024");
            assert_eq!(value(&args, "--ubatch-size"), N_UBATCH.to_string());
        }
    }

    #[test]
    fn the_plan_is_made_for_every_backends_micro_batch_and_flash_attention() {
        // hellas_model::plan sizes compute buffers for -ub N_UBATCH with flash attention on;
        // a backend that wants otherwise needs the planner to follow first.
        for backend in [Backend::Vulkan, Backend::Cpu] {
            let settings = backend.settings();
            assert_eq!((settings.ubatch, settings.flash_attn), (N_UBATCH, true), "{backend:?}");
            assert!(settings.batch >= settings.ubatch, "{backend:?}: -b below -ub lowers -ub");
        }
    }
}
