"""A Hugging Face BERT folder with random weights, for shapes whose real files are not here.

All three frameworks load Hugging Face BERT folders with their own code (keras-hub's converter
through tf_baseline.model.load_classifier, jax_lora.weights.load_pretrained, transformers'
from_pretrained), so every configuration, random or pretrained, loads its weights the way a
real run does and the measured peak RSS includes that. Written with numpy and safetensors
only (no framework), in the layout of the all-MiniLM-L6-v2 folder. The vocabulary is
synthetic: the benchmark feeds token ids directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from benchmarks.spec import Shape

MAX_POSITIONS = 512
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def random_tensors(shape: Shape, seed: int) -> dict[str, np.ndarray]:
    """BertModel's tensors (torch layout: Linear weights are [out, in]); N(0, 0.02) like BERT's
    initializer, LayerNorm scales 1 and offsets 0."""
    rng = np.random.default_rng(seed)
    h, f = shape.hidden_dim, shape.intermediate_dim

    def normal(*dims):
        return (0.02 * rng.standard_normal(dims, dtype=np.float32)).astype(np.float32)

    def layer_norm(prefix):
        return {f"{prefix}.weight": np.ones(h, np.float32),
                f"{prefix}.bias": np.zeros(h, np.float32)}

    def dense(prefix, d_in, d_out):
        return {f"{prefix}.weight": normal(d_out, d_in),
                f"{prefix}.bias": np.zeros(d_out, np.float32)}

    tensors = {"embeddings.word_embeddings.weight": normal(shape.vocab_size, h),
               "embeddings.position_embeddings.weight": normal(MAX_POSITIONS, h),
               "embeddings.token_type_embeddings.weight": normal(2, h),
               **layer_norm("embeddings.LayerNorm"), **dense("pooler.dense", h, h)}
    for i in range(shape.num_layers):
        p = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            tensors.update(dense(f"{p}.attention.self.{name}", h, h))
        tensors.update({**dense(f"{p}.attention.output.dense", h, h),
                        **layer_norm(f"{p}.attention.output.LayerNorm"),
                        **dense(f"{p}.intermediate.dense", h, f),
                        **dense(f"{p}.output.dense", f, h),
                        **layer_norm(f"{p}.output.LayerNorm")})
    return tensors


def write(shape: Shape, out: Path, seed: int = 0) -> Path:
    if shape.pretrained:
        raise ValueError(f"shape {shape.name}: has real weights; use their own folder")
    out.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["BertModel"], "model_type": "bert",
              "vocab_size": shape.vocab_size, "hidden_size": shape.hidden_dim,
              "num_hidden_layers": shape.num_layers, "num_attention_heads": shape.num_heads,
              "intermediate_size": shape.intermediate_dim, "hidden_act": "gelu",
              "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
              "max_position_embeddings": MAX_POSITIONS, "type_vocab_size": 2,
              "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    words = [f"w{i}" for i in range(shape.vocab_size - len(SPECIAL_TOKENS))]
    (out / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + words) + "\n")
    save_file(random_tensors(shape, seed), str(out / "model.safetensors"),
              metadata={"format": "pt"})  # transformers refuses files without a format
    return out
