use super::testing::GgufBuilder;
use super::*;
use rand::{Rng, SeedableRng};

fn small_model() -> GgufBuilder {
    GgufBuilder::new()
        .str("general.architecture", "llama")
        .str("general.name", "Tiny")
        .u32("general.file_type", 15)
        .u32("llama.block_count", 2)
        .u32("llama.context_length", 2048)
        .u32("llama.embedding_length", 64)
        .u32("llama.feed_forward_length", 128)
        .u32("llama.attention.head_count", 4)
        .u32_array("llama.attention.head_count_kv", &[2, 1])
        .f32("llama.rope.freq_base", 10000.0)
        .bool("tokenizer.ggml.add_bos_token", true)
        .str_array("tokenizer.ggml.tokens", &["<s>", "</s>", "a", "b", "c"])
        .nested_array("test.nested", &[&[1, 2], &[3]])
        .str("tokenizer.chat_template", "{{ messages }}")
        .tensor("token_embd.weight", &[64, 5], 0, 64 * 5 * 4)
        .tensor("blk.0.attn_q.weight", &[64, 64], 2, 64 * 64 / 32 * 18)
        .tensor("blk.0.ffn_up.weight", &[256, 2], 12, 2 * 144)
}

#[test]
fn type_table_is_complete_and_consistent() {
    for id in 0..64 {
        if let Some(t) = GgmlType::from_id(id) {
            assert_eq!(t.id(), id);
            assert!(t.block_size() > 0 && t.type_size() > 0);
        }
    }
    assert_eq!((GgmlType::Q4K.block_size(), GgmlType::Q4K.type_size()), (256, 144));
    assert_eq!(GgmlType::from_id(39), Some(GgmlType::Mxfp4));
    assert_eq!(GgmlType::from_id(4), None);
    assert_eq!(GgmlType::from_id(99), None);
}

#[test]
fn parses_synthetic_file() {
    let bytes = small_model().build();
    let f = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.tensors.len(), 3);
    assert_eq!(f.tensors[1].ggml_type, GgmlType::Q4_0);
    assert_eq!(f.tensors[1].n_bytes, 64 * 64 / 32 * 18);
    assert_eq!(f.tensors[2].n_bytes, 288);
    assert_eq!(f.data_offset % 32, 0);
    let nested = f.get("test.nested").unwrap().as_array().unwrap();
    assert_eq!(nested.len, 2);
    assert_eq!(nested.values.as_ref().unwrap()[1].as_array().unwrap().values, Some(vec![MetaValue::I32(3)]));

    let info = f.model_info().unwrap();
    assert_eq!(info.architecture, "llama");
    assert_eq!(info.name.as_deref(), Some("Tiny"));
    assert_eq!(info.n_vocab, 5);
    assert_eq!(info.n_head, vec![4, 4]);
    assert_eq!(info.n_head_kv, vec![2, 1]);
    assert_eq!((info.key_length, info.value_length), (16, 16));
    assert_eq!(info.file_type.as_deref(), Some("Q4_K_M"));
    assert_eq!(info.chat_template.as_deref(), Some("{{ messages }}"));
    assert_eq!(info.sliding_window, None);
    assert_eq!(info.tensor_bytes, 64 * 5 * 4 + 64 * 64 / 32 * 18 + 288);
    assert_eq!(info.parameter_count, 64 * 5 + 64 * 64 + 512);
}

#[test]
fn big_arrays_are_counted_not_kept() {
    let tokens: Vec<String> = (0..5000).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let bytes = GgufBuilder::new().str_array("tokenizer.ggml.tokens", &refs).u32("after", 7).build();
    let f = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap();
    let arr = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!((arr.len, arr.values.is_none()), (5000, true));
    assert_eq!(f.get_u32("after").unwrap(), Some(7));

    // Many small arrays: kept until the per-file budget runs out, then only counted.
    let per_layer = vec![1u32; 4096];
    let mut b = GgufBuilder::new();
    for i in 0..300 {
        b = b.u32_array(&format!("a{i:03}"), &per_layer);
    }
    let bytes = b.build();
    let f = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap();
    let kept = |k: &str| f.get(k).unwrap().as_array().unwrap().values.is_some();
    assert!(kept("a000") && kept("a255") && !kept("a256") && !kept("a299"));
    assert_eq!(f.get("a299").unwrap().as_array().unwrap().len, 4096);
}

#[test]
fn gemma3_swa_pattern() {
    let bytes = GgufBuilder::new()
        .str("general.architecture", "gemma3")
        .u32("gemma3.block_count", 18)
        .u32("gemma3.context_length", 32768)
        .u32("gemma3.embedding_length", 640)
        .u32("gemma3.attention.head_count", 4)
        .u32("gemma3.attention.head_count_kv", 1)
        .u32("gemma3.attention.key_length", 256)
        .u32("gemma3.attention.value_length", 256)
        .u32("gemma3.attention.sliding_window", 512)
        .u32("gemma3.vocab_size", 262144)
        .build();
    let info = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap().model_info().unwrap();
    assert_eq!(info.sliding_window, Some(512));
    let global: Vec<usize> = info.swa_layers.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i).collect();
    assert_eq!(global, vec![5, 11, 17]);
}

#[test]
fn glm4moe_nextn_layer_is_neither_loaded_nor_cached() {
    // Two layers and one NextN block appended by the converter, as GLM-4.5's GGUFs have them.
    let bytes = GgufBuilder::new()
        .str("general.architecture", "glm4moe")
        .u32("glm4moe.block_count", 3)
        .u32("glm4moe.nextn_predict_layers", 1)
        .u32("glm4moe.context_length", 4096)
        .u32("glm4moe.embedding_length", 64)
        .u32("glm4moe.attention.head_count", 4)
        .u32("glm4moe.attention.head_count_kv", 2)
        .u32("glm4moe.vocab_size", 100)
        .tensor("token_embd.weight", &[64, 100], 0, 64 * 100 * 4)
        .tensor("blk.0.attn_q.weight", &[64, 64], 0, 64 * 64 * 4)
        .tensor("blk.1.attn_q.weight", &[64, 64], 0, 64 * 64 * 4)
        .tensor("blk.2.attn_q.weight", &[64, 64], 0, 64 * 64 * 4)
        .tensor("blk.2.nextn.eh_proj.weight", &[128, 64], 0, 128 * 64 * 4)
        .build();
    let info = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap().model_info().unwrap();
    assert_eq!(info.n_layer, 3);
    assert_eq!(info.n_head_kv, vec![2, 2, 0]);
    assert_eq!(info.tensor_bytes, (64 * 100 + 2 * 64 * 64) * 4);
    assert_eq!(info.layer_tensor_bytes, 2 * 64 * 64 * 4);
    assert_eq!(info.parameter_count, 64 * 100 + 3 * 64 * 64 + 128 * 64, "the file still holds them");
}

#[test]
fn error_messages_name_offsets() {
    let err = GgufFile::parse(&b"GGML\x03\0\0\0"[..], 8).unwrap_err().to_string();
    assert_eq!(err, "not a GGUF file: bad magic at offset 0 (expected 'GGUF', found 'GGML')");

    let err = GgufFile::parse(&b"GGUF\x01\0\0\0"[..], 8).unwrap_err().to_string();
    assert_eq!(err, "unsupported GGUF version 1");

    let bytes = small_model().build();
    // Cut inside the metadata (the header is the first ~700 bytes).
    let cut = &bytes[..300];
    let err = GgufFile::parse(cut, cut.len() as u64).unwrap_err().to_string();
    assert!(err.starts_with("truncated GGUF at offset "), "{err}");

    let bytes = GgufBuilder::new().tensor("blk.0.attn_q.weight", &[32], 99, 32).build();
    let err = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap_err().to_string();
    assert!(err.starts_with("unknown ggml type 99 for tensor 'blk.0.attn_q.weight' at offset "), "{err}");

    // Claimed data beyond the end of the file.
    let bytes = GgufBuilder::new().tensor("t", &[32], 0, 128).build();
    let err = GgufFile::parse(&bytes[..bytes.len() - 1], bytes.len() as u64 - 1).unwrap_err().to_string();
    assert!(err.contains("beyond the end of the file"), "{err}");

    let err = GgufFile::parse(&b"GGUF\0\0\0\x03"[..], 8).unwrap_err().to_string();
    assert!(err.starts_with("big-endian"), "{err}");
}

#[test]
fn huge_counts_are_rejected_without_allocating() {
    let mut bytes = b"GGUF\x03\0\0\0".to_vec();
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    assert!(GgufFile::parse(&bytes[..], bytes.len() as u64).is_err());

    // A string claiming 2^60 bytes, in a file claiming to be huge.
    let mut bytes = b"GGUF\x03\0\0\0".to_vec();
    bytes.extend(0u64.to_le_bytes());
    bytes.extend(1u64.to_le_bytes());
    bytes.extend((1u64 << 60).to_le_bytes());
    assert!(GgufFile::parse(&bytes[..], u64::MAX).is_err());

    // n_layer from metadata must not size an allocation.
    let bytes = GgufBuilder::new()
        .str("general.architecture", "llama")
        .u32("llama.block_count", u32::MAX)
        .u32("llama.embedding_length", 64)
        .u32("llama.context_length", 64)
        .u32("llama.attention.head_count", 4)
        .build();
    assert!(GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap().model_info().is_err());
}

/// A quick, blind form of the fuzz target that needs no libFuzzer build: truncations, bit flips
/// and byte overwrites of a valid file must give errors, never panics or huge allocations.
/// `cargo xtask fuzz` is the coverage-guided one.
#[test]
fn mutated_inputs_never_panic() {
    let seed = small_model().build();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6767_7566);
    let check = |data: &[u8]| {
        if let Ok(f) = GgufFile::parse(data, data.len() as u64) {
            let _ = f.model_info();
        }
        // A lying file size must not cause trouble either.
        let _ = GgufFile::parse(data, u64::MAX);
    };
    for len in 0..=seed.len() {
        check(&seed[..len]);
    }
    for _ in 0..20_000 {
        let mut data = seed.clone();
        for _ in 0..rng.gen_range(1..=8) {
            let i = rng.gen_range(0..data.len());
            match rng.gen_range(0..4) {
                0 => data[i] ^= 1 << rng.gen_range(0..8),
                1 => data[i] = rng.gen(),
                2 => data[i] = [0x00, 0xff, 0x7f, 0x80][rng.gen_range(0..4)],
                _ => {
                    // Overwrite 8 bytes with an extreme u64 (counts, lengths, dims).
                    let v: u64 = [u64::MAX, 1 << 40, 1 << 32, 4097, 5][rng.gen_range(0..5)];
                    let end = (i + 8).min(data.len());
                    data[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
                }
            }
        }
        if rng.gen_bool(0.2) {
            data.truncate(rng.gen_range(0..=data.len()));
        }
        check(&data);
    }
    for _ in 0..2_000 {
        let len = rng.gen_range(0..256);
        let mut data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if data.len() >= 8 && rng.gen_bool(0.5) {
            data[..8].copy_from_slice(b"GGUF\x03\0\0\0");
        }
        check(&data);
    }
}

#[test]
fn real_models_if_present() {
    let Some(home) = std::env::var_os("HELLAS_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hellas")))
    else {
        return;
    };
    let smol = home.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if smol.exists() {
        let info = GgufFile::open(&smol).unwrap().model_info().unwrap();
        assert_eq!((info.architecture.as_str(), info.n_layer, info.n_vocab), ("llama", 30, 49152));
        assert_eq!(info.file_type.as_deref(), Some("Q4_1"));
    }
    let gemma = home.join("models/gemma-3-270m-q4_k_m.gguf");
    if gemma.exists() {
        let info = GgufFile::open(&gemma).unwrap().model_info().unwrap();
        assert_eq!((info.architecture.as_str(), info.n_layer, info.n_vocab), ("gemma3", 18, 262144));
        assert_eq!(info.swa_layers.iter().filter(|s| !**s).count(), 3);
    }
}

#[test]
fn the_pooling_type_says_the_kind_of_model() {
    let kind = |builder: GgufBuilder| {
        let bytes = builder.build();
        GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap().model_info().unwrap().kind
    };
    assert_eq!(kind(small_model()), ModelKind::Generative);
    assert_eq!(kind(small_model().u32("llama.pooling_type", 0)), ModelKind::Generative, "pooling none");
    for pooling in [1, 2, 3] {
        assert_eq!(kind(small_model().u32("llama.pooling_type", pooling)), ModelKind::Embedding, "mean, CLS, last pooling");
    }
    assert_eq!(kind(small_model().u32("llama.pooling_type", 4)), ModelKind::Reranker, "rank pooling: a classification head's score");
}

/// Every input in the fuzz corpus (real headers) and every crasher the fuzzer ever found, through
/// the fuzz target's body: a crasher fixed once stays fixed. `cargo xtask fuzz` adds crashers.
#[test]
fn replay_fuzz_inputs() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["corpus", "crashers"] {
        let mut inputs: Vec<PathBuf> =
            std::fs::read_dir(fuzz.join(dir)).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        inputs.sort();
        for input in inputs {
            let bytes = std::fs::read(&input).unwrap();
            // Headers only: no file here may carry a model's weights.
            assert!(bytes.len() <= 128 << 10, "{} is {} bytes, too big to be a header", input.display(), bytes.len());
            let outcome = std::panic::catch_unwind(|| crate::testing::read_untrusted(&bytes));
            assert!(outcome.is_ok(), "{} panics the reader", input.display());
            replayed += 1;
        }
    }
    assert!(replayed > 10, "the fuzz corpus is missing: `cargo xtask fuzz --regenerate-corpus`");
}

#[test]
fn tensors_lie_back_to_back_as_ggml_requires() {
    let two = || GgufBuilder::new().tensor("a", &[8], 0, 32).tensor("b", &[8], 0, 32);
    let bytes = two().build();
    let f = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap();
    assert_eq!((f.tensors[0].offset, f.tensors[1].offset), (0, 32));
    // Both tensors over the same bytes: each lies inside the file, but together they claimed
    // more data than the file holds, and sums over them could overflow (found by the fuzz
    // harness's invariant; crashers/overlapping-tensors.gguf).
    let bytes = two().at_offset(0).build();
    let err = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap_err().to_string();
    assert!(err.contains("tensor info 1 ('b')") && err.contains("data offset 0 should be 32"), "{err}");
    // A gap, and a misaligned offset.
    for offset in [64, 33] {
        let bytes = two().at_offset(offset).build();
        assert!(GgufFile::parse(&bytes[..], bytes.len() as u64 + 64).is_err(), "offset {offset}");
    }
}

#[test]
fn header_strings_are_bounded_in_all() {
    // Five strings of 15 MiB: each under the per-string limit, too much together. Without the
    // limit a large enough file could fill memory with its metadata.
    let big = "x".repeat(15 << 20);
    let mut builder = GgufBuilder::new();
    for i in 0..5 {
        builder = builder.str(&format!("s{i}"), &big);
    }
    let bytes = builder.build();
    let err = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap_err().to_string();
    assert!(err.contains("metadata entry 4 ('s4')") && err.contains("more than the limit of 67108864 bytes"), "{err}");
}

#[test]
fn mla_key_length_saturates() {
    // kv_lora_rank + rope dimensions overflowed u32 (crashers/mla-key-length-overflow.gguf).
    let bytes = GgufBuilder::new()
        .str("general.architecture", "deepseek2")
        .u32("deepseek2.block_count", 1)
        .u32("deepseek2.embedding_length", 64)
        .u32("deepseek2.context_length", 64)
        .u32("deepseek2.vocab_size", 64)
        .u32("deepseek2.attention.key_length", 0)
        .u32("deepseek2.attention.key_length_mla", 1)
        .u32("deepseek2.attention.value_length_mla", 1)
        .u32("deepseek2.attention.kv_lora_rank", u32::MAX)
        .u32("deepseek2.rope.dimension_count", 64)
        .build();
    let info = GgufFile::parse(&bytes[..], bytes.len() as u64).unwrap().model_info().unwrap();
    assert_eq!(info.key_length, u32::MAX);
}
