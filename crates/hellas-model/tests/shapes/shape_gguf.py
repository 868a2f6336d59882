#!/usr/bin/env python3
"""Writes shape-only GGUFs of the catalog models: real metadata and tensor table, no data.

    shape_gguf.py OUT_DIR [NAME ...]

writes OUT_DIR/NAME.gguf for each model of models.toml (all of them when no NAME is given).
The tensor data is a hole: the file is extended to its full size with truncate(), so a 142 GB
model takes a few MB of disk. catalog_shapes.rs starts llama-server on it without letting it read
the data, and compares the buffers llama.cpp sizes for it with the planner's.

The metadata follows llama.cpp's convert_hf_to_gguf.py for each architecture (keys, tensor names
and shapes from the config.json values in models.toml). The vocabulary is synthetic but of the
real size: a SentencePiece ("llama") vocabulary, the one llama.cpp loads with the least metadata
(no merges). Needs the `gguf` package (PyPI), which `cargo xtask models` installs.
"""

import re
import sys
import tomllib
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

HERE = Path(__file__).resolve().parent


class Builder:
    """Collects a GGUF's metadata and tensor table, then writes them with a sparse data part."""

    def __init__(self, name: str, spec: dict, quant: dict):
        self.name = name
        self.spec = spec
        self.cfg = spec["config"]
        self.quant = quant
        self.arch = spec["arch"]
        self.w = gguf.GGUFWriter(path=None, arch=self.arch)
        self.w.add_name(name)
        self.w.add_file_type(quant["file_type"])
        self.w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    def tensor(self, name: str, ne: list[int], layer: int | None = None) -> None:
        """Adds tensor `name` with ggml dimensions `ne` (fastest first), typed by the mixture."""
        ggml_type = self.type_for(name, ne, layer)
        block, size = GGML_QUANT_SIZES[ggml_type]
        n = int(np.prod(ne))
        assert ne[0] % block == 0, f"{name}: row of {ne[0]} is not a multiple of {ggml_type.name}'s block"
        # add_tensor_info takes numpy's order (slowest first) and writes it reversed.
        self.w.add_tensor_info(name, list(reversed(ne)), np.dtype(np.float32), n // block * size, raw_dtype=ggml_type)

    def type_for(self, name: str, ne: list[int], layer: int | None) -> T:
        if len(ne) == 1 or name.endswith(".bias"):
            return T.F32
        wanted = self.quant["default"]
        for pattern, t in self.quant["rules"]:
            if re.search(pattern, name):
                wanted = t
                break
        if wanted.startswith("alt:"):
            wanted = wanted[4:] if (layer or 0) % 2 == 0 else self.quant["default"]
        t = T[wanted]
        # llama-quantize's fallbacks for rows that do not fill a super-block.
        fallback = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.Q8_0: T.F16, T.MXFP4: T.Q8_0}
        while ne[0] % GGML_QUANT_SIZES[t][0] != 0:
            t = fallback[t]
        return t

    def write(self, path: Path) -> None:
        w = self.w
        w.write_header_to_file(path=path)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        fout = w.fout[0]
        # Tensor data starts at the next alignment boundary; each tensor is padded to it too.
        data_start = -(-fout.tell() // w.data_alignment) * w.data_alignment
        data_size = sum(gguf.GGUFWriter.ggml_pad(ti.nbytes, w.data_alignment) for ti in w.tensors[0].values())
        fout.truncate(data_start + data_size)
        w.close()


# --- vocabulary -------------------------------------------------------------------------------

def add_vocab(b: Builder, n_vocab: int) -> None:
    """A synthetic SentencePiece vocabulary of n_vocab tokens: <unk>, <s>, </s>, the 256 byte
    tokens llama.cpp looks up (e.g. <0x0A> for newline), then unique placeholders."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256  # unknown, control, control, byte
    tokens += [f"tok{i}" for i in range(len(tokens), n_vocab)]
    types += [1] * (n_vocab - len(types))  # normal
    b.w.add_tokenizer_model("llama")
    b.w.add_tokenizer_pre("default")
    b.w.add_token_list(tokens)
    b.w.add_token_types(types)
    b.w.add_unk_token_id(0)
    b.w.add_bos_token_id(1)
    b.w.add_eos_token_id(2)


# --- architectures ----------------------------------------------------------------------------

def common_hparams(b: Builder, n_layer: int | None = None) -> dict:
    """The keys every text model has (TextModel.set_gguf_parameters) and the shapes they imply."""
    c = b.cfg
    s = {
        "n_layer": n_layer or c["num_hidden_layers"],
        "n_embd": c["hidden_size"],
        "n_ff": c["intermediate_size"],
        "n_head": c["num_attention_heads"],
        "n_head_kv": c["num_key_value_heads"],
        "head_dim": c.get("head_dim", c["hidden_size"] // c["num_attention_heads"]),
        "n_vocab": b.spec.get("gguf_vocab", c["vocab_size"]),
    }
    w = b.w
    w.add_block_count(s["n_layer"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(s["n_embd"])
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(s["n_head"])
    w.add_head_count_kv(s["n_head_kv"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    if "head_dim" in c:
        w.add_key_length(s["head_dim"])
        w.add_value_length(s["head_dim"])
    rope = c.get("rope_scaling") or {}
    if rope.get("rope_type") == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    elif rope.get("rope_type") == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    add_vocab(b, s["n_vocab"])
    return s


def embeddings(b: Builder, s: dict) -> None:
    """token_embd, output_norm and, unless the embeddings are tied, output."""
    b.tensor("token_embd.weight", [s["n_embd"], s["n_vocab"]])
    b.tensor("output_norm.weight", [s["n_embd"]])
    if not b.cfg.get("tie_word_embeddings", False):
        b.tensor("output.weight", [s["n_embd"], s["n_vocab"]])


def attention(b: Builder, s: dict, il: int, bias=False, qk_norm=False) -> None:
    p, e, hd = f"blk.{il}.", s["n_embd"], s["head_dim"]
    q, kv = s["n_head"] * hd, s["n_head_kv"] * hd
    b.tensor(p + "attn_norm.weight", [e])
    for name, rows in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
        b.tensor(p + name + ".weight", [e, rows], il)
        if bias:
            b.tensor(p + name + ".bias", [rows])
    b.tensor(p + "attn_output.weight", [q, e], il)
    if qk_norm:
        b.tensor(p + "attn_q_norm.weight", [hd])
        b.tensor(p + "attn_k_norm.weight", [hd])


def dense_ffn(b: Builder, s: dict, il: int, n_ff: int, norm="ffn_norm") -> None:
    p, e = f"blk.{il}.", s["n_embd"]
    if norm:
        b.tensor(p + norm + ".weight", [e])
    b.tensor(p + "ffn_gate.weight", [e, n_ff], il)
    b.tensor(p + "ffn_up.weight", [e, n_ff], il)
    b.tensor(p + "ffn_down.weight", [n_ff, e], il)


def experts(b: Builder, s: dict, il: int, n_expert: int, n_ff_exp: int, bias=False) -> None:
    """The router and the stacked routed experts (ggml ne = {in, out, n_expert})."""
    p, e = f"blk.{il}.", s["n_embd"]
    b.tensor(p + "ffn_gate_inp.weight", [e, n_expert], il)
    b.tensor(p + "ffn_gate_exps.weight", [e, n_ff_exp, n_expert], il)
    b.tensor(p + "ffn_up_exps.weight", [e, n_ff_exp, n_expert], il)
    b.tensor(p + "ffn_down_exps.weight", [n_ff_exp, e, n_expert], il)
    if bias:
        b.tensor(p + "ffn_gate_inp.bias", [n_expert])
        b.tensor(p + "ffn_gate_exps.bias", [n_ff_exp, n_expert])
        b.tensor(p + "ffn_up_exps.bias", [n_ff_exp, n_expert])
        b.tensor(p + "ffn_down_exps.bias", [e, n_expert])


def llama(b: Builder) -> None:
    c = b.cfg
    s = common_hparams(b)
    b.w.add_rope_dimension_count(s["head_dim"])
    b.w.add_vocab_size(s["n_vocab"])
    embeddings(b, s)
    if (c.get("rope_scaling") or {}).get("rope_type") == "llama3":
        # LlamaModel.generate_extra_tensors: one frequency factor per rotary pair.
        b.tensor("rope_freqs.weight", [s["head_dim"] // 2])
    for il in range(s["n_layer"]):
        attention(b, s, il)
        dense_ffn(b, s, il, s["n_ff"])


def qwen3(b: Builder) -> None:
    s = common_hparams(b)
    pooling = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "last": gguf.PoolingType.LAST}
    if "pooling" in b.spec:
        b.w.add_pooling_type(pooling[b.spec["pooling"]])
    embeddings(b, s)
    for il in range(s["n_layer"]):
        attention(b, s, il, qk_norm=True)
        dense_ffn(b, s, il, s["n_ff"])


def qwen3moe(b: Builder) -> None:
    c = b.cfg
    s = common_hparams(b)
    b.w.add_expert_count(c["num_experts"])
    b.w.add_expert_used_count(c["num_experts_per_tok"])
    b.w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    embeddings(b, s)
    for il in range(s["n_layer"]):
        attention(b, s, il, qk_norm=True)
        b.tensor(f"blk.{il}.ffn_norm.weight", [s["n_embd"]])
        experts(b, s, il, c["num_experts"], c["moe_intermediate_size"])


def qwen2vl(b: Builder) -> None:
    s = common_hparams(b)
    sections = list(b.cfg["rope_scaling"]["mrope_section"])
    b.w.add_rope_dimension_sections(sections + [0] * (4 - len(sections)))
    embeddings(b, s)
    for il in range(s["n_layer"]):
        attention(b, s, il, bias=True)
        dense_ffn(b, s, il, s["n_ff"])


def gemma3(b: Builder) -> None:
    c = b.cfg
    s = common_hparams(b)
    b.w.add_sliding_window(c["sliding_window"])
    b.w.add_rope_freq_base_swa(c["rope_local_base_freq"])
    embeddings(b, s)
    for il in range(s["n_layer"]):
        attention(b, s, il, qk_norm=True)
        b.tensor(f"blk.{il}.post_attention_norm.weight", [s["n_embd"]])
        dense_ffn(b, s, il, s["n_ff"])
        b.tensor(f"blk.{il}.post_ffw_norm.weight", [s["n_embd"]])


def gpt_oss(b: Builder) -> None:
    c = b.cfg
    s = common_hparams(b)
    b.w.add_expert_count(c["num_local_experts"])
    b.w.add_expert_used_count(c["experts_per_token"])
    b.w.add_sliding_window(c["sliding_window"])
    b.w.add_expert_feed_forward_length(c["intermediate_size"])
    embeddings(b, s)
    for il in range(s["n_layer"]):
        p = f"blk.{il}."
        attention(b, s, il, bias=True)
        b.tensor(p + "attn_output.bias", [s["n_embd"]])
        b.tensor(p + "attn_sinks.weight", [s["n_head"]])
        b.tensor(p + "post_attention_norm.weight", [s["n_embd"]])
        experts(b, s, il, c["num_local_experts"], c["intermediate_size"], bias=True)


def glm4moe(b: Builder) -> None:
    c = b.cfg
    n_nextn = c.get("num_nextn_predict_layers", 0)
    s = common_hparams(b, n_layer=c["num_hidden_layers"] + n_nextn)
    w = b.w
    w.add_rope_dimension_count(int(s["head_dim"] * c["partial_rotary_factor"]))
    w.add_expert_count(c["n_routed_experts"])
    w.add_expert_used_count(c["num_experts_per_tok"])
    w.add_expert_shared_count(c["n_shared_experts"])
    w.add_leading_dense_block_count(c["first_k_dense_replace"])
    w.add_expert_feed_forward_length(c["moe_intermediate_size"])
    w.add_expert_weights_scale(c["routed_scaling_factor"])
    w.add_expert_weights_norm(c["norm_topk_prob"])
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_nextn_predict_layers(n_nextn)
    embeddings(b, s)
    e, n_ff_sh = s["n_embd"], c["moe_intermediate_size"] * c["n_shared_experts"]
    for il in range(s["n_layer"]):
        p = f"blk.{il}."
        attention(b, s, il, bias=c["attention_bias"], qk_norm=c["use_qk_norm"])
        b.tensor(p + "post_attention_norm.weight", [e])
        if il < c["first_k_dense_replace"]:
            dense_ffn(b, s, il, s["n_ff"], norm=None)
            continue
        experts(b, s, il, c["n_routed_experts"], c["moe_intermediate_size"])
        b.tensor(p + "exp_probs_b.bias", [c["n_routed_experts"]])
        b.tensor(p + "ffn_gate_shexp.weight", [e, n_ff_sh], il)
        b.tensor(p + "ffn_up_shexp.weight", [e, n_ff_sh], il)
        b.tensor(p + "ffn_down_shexp.weight", [n_ff_sh, e], il)
        if il >= c["num_hidden_layers"]:
            # The NextN (multi-token prediction) block's own tensors.
            b.tensor(p + "nextn.eh_proj.weight", [2 * e, e], il)
            b.tensor(p + "nextn.enorm.weight", [e])
            b.tensor(p + "nextn.hnorm.weight", [e])
            b.tensor(p + "nextn.shared_head_norm.weight", [e])


# --- vision projectors (clip.cpp's "mmproj" files) -------------------------------------------

def clip_common(b: Builder, n_layer: int, n_embd: int, n_ff: int, n_head: int, proj_dim: int) -> None:
    c, w = b.cfg, b.w
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_clip_projector_type(b.spec["projector_type"])
    w.add_clip_has_vision_encoder(True)
    w.add_vision_projection_dim(proj_dim)
    w.add_vision_image_size(c["image_size"])
    w.add_vision_patch_size(c["patch_size"])
    w.add_vision_embedding_length(n_embd)
    w.add_vision_feed_forward_length(n_ff)
    w.add_vision_block_count(n_layer)
    w.add_vision_head_count(n_head)
    w.add_vision_image_mean(c["image_mean"])
    w.add_vision_image_std(c["image_std"])


def vision_block(b: Builder, il: int, n_embd: int, n_ff: int, gated: bool, norm_bias: bool) -> None:
    p = f"v.blk.{il}."
    for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
        b.tensor(p + name + ".weight", [n_embd, n_embd])
        b.tensor(p + name + ".bias", [n_embd])
    for name in ("ln1", "ln2"):
        b.tensor(p + name + ".weight", [n_embd])
        if norm_bias:
            b.tensor(p + name + ".bias", [n_embd])
    for name in ("ffn_gate", "ffn_up") if gated else ("ffn_up",):
        b.tensor(p + name + ".weight", [n_embd, n_ff])
        b.tensor(p + name + ".bias", [n_ff])
    b.tensor(p + "ffn_down.weight", [n_ff, n_embd])
    b.tensor(p + "ffn_down.bias", [n_embd])


def clip_gemma3(b: Builder) -> None:
    """SigLIP encoder plus Gemma 3's projector (Gemma3VisionModel)."""
    c = b.cfg
    e, ff, ps = c["hidden_size"], c["intermediate_size"], c["patch_size"]
    clip_common(b, c["num_hidden_layers"], e, ff, c["num_attention_heads"], c["text_hidden_size"])
    b.w.add_vision_attention_layernorm_eps(c["layer_norm_eps"])
    b.w.add_vision_use_gelu(True)
    n_patches = (c["image_size"] // ps) ** 2
    b.tensor("v.patch_embd.weight", [ps, ps, 3, e])
    b.tensor("v.patch_embd.bias", [e])
    b.tensor("v.position_embd.weight", [e, n_patches])
    for il in range(c["num_hidden_layers"]):
        vision_block(b, il, e, ff, gated=False, norm_bias=True)
    b.tensor("v.post_ln.weight", [e])
    b.tensor("v.post_ln.bias", [e])
    # mm_input_projection_weight is (vision, text) in PyTorch order.
    b.tensor("mm.input_projection.weight", [c["text_hidden_size"], e])
    b.tensor("mm.soft_emb_norm.weight", [e])


def clip_qwen25vl(b: Builder) -> None:
    """Qwen2.5-VL's ViT and patch merger (Qwen2VLVisionModel)."""
    c = b.cfg
    e, ff, ps = c["hidden_size"], c["intermediate_size"], c["patch_size"]
    clip_common(b, c["depth"], e, ff, c["num_heads"], c["out_hidden_size"])
    b.w.add_vision_use_silu(True)
    b.w.add_vision_n_wa_pattern(c["fullatt_block_indexes"][0] + 1)
    b.w.add_vision_attention_layernorm_eps(c["rms_norm_eps"])
    # The Conv3D patch embedding split into its two temporal slices.
    b.tensor("v.patch_embd.weight", [ps, ps, 3, e])
    b.tensor("v.patch_embd.weight.1", [ps, ps, 3, e])
    for il in range(c["depth"]):
        vision_block(b, il, e, ff, gated=True, norm_bias=False)
    merged = e * c["spatial_merge_size"] ** 2
    b.tensor("v.post_ln.weight", [e])
    b.tensor("mm.0.weight", [merged, merged])
    b.tensor("mm.0.bias", [merged])
    b.tensor("mm.2.weight", [merged, c["out_hidden_size"]])
    b.tensor("mm.2.bias", [c["out_hidden_size"]])


ARCHITECTURES = {
    "llama": llama,
    "qwen3": qwen3,
    "qwen3moe": qwen3moe,
    "qwen2vl": qwen2vl,
    "gemma3": gemma3,
    "gpt-oss": gpt_oss,
    "glm4moe": glm4moe,
    ("clip", "gemma3"): clip_gemma3,
    ("clip", "qwen2.5vl_merger"): clip_qwen25vl,
}


def build(name: str, table: dict) -> Builder:
    spec = table["models"][name]
    b = Builder(name, spec, table["quants"][spec["quant"]])
    arch = (spec["arch"], spec["projector_type"]) if spec["arch"] == "clip" else spec["arch"]
    ARCHITECTURES[arch](b)
    return b


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    table = tomllib.loads((HERE / "models.toml").read_text())
    for name in sys.argv[2:] or table["models"]:
        build(name, table).write(out / f"{name}.gguf")


if __name__ == "__main__":
    main()
