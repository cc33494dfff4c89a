"""shared.runs.tokenization: a Hugging Face BERT folder's own text rules, read from tokenizer.json
or tokenizer_config.json, saved beside a keras-hub preset and read back; folders whose rules
keras-hub's WordPiece cannot follow are refused with one line naming file and field. (Token
ids against tokenizer.json, in both trainers: tests/jax_lora/test_tokenizer.py.)"""

import json

import pytest
from tokenizers.implementations import BertWordPieceTokenizer

from shared.runs.tokenization import (NORMALIZER_FILE, README_FILE, TextNormalizer,
                                      TokenizationError, from_hf_folder, load_normalizer,
                                      read_normalizer)

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
VOCABULARY = [*SPECIALS, "cafe", "café", "a", "b", "##b"]


def _folder(tmp_path, config=None, *, tokenizer_json=True, lowercase=True):
    """vocab.txt + tokenizer_config.json (+ a tokenizer.json by the `tokenizers` library)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCABULARY) + "\n", encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        config if config is not None else {"do_lower_case": lowercase}))
    if tokenizer_json:
        BertWordPieceTokenizer({t: i for i, t in enumerate(VOCABULARY)},
                               lowercase=lowercase).save(str(tmp_path / "tokenizer.json"))
    return tmp_path


def _uncased(**changes) -> TextNormalizer:
    return TextNormalizer(**{"lowercase": True, "strip_accents": None,
                             "handle_chinese_chars": True, "special_tokens": SPECIALS, **changes})


@pytest.mark.parametrize("text, words", [
    ("Café ÉCOLE", "cafe ecole"),  # strip_accents null + lowercase: accents go
    ("ΣΊΣΥΦΟΣ", "σισυφοσ"),  # per-character lowercase: no final ς
    ("Straße，ＡＢ", "straße ， ａｂ"),  # no NFKC: ß and full width stay
    ("no\u00a0break\x07bell\u00adx", "no breakbellx"),  # NBSP a space; Cc, Cf removed
    ("中文x", "中 文 x"),  # CJK split
    ("a[SEP]b [sep]", "a [SEP] b [ sep ]"),  # added tokens matched before lowercasing
    ("β" * 100 + " " + "β" * 101, "β" * 100 + " [UNK]"),  # WordPiece's limit, in characters
])
def test_uncased_rules(text, words):
    assert _uncased().normalize(text) == words


def test_strip_accents_false_keeps_them_and_the_batch_call_maps_each_text():
    assert _uncased(strip_accents=False)(["Café", "ÉCOLE"]) == ["café", "école"]


def test_the_folders_two_files_give_the_same_rules(tmp_path):
    from_json = from_hf_folder(_folder(tmp_path / "json", tokenizer_json=True))
    from_config = from_hf_folder(_folder(tmp_path / "config", tokenizer_json=False))
    assert (from_json.source, from_config.source) == ("tokenizer.json", "tokenizer_config.json")
    assert from_json.describe() | {"source": None} == from_config.describe() | {"source": None}
    assert from_json.describe()["lowercase"] is True and from_json.strip_accents is None


def test_cased_multilingual_bert_keeps_case_and_accents(tmp_path):
    """bert_base_multi: keras-hub's preset does not lowercase (lowercase=False, strip_accents
    False) and stays on keras-hub's tokenizer (no normaliser for a preset name). Hugging Face's
    bert-base-multilingual-cased says do_lower_case false and no strip_accents (null: strip only
    when lowercasing), so even its own rules change no letter: casing and accents agree."""
    assert load_normalizer("bert_base_multi") is None
    cased = from_hf_folder(_folder(tmp_path, {"do_lower_case": False}, tokenizer_json=False))
    text = "Café ΣΊΣΥΦΟΣ Straße"
    assert cased.normalize(text) == text


def test_saved_beside_a_preset_and_read_back(tmp_path):
    normalizer = _uncased(source="tokenizer_config.json")
    normalizer.save(tmp_path)
    assert read_normalizer(tmp_path) == normalizer
    readme = (tmp_path / README_FILE).read_text()
    assert NORMALIZER_FILE in readme and "split_on_cjk" in readme
    assert json.loads((tmp_path / NORMALIZER_FILE).read_text())["keras_hub_tokenizer"][
        "split_on_cjk"] is False
    assert read_normalizer(tmp_path / "nothing") is None  # a keras-hub preset of its own
    # A preset saved before the project's rename still reads; an unknown format does not.
    saved = json.loads((tmp_path / NORMALIZER_FILE).read_text())
    assert saved["format"] == "watson-peft/hf-bert-text-normalizer/1"
    (tmp_path / NORMALIZER_FILE).write_text(
        json.dumps({**saved, "format": "watson-compare/hf-bert-text-normalizer/1"}))
    assert read_normalizer(tmp_path) == normalizer
    (tmp_path / NORMALIZER_FILE).write_text(
        json.dumps({**saved, "format": "watson-peft/hf-bert-text-normalizer/2"}))
    with pytest.raises(TokenizationError, match="re-save the preset"):
        read_normalizer(tmp_path)


def _edit_tokenizer_json(folder, edit):
    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(normalizer={"type": "Lowercase"}), "normalizer.type='Lowercase'"),
    (lambda s: s["normalizer"].update(clean_text=False), "normalizer.clean_text=False"),
    (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer.type"),
    (lambda s: s["model"]["vocab"].update({"extra": 99}), "differs from vocab.txt"),
    (lambda s: s["post_processor"].update(type="RobertaProcessing"), "post_processor packs"),
    (lambda s: s["added_tokens"][1].update(normalized=True), r"\[UNK\]'\]\.normalized"),
    (lambda s: s["added_tokens"].pop(), r"\[MASK\] is not a special"),
])
def test_rules_keras_hub_cannot_follow_are_refused(tmp_path, edit, message):
    folder = _folder(tmp_path)
    _edit_tokenizer_json(folder, edit)
    with pytest.raises(TokenizationError, match=message) as error:
        from_hf_folder(folder)
    assert "\n" not in str(error.value) and "tokenizer.json" in str(error.value)


@pytest.mark.parametrize("config, message", [
    ({}, "no do_lower_case"),
    ({"do_lower_case": True, "do_basic_tokenize": False}, "do_basic_tokenize=False"),
    ({"do_lower_case": True, "additional_special_tokens": ["[NEW]"]}, r"'\[NEW\]' is not in"),
])
def test_tokenizer_configs_keras_hub_cannot_follow_are_refused(tmp_path, config, message):
    with pytest.raises(TokenizationError, match=message) as error:
        from_hf_folder(_folder(tmp_path, config, tokenizer_json=False))
    assert "\n" not in str(error.value) and "tokenizer_config.json" in str(error.value)
