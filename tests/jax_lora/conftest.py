"""Tiny random presets for the jax_lora tests, built here, never downloaded.

- `tiny_hf_preset` (tests/conftest.py): a random Hugging Face BERT folder.
- `keras_hub_reference`: one TensorFlow subprocess (keras_reference.py; pytest itself never
  imports TensorFlow) that builds `tiny_keras_preset` (a cased keras-hub BertTextClassifier
  preset with its head, saved by keras-hub) and records keras-hub's token ids and model
  outputs for it, the tiny HF folder and MiniLM (when installed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jax_lora.models import BertConfig
from shared.data import SAMPLE_DATA_DIR, load_test, load_train
from shared.presets import PresetError, minilm_dir

KERAS_REFERENCE = Path(__file__).with_name("keras_reference.py")
# Texts where keras-hub and Hugging Face BERT tokenizers disagree or rules are easy to get
# wrong: casing/NFKC, accents, spacing characters, CJK, over-long words, literal specials.
EDGE_TEXTS = [
    "", "   ", "Ünïcödé àccents and ÉCOLE", "Straße ß", "ﬁne ligature", "Full-width ＡＢＣ！",
    "No\u00a0break\u00a0space", "soft\u00adhyphen", "zero\u200bwidth", "tab\tand\nnew\r\nline",
    "control\x07bell", "中文字符和日本語のテキスト", "한국어 텍스트", "emoji 😀 here",
    "[SEP] [CLS] [PAD] literal", "x" * 120, "é" * 60, "«quotes» — dash … ellipsis",
    "Ǆ titlecase", "İstanbul", "ΣΊΣΥΦΟΣ final sigma", "line\u2028separator",
    "variation\ufe0fselector", "Hangul filler \u3164x", "مُحَمَّد with tashkeel",
    "Thai ภาษาไทย", "हिन्दी", "compat ideograph \uf900", "$100 + 5% = <tag> ^ ` | ~ ??",
]
@pytest.fixture(scope="session")
def tiny_config() -> BertConfig:
    """The model-only tests' config (random init, no preset)."""
    return BertConfig(vocab_size=40, hidden_dim=16, num_layers=2, num_heads=4,
                      intermediate_dim=32, max_sequence_length=24)


@pytest.fixture(scope="session")
def tiny_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token_ids, segment_ids, padding_mask) [2, 8]: one padded row, one full row. Every
    model-only test uses this shape: eager JAX compiles each op once per shape."""
    token_ids = np.array([[2, 7, 9, 11, 3, 13, 3, 0], [2, 8, 10, 12, 14, 3, 15, 3]], np.int32)
    segment_ids = np.array([[0, 0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 1, 1]], np.int32)
    return token_ids, segment_ids, (token_ids > 0).astype(np.int32)


def run_keras_reference(*args) -> None:
    """keras_reference.py in a fresh interpreter; its stderr is shown when it fails."""
    result = subprocess.run([sys.executable, str(KERAS_REFERENCE), *map(str, args)],
                            capture_output=True, text=True)
    if result.returncode:
        raise AssertionError(f"keras_reference.py {args[0]} failed:\n{result.stderr[-3000:]}")


@pytest.fixture(scope="session")
def keras_reference():
    """run_keras_reference, for tests (test files cannot import conftest)."""
    return run_keras_reference


def make_sentence_pairs(frames) -> dict[str, list[str]]:
    """Premise/hypothesis lists of the frames' rows, then EDGE_TEXTS paired with each other."""
    premises = [p for f in frames for p in f["premise"]] + EDGE_TEXTS
    hypotheses = [h for f in frames for h in f["hypothesis"]] + EDGE_TEXTS[7:] + EDGE_TEXTS[:7]
    return {"premise": premises, "hypothesis": hypotheses}


@pytest.fixture(scope="session")
def sentence_pairs():
    """make_sentence_pairs, for tests (test files cannot import conftest)."""
    return make_sentence_pairs


@pytest.fixture(scope="session")
def keras_hub_reference(tiny_hf_preset, make_vocabulary, tmp_path_factory) -> dict:
    """{'root', 'pairs', 'presets': {name: (folder, kind)}}; keras-hub's results are
    root/<name>_tokens.npz and root/<name>_outputs.npz, the export round trip of the tiny HF
    model root/exported + root/export.npz (see keras_reference.py)."""
    root = tmp_path_factory.mktemp("keras_hub_reference")
    pairs = make_sentence_pairs([load_train(SAMPLE_DATA_DIR), load_test(SAMPLE_DATA_DIR)])
    (root / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    vocabulary = make_vocabulary(root / "vocabulary.txt", lowercase=False)
    presets = {"tiny_keras": (root / "tiny_keras", "keras_dir"), "tiny_hf": (tiny_hf_preset, "hf")}
    try:
        presets["minilm"] = (minilm_dir(), "hf")
    except PresetError:
        pass
    named = [f"{name}={path}" for name, (path, _) in presets.items() if name != "tiny_keras"]
    run_keras_reference("reference", root, vocabulary, root / "pairs.json", tiny_hf_preset,
                        *named)
    return {"root": root, "pairs": pairs, "presets": presets}


@pytest.fixture(scope="session")
def tiny_keras_preset(keras_hub_reference) -> Path:
    return keras_hub_reference["presets"]["tiny_keras"][0]
