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
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from shared.data.watson import SAMPLE_DATA_DIR, load_train

REPO = Path(__file__).resolve().parent.parent
# jax_lora's compiled steps (jax_lora/compile_cache.py) go to a folder of this test process
# and the trainers it starts, never to the user's cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jax-compile-"))
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
        tensors.update(encoder_layer_tensors(f"encoder.layer.{i}", dense, layer_norm, hidden,
                                             inner))
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))
    write_vocabulary(directory / "vocab.txt", vocabulary)
    return directory


def encoder_layer_tensors(prefix: str, dense, layer_norm, hidden: int, inner: int) -> dict:
    """One Hugging Face BERT/RoBERTa encoder layer's tensors under `prefix`, made by
    dense(name, d_in, d_out) and layer_norm(name)."""
    tensors = {}
    for name in ("query", "key", "value"):
        tensors.update(dense(f"{prefix}.attention.self.{name}", hidden, hidden))
    tensors.update(dense(f"{prefix}.attention.output.dense", hidden, hidden))
    tensors.update(layer_norm(f"{prefix}.attention.output.LayerNorm"))
    tensors.update(dense(f"{prefix}.intermediate.dense", hidden, inner))
    tensors.update(dense(f"{prefix}.output.dense", inner, hidden))
    tensors.update(layer_norm(f"{prefix}.output.LayerNorm"))
    return tensors


TENSORFLOW_MODULES = ("tensorflow", "tf_keras", "keras", "keras_hub", "keras_nlp", "tensorflow_text")


@pytest.fixture
def tensorflow_blocked(monkeypatch):
    """While the test runs, importing TensorFlow or Keras raises ImportError, whatever other
    tests of this worker process imported before: "this path never imports TensorFlow" as a
    check that cannot depend on test order."""
    for name in TENSORFLOW_MODULES:
        monkeypatch.setitem(sys.modules, name, None)


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


# Extra training rows (issue #18) planted with copies of test.csv's first three pairs (in every
# --limit >= 3): two exact (one re-cased and re-spaced), one with a letter replaced by "??".
PLANTED_EXTRA = 3


def extra_rows(data_dir: Path, n_new: int = 40) -> pd.DataFrame:
    """Rows in extra.EXTRA_COLUMNS: PLANTED_EXTRA copies of test pairs, then `n_new` new pairs
    (the premise of one training row with the hypothesis of another, labels seeded)."""
    from shared.data.watson import load_test, load_train

    train, test = load_train(data_dir), load_test(data_dir)
    planted = test.head(PLANTED_EXTRA).copy()
    planted.loc[1, "premise"] = "  " + planted.loc[1, "premise"].upper().replace(" ", "   ")
    text = planted.loc[2, "premise"]
    at = next(i for i, char in enumerate(text) if char.isalpha() and i > len(text) // 2)
    planted.loc[2, "premise"] = text[:at] + "??" + text[at + 1:]
    planted["label"] = [0, 1, 2]
    rng = np.random.default_rng(0)
    picks = rng.choice(len(train), size=(n_new, 2), replace=False)
    new = pd.DataFrame({"premise": train["premise"].to_numpy()[picks[:, 0]],
                        "hypothesis": train["hypothesis"].to_numpy()[picks[:, 1]],
                        "lang_abv": "en", "language": "English",
                        "label": rng.integers(0, 3, n_new)})
    rows = pd.concat([planted[list(new.columns)], new], ignore_index=True)
    rows.insert(0, "id", [f"mock_nli:train:{i}" for i in range(len(rows))])
    rows["source"] = "mock_nli:train"
    return rows


@pytest.fixture(scope="session")
def extra_train(tmp_path_factory) -> Path:
    """A prepared extra-rows folder over the embedded sample (see extra_rows)."""
    from shared.data.extra import write_prepared
    from shared.data.watson import SAMPLE_DATA_DIR

    rows = extra_rows(SAMPLE_DATA_DIR)
    sources = [{"spec": "mock_nli:train", "builder": "mock_nli", "rows": len(rows)}]
    return write_prepared(rows, sources, tmp_path_factory.mktemp("extra") / "prepared").folder
