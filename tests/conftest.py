"""Fixtures every test folder shares: the real Watson data beside the checkout, when present,
a tiny random BERT as a Hugging Face folder (numpy + safetensors, no TensorFlow or JAX),
uncased, with a vocabulary built from data/sample so sample rows tokenize to varied lengths
(both trainers load it), and the main job's runs on it."""

import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.data.watson import SAMPLE_DATA_DIR, load_train

REPO = Path(__file__).resolve().parent.parent
# ../shared/data/watson sits beside the checkout on developer machines and CI; never in it.
WATSON_DIR = REPO.parent / "shared" / "data" / "watson"


@pytest.fixture(scope="session")
def watson_dir() -> Path:
    if not (WATSON_DIR / "train.csv").is_file():
        pytest.skip(f"real Watson data not found at {WATSON_DIR}")
    return WATSON_DIR


SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

TINY_HF_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": None,
                  "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                  "intermediate_size": 64, "max_position_embeddings": 128, "type_vocab_size": 2,
                  "hidden_dropout_prob": 0.1, "layer_norm_eps": 1e-12,
                  "position_embedding_type": "absolute", "hidden_act": "gelu"}


def tiny_vocabulary(lowercase: bool, words: int = 300) -> list[str]:
    """Specials, the most frequent sample words, and every sample character with and without
    "##", so every sample text tokenizes without [UNK] into a few hundred ids."""
    frame = load_train(SAMPLE_DATA_DIR)
    text = " ".join(frame["premise"].tolist() + frame["hypothesis"].tolist())
    text = text.lower() if lowercase else text
    counts = collections.Counter(re.findall(r"\w+", text))
    vocabulary = SPECIAL_TOKENS + [w for w, n in counts.most_common(words) if len(w) > 1]
    characters = sorted({c for c in text if not c.isspace()})
    return vocabulary + characters + ["##" + c for c in characters]


def write_vocabulary(path: Path, vocabulary: list[str]) -> Path:
    path.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    return path


def write_tiny_hf_preset(directory: Path, seed: int = 0) -> Path:
    """A random uncased 2-layer BERT as a Hugging Face folder; returns `directory`."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocabulary = tiny_vocabulary(lowercase=True)
    config = {**TINY_HF_CONFIG, "vocab_size": len(vocabulary)}
    rng = np.random.default_rng(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape, mean=0.0):
        return (mean + 0.1 * rng.standard_normal(shape)).astype(np.float32)

    def dense(name, d_in, d_out):  # torch layout [out, in]
        return {f"{name}.weight": normal(d_out, d_in), f"{name}.bias": normal(d_out)}

    def layer_norm(name):
        return {f"{name}.weight": normal(hidden, mean=1.0), f"{name}.bias": normal(hidden)}

    tensors = {"embeddings.word_embeddings.weight": normal(len(vocabulary), hidden),
               "embeddings.position_embeddings.weight": normal(128, hidden),
               "embeddings.token_type_embeddings.weight": normal(2, hidden),
               "embeddings.position_ids": np.arange(128, dtype=np.int64)[None],
               **layer_norm("embeddings.LayerNorm"), **dense("pooler.dense", hidden, hidden)}
    for i in range(config["num_hidden_layers"]):
        prefix = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            tensors.update(dense(f"{prefix}.attention.self.{name}", hidden, hidden))
        tensors.update(dense(f"{prefix}.attention.output.dense", hidden, hidden))
        tensors.update(layer_norm(f"{prefix}.attention.output.LayerNorm"))
        tensors.update(dense(f"{prefix}.intermediate.dense", hidden, inner))
        tensors.update(dense(f"{prefix}.output.dense", inner, hidden))
        tensors.update(layer_norm(f"{prefix}.output.LayerNorm"))
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    write_vocabulary(directory / "vocab.txt", vocabulary)
    return directory


@pytest.fixture(scope="session")
def tiny_hf_preset(tmp_path_factory) -> Path:
    return write_tiny_hf_preset(tmp_path_factory.mktemp("tiny_hf"))


@pytest.fixture(scope="session")
def make_vocabulary():
    """write_vocabulary(path, tiny_vocabulary(lowercase)), for tests (conftest is not importable)."""
    return lambda path, lowercase: write_vocabulary(path, tiny_vocabulary(lowercase))


@pytest.fixture(scope="session")
def compare_runs(tiny_hf_preset, tmp_path_factory) -> Path:
    """A folder as the main job leaves it, on the tiny random BERT and the embedded sample
    (first 120 rows, one epoch): tf_full (its recipe: 64 tokens), jax_lora and jax_probe (32
    tokens), report/. Trainers compile with LLVM optimisations off (much faster here)."""
    out = tmp_path_factory.mktemp("compare") / "runs"
    env = {**os.environ, "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_backend_optimization_level=0").strip()}
    done = subprocess.run([sys.executable, "-m", "shared.jobs.compare", "--preset",
                           str(tiny_hf_preset), "--out", str(out), "--probe", "--sequence-length",
                           "32", "--epochs", "1", "--limit", "120", "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out
