"""A tiny random BERT with a SentencePiece tokenizer, built here, never downloaded (issue #30):
the family of multilingual-e5-small (BERT layers, exact GELU, no pooler, XLM-R's SentencePiece
tokenizer and pair template). A Hugging Face folder laid out as the project's converter lays
out the real model (shared.runs.e5): BertModel tensor names without a prefix, no pooler,
config.json with model_type bert, tokenizer_config.json naming XLMRobertaTokenizer,
sentencepiece.bpe.model and its tokenizer.json. numpy + safetensors + sentencepiece +
tokenizers; no TensorFlow, no JAX.
"""

from __future__ import annotations

import json
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
