"""jax_lora's tokenizer vs keras-hub's BertTextClassifierPreprocessor (TensorFlow, in a
subprocess): identical token ids, segment ids and padding masks."""

import collections
import json
import re

import numpy as np
import pytest

from jax_lora.tokenizer import Tokenizer
from shared.data import load_test, load_train

FIELDS = ("token_ids", "segment_ids", "padding_mask")
SAMPLE_LENGTHS = (512, 64, 16)  # as keras_reference.LENGTHS
WATSON_LENGTHS = (512, 64)


def _assert_identical(tokenizer, reference, pairs, lengths):
    for length in lengths:
        ours = tokenizer(pairs["premise"], pairs["hypothesis"], length)
        for field in FIELDS:
            theirs = reference[f"{field}_{length}"].astype(np.int32)
            rows = np.flatnonzero((ours[field] != theirs).any(axis=1))
            assert not rows.size, (f"{field} at length {length} differs on {rows.size} rows, "
                                   f"first: {pairs['premise'][rows[0]]!r} / "
                                   f"{pairs['hypothesis'][rows[0]]!r}")
    # Some rows must have been cut at the shortest length, or truncation went untested.
    assert (reference[f"padding_mask_{min(lengths)}"].sum(axis=1) == min(lengths)).any()


def _preset(keras_hub_reference, name):
    if name not in keras_hub_reference["presets"]:
        pytest.skip("all-MiniLM-L6-v2 package not installed")
    return keras_hub_reference["presets"][name]


@pytest.mark.parametrize("name, lowercase", [("tiny_keras", False), ("tiny_hf", True),
                                             ("minilm", True)])
def test_casing_comes_from_the_preset(keras_hub_reference, name, lowercase):
    tokenizer = Tokenizer.from_preset_dir(*_preset(keras_hub_reference, name))
    keras_hub_decided = np.load(keras_hub_reference["root"] / f"{name}_tokens.npz")["lowercase"]
    assert tokenizer.lowercase is lowercase and bool(keras_hub_decided) is lowercase


@pytest.mark.parametrize("name", ["tiny_keras", "tiny_hf", "minilm"])
def test_ids_match_keras_hub_on_sample_and_edge_cases(keras_hub_reference, name):
    tokenizer = Tokenizer.from_preset_dir(*_preset(keras_hub_reference, name))
    reference = dict(np.load(keras_hub_reference["root"] / f"{name}_tokens.npz"))
    _assert_identical(tokenizer, reference, keras_hub_reference["pairs"], SAMPLE_LENGTHS)


def _cased_vocabulary(pairs, words=30000):
    """A cased multilingual vocabulary from the data itself (the mBERT vocabulary is not
    available offline): frequent words, their endings as ## pieces, every character."""
    text = " ".join(pairs["premise"] + pairs["hypothesis"])
    counts = collections.Counter(re.findall(r"\w+", text))
    frequent = [w for w, _ in counts.most_common(words)]
    endings = sorted({"##" + w[-k:] for w in frequent[:5000] for k in (2, 3) if len(w) > k + 1})
    characters = sorted({c for c in text if not c.isspace()})
    tokens = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + frequent + endings + characters
              + ["##" + c for c in characters])
    return list(dict.fromkeys(tokens))  # tf_text requires unique tokens


@pytest.mark.slow
def test_ids_match_keras_hub_on_all_watson_rows(watson_dir, keras_hub_reference, sentence_pairs,
                                                keras_reference, tmp_path):
    """Every train + test row, with a cased multilingual vocabulary and with MiniLM's."""
    pairs = sentence_pairs([load_train(watson_dir), load_test(watson_dir)])
    assert len(pairs["premise"]) - len(pairs["premise"][17315:]) == 12120 + 5195
    vocabulary = _cased_vocabulary(pairs)
    (tmp_path / "cased_vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    (tmp_path / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    jobs = {"cased": {"vocabulary": str(tmp_path / "cased_vocab.txt"), "lowercase": False}}
    if "minilm" in keras_hub_reference["presets"]:
        jobs["minilm"] = {"preset": str(keras_hub_reference["presets"]["minilm"][0])}
    for name, job in jobs.items():
        job.update(pairs=str(tmp_path / "pairs.json"), out=str(tmp_path / f"{name}.npz"),
                   lengths=WATSON_LENGTHS)
    (tmp_path / "jobs.json").write_text(json.dumps(list(jobs.values())))
    keras_reference("tokenize", tmp_path / "jobs.json")
    tokenizers = {"cased": Tokenizer(vocabulary, lowercase=False)}
    if "minilm" in jobs:
        tokenizers["minilm"] = Tokenizer.from_preset_dir(*keras_hub_reference["presets"]["minilm"])
    for name, tokenizer in tokenizers.items():
        _assert_identical(tokenizer, dict(np.load(tmp_path / f"{name}.npz")), pairs,
                          WATSON_LENGTHS)


def test_vocabulary_without_specials_is_rejected():
    with pytest.raises(ValueError, match=r"no \[SEP\] token"):
        Tokenizer(["[PAD]", "[UNK]", "[CLS]", "a"], lowercase=False)


def test_duplicate_tokens_are_rejected_like_tf_text():
    with pytest.raises(ValueError, match="'a' twice"):
        Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "a"], lowercase=False)


def test_sequence_length_too_short_is_rejected(tiny_hf_preset):
    with pytest.raises(ValueError, match="sequence_length=3"):
        Tokenizer.from_preset_dir(tiny_hf_preset, "hf")(["a"], ["b"], 3)
