"""A tiny random XLM-RoBERTa, built here, never downloaded (issue #20): a SentencePiece model
trained on the embedded sample's texts, and a Hugging Face folder around it (numpy +
safetensors + the `tokenizers` library; no TensorFlow, no JAX). keras_reference.py turns the
folder into a keras-hub preset with keras-hub's own converter, so both hold the same weights.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from shared.data.watson import SAMPLE_DATA_DIR, load_train
from shared.runs.xlmr_spm import write_tokenizer_json
from tests.conftest import encoder_layer_tensors

# A few hundred pieces and 98 % character coverage: sample texts split into many pieces
# (so 32 tokens cut some pairs), and the rarest characters of the sample are <unk>.
SPM_TRAINING = {"vocab_size": 400, "model_type": "unigram", "character_coverage": 0.98,
                "num_threads": 1, "minloglevel": 2}
TINY_XLMR_CONFIG = {"architectures": ["XLMRobertaForSequenceClassification"],
                    "model_type": "xlm-roberta", "vocab_size": None, "hidden_size": 32,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
                    # positions 0 and 1 are Hugging Face's padding rows: 128 usable positions
                    "max_position_embeddings": 130, "type_vocab_size": 1, "pad_token_id": 1,
                    "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "gelu",
                    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                    "layer_norm_eps": 1e-5, "position_embedding_type": "absolute"}
NUM_CLASSES = 3
# Texts on which a tokenizer.json (the `tokenizers` library) and keras-hub's SentencePiece
# model give other ids, with the reason: tokenizer.json splits off its special tokens first.
XLMR_RULE_GAPS = [("a <s> b </s>", "literal <s>, </s>: their ids vs < s > pieces"),
                  ("fill <mask> in", "literal <mask>: its id vs < mask > pieces")]


def sample_texts() -> list[str]:
    frame = load_train(SAMPLE_DATA_DIR)
    return frame["premise"].tolist() + frame["hypothesis"].tolist()


def train_sentencepiece(path: Path) -> Path:
    """A unigram SentencePiece model of the sample's training texts (deterministic, ~1 s)."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(sample_texts()),
                                             model_writer=model, **SPM_TRAINING)
    Path(path).write_bytes(model.getvalue())
    return Path(path)


def spm_size(spm_file: Path) -> int:
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_file=str(spm_file)).vocab_size()


def write_xlmr_tokenizer_json(path: Path, spm_file: Path) -> Path:
    """The tokenizer.json Hugging Face's XLMRobertaConverter writes for `spm_file` (the
    converter's copy in shared.runs.xlmr_spm, which the multilingual-e5-small folder uses)."""
    return write_tokenizer_json(spm_file, path)


def write_tiny_xlmr_hf(directory: Path, spm_file: Path, seed: int = 0) -> Path:
    """A random 2-layer XLMRobertaForSequenceClassification folder (3 classes) with an
    XLMRobertaModel pooler too (which nothing reads), sentencepiece.bpe.model = `spm_file`
    and its tokenizer.json; every weight random (LayerNorm scales around 1), so a tensor
    mapped to the wrong place shows in the outputs."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**TINY_XLMR_CONFIG, "vocab_size": spm_size(spm_file) + 2}  # + <pad>, <mask>
    rng = np.random.default_rng(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape, mean=0.0, scale=0.1):
        return (mean + scale * rng.standard_normal(shape)).astype(np.float32)

    def dense(name, d_in, d_out, scale=0.1):  # torch layout [out, in]
        return {f"{name}.weight": normal(d_out, d_in, scale=scale),
                f"{name}.bias": normal(d_out, scale=scale)}

    def layer_norm(name):
        return {f"{name}.weight": normal(hidden, mean=1.0), f"{name}.bias": normal(hidden)}

    top = "roberta.embeddings"
    tensors = {f"{top}.word_embeddings.weight": normal(config["vocab_size"], hidden),
               f"{top}.position_embeddings.weight": normal(config["max_position_embeddings"],
                                                           hidden),
               f"{top}.token_type_embeddings.weight": normal(1, hidden),
               f"{top}.position_ids": np.arange(config["max_position_embeddings"])[None],
               **layer_norm(f"{top}.LayerNorm"), **dense("roberta.pooler.dense", hidden, hidden),
               # a larger head: logits of order 1, so that 1e-5 is a tight bound
               **dense("classifier.dense", hidden, hidden, scale=0.3),
               **dense("classifier.out_proj", hidden, NUM_CLASSES, scale=0.3)}
    for i in range(config["num_hidden_layers"]):
        tensors.update(encoder_layer_tensors(f"roberta.encoder.layer.{i}", dense, layer_norm,
                                             hidden, inner))
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copy(spm_file, directory / "sentencepiece.bpe.model")
    write_xlmr_tokenizer_json(directory / "tokenizer.json", spm_file)
    return directory
