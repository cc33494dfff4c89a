"""Tiny random presets for the jax_lora tests, built here, never downloaded.

- `tiny_hf_preset` (tests/conftest.py): a random Hugging Face BERT folder.
- `accented_hf_preset`: tiny_hf_preset's model with an accented vocabulary and its own
  tokenizer.json (made with the `tokenizers` library), uncased with strip_accents null as
  MiniLM: texts where keras-hub's own text rules and the folder's give other ids.
- `keras_hub_reference`: one TensorFlow subprocess (keras_reference.py; pytest itself never
  imports TensorFlow) that builds `tiny_keras_preset` (a cased keras-hub BertTextClassifier
  preset with its head, saved by keras-hub) and records tf_baseline's token ids and keras-hub's
  model outputs for it, the tiny HF folders and MiniLM (when installed), and saves the
  accented model as tf_baseline and jax_lora save models, to tokenize again after reloading.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from jax_lora.models import BertConfig
from shared.data.watson import SAMPLE_DATA_DIR, load_test, load_train
from shared.runs.presets import PresetError, minilm_dir

KERAS_REFERENCE = Path(__file__).with_name("keras_reference.py")
REPO = Path(__file__).resolve().parents[2]
# Subprocess runs of the trainer compile with LLVM optimisations off: several times faster to
# compile, and every run compared with another one here uses the same flags.
SUBPROCESS_ENV = {**os.environ, "PYTHONPATH": str(REPO), "XLA_FLAGS": (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()}
# Texts where keras-hub's own text rules give other ids than a model's tokenizer.json
# (uncased, strip_accents null, as MiniLM), each with the reason.
RULE_GAPS = [
    ("Café École naïve", "accents: stripped (strip_accents null + lowercase) vs kept"),
    ("ΣΊΣΥΦΟΣ", "Greek: σισυφοσ (lowercase, accent stripped) vs σίσυφοσ"),
    ("Straße", "ß kept by lowercase vs ss by NFKC case folding"),
    ("ＡＢＣ，ｄｅｆ", "full width kept vs NFKC abc , def"),
    ("no\u00a0break", "no-break space: a space vs a letter inside the word"),
    ("line\u2028sep", "line separator: a space vs a letter inside the word"),
    ("ab\x0ccd", "form feed: removed (one word) vs a split"),
    ("bell\x07ring", "control character: removed vs a split"),
    ("soft\u00adhyphen", "soft hyphen (Cf): removed vs a split"),
    ("İstanbul", "dotted capital I: istanbul vs i + combining dot"),
    ("α" * 60, "60 characters = 120 bytes: WordPiece pieces vs tf_text's 100-byte [UNK]"),
    ("x\U0002B820y", "CJK extension E U+2B820: inside a word vs split by keras-hub"),
    ("a[SEP]b [UNK] [MASK]", "literal special tokens: their ids vs [ sep ] pieces"),
]
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
    *[text for text, _ in RULE_GAPS],
    "中文字 and 中文", "β" * 101,  # CJK is split alike; over 100 characters is [UNK] alike
]
# The accented folder's words besides single characters: each gap text above in both forms.
ACCENTED_WORDS = ["cafe", "café", "ecole", "école", "naive", "naïve", "σισυφοσ", "σίσυφοσ",
                  "straße", "strasse", "abc", "def", "ａｂｃ", "ｄｅｆ", "no", "break", "line",
                  "sep", "ab", "cd", "abcd", "bell", "ring", "bellring", "soft", "hyphen",
                  "softhyphen", "istanbul", "and"]
HF_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def accented_vocabulary(size: int) -> list[str]:
    """Specials, ACCENTED_WORDS, every character of the gap texts with and without ##, then
    [unusedN] up to `size` (the copied model's vocabulary size)."""
    characters = sorted({c for text, _ in RULE_GAPS for c in text
                         if c.isprintable() and not c.isspace()}
                        | set("abcdefghijklmnopqrstuvwxyz0123456789,.!?'\"-ΣσςίαβιΙ中文字")
                        | {c for word in ACCENTED_WORDS for c in word})
    tokens = list(dict.fromkeys(HF_SPECIAL_TOKENS + ACCENTED_WORDS + characters
                                + ["##" + c for c in characters]))
    if len(tokens) > size:
        raise ValueError(f"accented vocabulary has {len(tokens)} tokens, the model {size}")
    return tokens + [f"[unused{i}]" for i in range(size - len(tokens))]


def write_bert_tokenizer_json(path: Path, vocabulary: list[str], *, lowercase: bool,
                              strip_accents: bool | None = None,
                              handle_chinese_chars: bool = True) -> Path:
    """A BERT tokenizer.json made with the `tokenizers` library, with the steps of MiniLM's:
    BertNormalizer, BertPreTokenizer, WordPiece, [CLS] A [SEP] B [SEP] with type ids 0/1."""
    ids = {token: index for index, token in enumerate(vocabulary)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=handle_chinese_chars,
        strip_accents=strip_accents, lowercase=lowercase)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tokenizer.add_special_tokens(HF_SPECIAL_TOKENS)
    tokenizer.save(str(path))
    return path


@pytest.fixture(scope="session")
def accented_hf_preset(tiny_hf_preset, tmp_path_factory) -> Path:
    """tiny_hf_preset's random model with an accented vocabulary of the same size, a MiniLM-like
    tokenizer_config.json and a tokenizer.json from the `tokenizers` library."""
    folder = tmp_path_factory.mktemp("accented_hf")
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_hf_preset / name, folder / name)
    size = json.loads((folder / "config.json").read_text())["vocab_size"]
    vocabulary = accented_vocabulary(size)
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True}))
    write_bert_tokenizer_json(folder / "tokenizer.json", vocabulary, lowercase=True)
    return folder


@pytest.fixture(scope="session")
def bert_tokenizer_json():
    """write_bert_tokenizer_json, for tests (test files cannot import conftest)."""
    return write_bert_tokenizer_json


@pytest.fixture(scope="session")
def rule_gaps() -> list[tuple[str, str]]:
    return RULE_GAPS


@pytest.fixture(scope="module")
def run_env(tmp_path_factory) -> dict:
    """The environment of a test module's trainer subprocesses: SUBPROCESS_ENV plus a
    compilation cache they share (the first run compiles, the killed and the resumed one
    load its executables)."""
    cache = tmp_path_factory.mktemp("jax_cache")
    return {**SUBPROCESS_ENV, "JAX_COMPILATION_CACHE_DIR": str(cache),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


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
def keras_hub_reference(tiny_hf_preset, accented_hf_preset, make_vocabulary,
                        tmp_path_factory) -> dict:
    """{'root', 'pairs', 'presets': {name: (folder, kind)}}; the TF side's results are
    root/<name>_tokens.npz (tf_baseline's tokenization) and root/<name>_outputs.npz, the export
    round trip of the tiny HF model root/exported + root/export.npz, and the accented model
    saved by tf_baseline (root/tf_saved) and exported by jax_lora (root/exported_accented),
    with tf_baseline's tokens after reloading each (root/<folder>_tokens.npz); see
    keras_reference.py."""
    root = tmp_path_factory.mktemp("keras_hub_reference")
    pairs = make_sentence_pairs([load_train(SAMPLE_DATA_DIR), load_test(SAMPLE_DATA_DIR)])
    (root / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    vocabulary = make_vocabulary(root / "vocabulary.txt", lowercase=False)
    presets = {"tiny_keras": (root / "tiny_keras", "keras_dir"), "tiny_hf": (tiny_hf_preset, "hf"),
               "accented": (accented_hf_preset, "hf")}
    try:
        presets["minilm"] = (minilm_dir(), "hf")
    except PresetError:
        pass
    named = [f"{name}={path}" for name, (path, _) in presets.items() if name != "tiny_keras"]
    run_keras_reference("reference", root, vocabulary, root / "pairs.json", tiny_hf_preset,
                        accented_hf_preset, *named)
    return {"root": root, "pairs": pairs, "presets": presets}


@pytest.fixture(scope="session")
def tiny_keras_preset(keras_hub_reference) -> Path:
    return keras_hub_reference["presets"]["tiny_keras"][0]


# ---------------------------------------------------------------- XLM-R (issue #20)

from tests.xlmr_fixtures import (XLMR_RULE_GAPS, train_sentencepiece,  # noqa: E402
                                 write_tiny_xlmr_hf)


@pytest.fixture(scope="session")
def xlmr_reference(tmp_path_factory) -> dict:
    """The tiny XLM-R of tests/xlmr_fixtures.py: {'root', 'pairs', 'spm', 'hf', 'keras'}. `hf`
    is the Hugging Face folder; `keras` (root/tiny_xlmr) keras-hub's conversion of it with its
    head, saved by save_to_preset in one TensorFlow subprocess (keras_reference.py xlmr), which
    also writes keras-hub's ids of `pairs` (sample train + test rows, the edge texts, each
    XLMR_RULE_GAPS text paired with itself) from the preset (root/xlmr_tokens.npz) and from
    the folder (root/xlmr_hf_tokens.npz), and the preset's outputs (root/xlmr_outputs.npz)."""
    root = tmp_path_factory.mktemp("xlmr_reference")
    spm = train_sentencepiece(root / "sample.spm")
    hf = write_tiny_xlmr_hf(root / "tiny_xlmr_hf", spm)
    pairs = make_sentence_pairs([load_train(SAMPLE_DATA_DIR), load_test(SAMPLE_DATA_DIR)])
    for text, _ in XLMR_RULE_GAPS:
        pairs["premise"].append(text)
        pairs["hypothesis"].append(text)
    (root / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    run_keras_reference("xlmr", root, hf, root / "pairs.json")
    return {"root": root, "pairs": pairs, "spm": spm, "hf": hf, "keras": root / "tiny_xlmr"}


@pytest.fixture(scope="module")
def hf():
    """torch, peft and transformers' sequence classifiers, where installed (the benchmark
    peer); the tests that compare with PEFT skip otherwise."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    return types.SimpleNamespace(torch=torch, peft=peft,
                                 Bert=transformers.BertForSequenceClassification,
                                 XLMR=transformers.XLMRobertaForSequenceClassification)
