"""jax_lora's tokenizer vs tf_baseline's keras-hub tokenization (TensorFlow, in a subprocess) and
vs a Hugging Face folder's own tokenizer.json (the `tokenizers` library): identical token ids,
segment ids and padding masks."""

import collections
import json
import re

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer

from jax_lora.tokenizer import Tokenizer
from shared.data.watson import load_test, load_train
from shared.runs.tokenization import NORMALIZER_FILE, README_FILE, read_normalizer
from tests.jax_lora.helpers import tokenizer_json_arrays

FIELDS = ("token_ids", "segment_ids", "padding_mask")
SAMPLE_LENGTHS = (512, 64, 16)  # as keras_reference.LENGTHS
WATSON_LENGTHS = (512, 64)
# Compared with tokenizer.json at this length, where no pair is cut (checked each time): the
# packing and truncation stay keras-hub's round-robin packer, tokenizer.json's are not used.
UNCUT = 512
WATSON_ROWS = {"train": 12120, "test": 5195}
HF_FOLDERS = ("tiny_hf", "accented", "minilm")


def _assert_same(ours: dict, theirs: dict, pairs: dict, what: str) -> None:
    for field in FIELDS:
        rows = np.flatnonzero((ours[field] != theirs[field].astype(np.int32)).any(axis=1))
        assert not rows.size, (f"{what}: {field} differs on {rows.size} rows, first: "
                               f"{pairs['premise'][rows[0]]!r} / {pairs['hypothesis'][rows[0]]!r}")


def _at(reference: dict, length: int) -> dict:
    return {field: reference[f"{field}_{length}"] for field in FIELDS}


def _assert_identical(tokenizer, reference, pairs, lengths):
    for length in lengths:
        _assert_same(tokenizer(pairs["premise"], pairs["hypothesis"], length),
                     _at(reference, length), pairs, f"length {length}")
    # Some rows must have been cut at the shortest length, or truncation went untested.
    assert (reference[f"padding_mask_{min(lengths)}"].sum(axis=1) == min(lengths)).any()


def _preset(keras_hub_reference, name):
    if name not in keras_hub_reference["presets"]:
        pytest.skip("all-MiniLM-L6-v2 package not installed")
    return keras_hub_reference["presets"][name]


@pytest.fixture(scope="module")
def tokenizer_json(keras_hub_reference, bert_tokenizer_json, tmp_path_factory):
    """name -> the folder's tokenizer.json; for the tiny HF folder, which has none, the one
    transformers would convert its tokenizer_config.json (uncased, strip_accents null) to."""
    def path(name):
        folder, _ = _preset(keras_hub_reference, name)
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
        vocabulary = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        assert json.loads((folder / "tokenizer_config.json").read_text()) == {"do_lower_case": True}
        return bert_tokenizer_json(tmp_path_factory.mktemp(name) / "tokenizer.json", vocabulary,
                                   lowercase=True)
    return path


@pytest.mark.parametrize("name, lowercase", [("tiny_keras", False), ("tiny_hf", True),
                                             ("accented", True), ("minilm", True)])
def test_casing_comes_from_the_preset(keras_hub_reference, name, lowercase):
    """A keras-hub preset keeps keras-hub's rules (its lowercase flag); a Hugging Face folder
    brings its own, which decide the casing on both sides."""
    tokenizer = Tokenizer.from_preset_dir(*_preset(keras_hub_reference, name))
    assert (tokenizer.normalizer is None) is (name == "tiny_keras")
    rules = tokenizer.normalizer
    ours = rules.lowercase if rules is not None else tokenizer.lowercase
    tf_decided = np.load(keras_hub_reference["root"] / f"{name}_tokens.npz")["lowercase"]
    assert ours is lowercase and bool(tf_decided) is lowercase


@pytest.mark.parametrize("name", ["tiny_keras", *HF_FOLDERS])
def test_ids_match_tf_baseline_on_sample_and_edge_cases(keras_hub_reference, name):
    tokenizer = Tokenizer.from_preset_dir(*_preset(keras_hub_reference, name))
    reference = dict(np.load(keras_hub_reference["root"] / f"{name}_tokens.npz"))
    _assert_identical(tokenizer, reference, keras_hub_reference["pairs"], SAMPLE_LENGTHS)


@pytest.mark.parametrize("name", HF_FOLDERS)
def test_keras_hub_rules_replica_matches_keras_hub(keras_hub_reference, name):
    """Tokenizer(vocab, lowercase=True) is what keras-hub's converter builds for an uncased
    folder (and what a lowercasing keras-hub preset does): still exact."""
    folder, _ = _preset(keras_hub_reference, name)
    vocabulary = Tokenizer.from_preset_dir(folder, "hf").vocabulary
    reference = dict(np.load(keras_hub_reference["root"] / f"{name}_keras_hub_rules.npz"))
    _assert_identical(Tokenizer(vocabulary, lowercase=True), reference,
                      keras_hub_reference["pairs"], SAMPLE_LENGTHS)


@pytest.mark.parametrize("name", HF_FOLDERS)
def test_both_trainers_match_the_folders_tokenizer_json(keras_hub_reference, tokenizer_json,
                                                        name):
    pairs = keras_hub_reference["pairs"]
    theirs = tokenizer_json_arrays(tokenizer_json(name), pairs, UNCUT)
    tokenizer = Tokenizer.from_preset_dir(*_preset(keras_hub_reference, name))
    _assert_same(tokenizer(pairs["premise"], pairs["hypothesis"], UNCUT), theirs, pairs,
                 f"jax_lora vs {name} tokenizer.json")
    reference = dict(np.load(keras_hub_reference["root"] / f"{name}_tokens.npz"))
    _assert_same({f: reference[f"{f}_{UNCUT}"] for f in FIELDS}, theirs, pairs,
                 f"tf_baseline vs {name} tokenizer.json")


def test_every_rule_gap_is_closed(accented_hf_preset, rule_gaps):
    """Each text of RULE_GAPS: keras-hub's own rules give other ids than tokenizer.json (the gap
    is real), the folder's rules the same ids (it is closed)."""
    reference = HFTokenizer.from_file(str(accented_hf_preset / "tokenizer.json"))
    ours = Tokenizer.from_preset_dir(accented_hf_preset, "hf")
    keras_hub_rules = Tokenizer(ours.vocabulary, lowercase=True)
    for text, why in rule_gaps:
        theirs = reference.encode(text).ids[1:-1]  # without [CLS] and [SEP]
        assert ours.encode(text) == theirs, f"{text!r} ({why})"
        assert keras_hub_rules.encode(text) != theirs, f"{text!r} is no gap ({why})"
        assert ours.oov_id not in theirs or text.startswith("a[SEP]"), \
            f"{text!r}: the accented vocabulary should cover it"


@pytest.mark.parametrize("folder", ["tf_saved", "exported_accented"])
def test_saved_models_tokenize_as_tokenizer_json_when_reloaded(keras_hub_reference,
                                                               accented_hf_preset, folder):
    """tf_baseline's run preset/ (save_preset) and jax_lora's export carry the text rules;
    reloaded by tf_baseline (load_preprocessor) and by jax_lora (from_preset_dir), both give
    the ids of the original folder's tokenizer.json."""
    root, pairs = keras_hub_reference["root"], keras_hub_reference["pairs"]
    saved = root / folder
    assert (saved / README_FILE).is_file() and (saved / "preprocessor.json").is_file()
    assert read_normalizer(saved) == Tokenizer.from_preset_dir(accented_hf_preset,
                                                               "hf").normalizer
    theirs = tokenizer_json_arrays(accented_hf_preset / "tokenizer.json", pairs, UNCUT)
    reloaded = Tokenizer.from_preset_dir(saved, "keras_dir")
    _assert_same(reloaded(pairs["premise"], pairs["hypothesis"], UNCUT), theirs, pairs,
                 f"jax_lora from {folder}")
    tf_reloaded = dict(np.load(root / f"{folder}_tokens.npz"))
    _assert_same(_at(tf_reloaded, UNCUT), theirs, pairs, f"tf_baseline from {folder}")
    assert json.loads((saved / NORMALIZER_FILE).read_text())["source"] == "tokenizer.json"


def test_a_normaliser_decides_casing_itself(accented_hf_preset):
    normalizer = Tokenizer.from_preset_dir(accented_hf_preset, "hf").normalizer
    vocabulary = Tokenizer.from_preset_dir(accented_hf_preset, "hf").vocabulary
    with pytest.raises(ValueError, match="lowercase=True with a text normaliser"):
        Tokenizer(vocabulary, lowercase=True, normalizer=normalizer)


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
def test_ids_match_tf_baseline_and_tokenizer_json_on_all_watson_rows(
        watson_dir, keras_hub_reference, sentence_pairs, keras_reference, tmp_path):
    """Every train + test row (and the edge texts): with a cased multilingual vocabulary under
    keras-hub's rules, and with MiniLM as tf_baseline tokenizes for it, where the ids must
    also be MiniLM's own tokenizer.json's."""
    frames = {"train": load_train(watson_dir), "test": load_test(watson_dir)}
    assert {part: len(frame) for part, frame in frames.items()} == WATSON_ROWS
    pairs = sentence_pairs(list(frames.values()))
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
        reference = dict(np.load(tmp_path / f"{name}.npz"))
        _assert_identical(tokenizer, reference, pairs, WATSON_LENGTHS)
        if name == "minilm":  # tf_baseline = jax_lora just checked; both = tokenizer.json
            theirs = tokenizer_json_arrays(jobs["minilm"]["preset"] + "/tokenizer.json", pairs,
                                           UNCUT)
            _assert_same(_at(reference, UNCUT), theirs, pairs, "MiniLM vs its tokenizer.json")
    if "minilm" not in jobs:
        pytest.skip("cased vocabulary checked; all-MiniLM-L6-v2 package not installed")


def test_vocabulary_without_specials_is_rejected():
    with pytest.raises(ValueError, match=r"no \[SEP\] token"):
        Tokenizer(["[PAD]", "[UNK]", "[CLS]", "a"], lowercase=False)


def test_duplicate_tokens_are_rejected_like_tf_text():
    with pytest.raises(ValueError, match="'a' twice"):
        Tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "a"], lowercase=False)


def test_sequence_length_too_short_is_rejected(tiny_hf_preset):
    with pytest.raises(ValueError, match="sequence_length=3"):
        Tokenizer.from_preset_dir(tiny_hf_preset, "hf")(["a"], ["b"], 3)


def test_longest_first_is_hugging_faces_rule_where_round_robin_differs():
    """tokenizers' own truncation (a pair, longest_first) against ours on every split of a
    budget: equal everywhere, and round_robin differs where the spare token of an odd budget
    goes to the longer text or, on a tie, to the second."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    from jax_lora.tokenizer import longest_first, round_robin

    vocab = {f"w{i}": i for i in range(200)}
    hf = HFTokenizer(models.WordLevel(vocab, unk_token="w0"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    differs = 0
    for n1, n2, budget in [(a, b, c) for a in (0, 3, 10, 31) for b in (1, 4, 10, 40)
                           for c in (5, 6, 11, 20, 41)]:
        first, second = list(range(1, n1 + 1)), list(range(100, 100 + n2))
        hf.enable_truncation(budget, strategy="longest_first")
        text = (" ".join(f"w{i}" for i in first), " ".join(f"w{i}" for i in second))
        encoding = hf.encode(*text)
        kept_first = [i for i, t in zip(encoding.ids, encoding.type_ids) if t == 0]
        kept_second = [i for i, t in zip(encoding.ids, encoding.type_ids) if t == 1]
        assert longest_first(first, second, budget) == (kept_first, kept_second), (n1, n2, budget)
        differs += round_robin(first, second, budget) != (kept_first, kept_second)
    assert differs > 0
