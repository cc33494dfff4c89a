"""A tiny random BERT with a SentencePiece tokenizer, built here, never downloaded (issue #30):
the family of multilingual-e5-small (BERT layers, exact GELU, no pooler, XLM-R's SentencePiece
tokenizer and pair template). A Hugging Face folder laid out as the project's converter lays
out the real model (shared.runs.e5): BertModel tensor names without a prefix, no pooler,
config.json with model_type bert, tokenizer_config.json naming XLMRobertaTokenizer,
sentencepiece.bpe.model and its tokenizer.json; and Hugging Face's forward of such a folder
in float64 numpy (reference_pooled). numpy + safetensors + sentencepiece + tokenizers; no
TensorFlow, no JAX.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np

from tests.conftest import encoder_layer_tensors
from tests.xlmr_fixtures import spm_size, write_xlmr_tokenizer_json

# e5-small's own choices, at toy sizes. The LayerNorm epsilon is not BERT's 1e-12, so a reader
# that ignores config.json's value gives other numbers; the embedding table has rows past the
# tokenizer's ids, as e5-small's (250,037 rows for 250,002 ids).
EXTRA_ROWS = 3
TINY_E5_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": None,
                  "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 64, "max_position_embeddings": 128, "type_vocab_size": 2,
                  "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
                  "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-7,
                  "position_embedding_type": "absolute", "pad_token_id": 0}
TOKENIZER_CONFIG = {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512,
                    "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                    "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
                    "mask_token": "<mask>"}


def write_tiny_e5_hf(directory: Path, spm_file: Path, seed: int = 0, **config) -> Path:
    """A random 2-layer BertModel folder without a pooler around `spm_file`; `config`
    overrides config.json fields (hidden_act, layer_norm_eps, dropout...)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**TINY_E5_CONFIG, "vocab_size": spm_size(spm_file) + 2 + EXTRA_ROWS, **config}
    rng = np.random.default_rng(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape, mean=0.0, scale=0.1):
        return (mean + scale * rng.standard_normal(shape)).astype(np.float32)

    def dense(name, d_in, d_out):  # torch layout [out, in]
        return {f"{name}.weight": normal(d_out, d_in), f"{name}.bias": normal(d_out)}

    def layer_norm(name):
        return {f"{name}.weight": normal(hidden, mean=1.0), f"{name}.bias": normal(hidden)}

    positions = config["max_position_embeddings"]
    tensors = {"embeddings.word_embeddings.weight": normal(config["vocab_size"], hidden),
               "embeddings.position_embeddings.weight": normal(positions, hidden),
               "embeddings.token_type_embeddings.weight": normal(2, hidden),
               **layer_norm("embeddings.LayerNorm")}
    for i in range(config["num_hidden_layers"]):
        tensors.update(encoder_layer_tensors(f"encoder.layer.{i}", dense, layer_norm, hidden,
                                             inner))
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    shutil.copy(spm_file, directory / "sentencepiece.bpe.model")
    write_xlmr_tokenizer_json(directory / "tokenizer.json", spm_file)
    return directory


def reference_pooled(folder: Path, batch: dict) -> np.ndarray:
    """Hugging Face's BertModel forward in float64 from the folder's own files, as
    transformers computes it for this config: embeddings (token, position, the batch's token
    types), post-LayerNorm layers with config.json's epsilon and exact GELU; then the mean of
    the last layer over the mask (sentence-transformers' pooling, e5's). `batch`: token_ids,
    segment_ids, padding_mask [B, T]; returns [B, hidden]."""
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(folder / "model.safetensors")).items()}
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    assert config["hidden_act"] == "gelu", "the reference computes the exact (erf) GELU only"

    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def dense(x, name):
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def split(t):
        return t.reshape(*t.shape[:2], heads, -1).transpose(0, 2, 1, 3)

    ids, mask = np.asarray(batch["token_ids"]), np.asarray(batch["padding_mask"]).astype(bool)
    x = (w["embeddings.word_embeddings.weight"][ids]
         + w["embeddings.position_embeddings.weight"][:ids.shape[1]][None]
         + w["embeddings.token_type_embeddings.weight"][np.asarray(batch["segment_ids"])])
    x = norm(x, "embeddings.LayerNorm")
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q, k, v = (split(dense(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        scores = np.where(mask[:, None, None, :], scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = norm(x + dense(context, f"{p}.attention.output.dense"),
                 f"{p}.attention.output.LayerNorm")
        x = norm(x + dense(gelu(dense(x, f"{p}.intermediate.dense")), f"{p}.output.dense"),
                 f"{p}.output.LayerNorm")
    weights = mask[..., None].astype(np.float64)
    return (x * weights).sum(1) / weights.sum(1)
