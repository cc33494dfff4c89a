"""What both trainers' tokenizers share: the packing rule's floor on the sequence length, and a
Hugging Face folder's own text rules (TextNormalizer), run before keras-hub-style WordPiece.

Pairs are packed as [CLS] premise [SEP] hypothesis [SEP] (keras-hub's MultiSegmentPacker, the
starter notebook's), so a sequence holds one token of each text from five positions on.

Why a normaliser: keras-hub's Hugging Face converter reads only `do_lower_case` and lowercases
with NFKC case folding, keeping accents (ß -> ss, ς -> σ, full-width ， -> , but é stays é),
while the model was trained on its tokenizer.json's rules: BertNormalizer (drop control
characters, spaces around CJK, accents stripped when `strip_accents` is true or null and
lowercasing, per-character lowercase), BertPreTokenizer (split on whitespace, isolate
punctuation) and WordPiece (words over `max_input_chars_per_word` *characters* -> [UNK]).
With MiniLM on Watson that left 3 in 4 non-English rows with other ids than the model's own
tokenizer.

So for a Hugging Face folder both trainers run those rules here, through the `tokenizers`
library (the code of HF's fast tokenizer), and hand keras-hub (TF) or jax_lora's tokenizer
the words joined by single spaces, with literal added tokens ([SEP]...) kept whole and
over-long words already replaced by the unknown token. What is left to the WordPiece side is
`keras_hub_tokenizer_kwargs`: no casing or accent rule of its own, no CJK splitting (the
normaliser decides it), added tokens recognised in strings, and no 100-byte word limit
(`max_bytes_per_word`). Packing and truncation stay keras-hub's round-robin packer, not
tokenizer.json's `truncation`. keras-hub preset names and keras-hub folders without
NORMALIZER_FILE keep keras-hub's own rules (normalizer None).

A model saved from a run (tf_baseline's preset/, jax_lora's export) carries the normaliser as
NORMALIZER_FILE beside keras-hub's files, with a README saying what a plain loader must do.
No TensorFlow, no JAX here.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer

MIN_SEQUENCE_LENGTH = 5

NORMALIZER_FILE = "text_normalizer.json"  # beside a saved keras-hub preset's own files
README_FILE = "README.md"
FORMAT = "watson-peft/hf-bert-text-normalizer/1"
# What NORMALIZER_FILE said before the project was renamed; such saved presets still read.
READ_FORMATS = (FORMAT, "watson-compare/hf-bert-text-normalizer/1")
# A word the normaliser lets through has at most max_input_chars_per_word characters, so at
# most 4x as many UTF-8 bytes; the WordPiece side must not cut it (tf_text cuts at 100 bytes).
MAX_UTF8_BYTES_PER_CHAR = 4
# keras-hub's BertTokenizer and MultiSegmentPacker hard-code these two: a tokenizer that packs
# with other tokens cannot be reproduced.
CLS, SEP = "[CLS]", "[SEP]"
# The tokens keras-hub's BertTokenizer itself keeps whole in text (special_tokens_in_strings);
# a normaliser must keep them too, or a literal [MASK] would get different ids on the two sides.
KERAS_HUB_BERT_SPECIALS = (CLS, SEP, "[PAD]", "[MASK]")
PAIR_TEMPLATE = [(CLS, 0), ("A", 0), (SEP, 0), ("B", 1), (SEP, 1)]
# transformers' BertTokenizer defaults for a tokenizer_config.json without these fields.
HF_SPECIAL_DEFAULTS = {"unk_token": "[UNK]", "sep_token": SEP, "pad_token": "[PAD]",
                       "cls_token": CLS, "mask_token": "[MASK]"}
HF_MAX_INPUT_CHARS_PER_WORD = 100  # transformers' WordpieceTokenizer and tokenizers' default


class TokenizationError(ValueError):
    """A tokenizer configuration that cannot be followed; the message names file and field."""


@dataclass(frozen=True)
class TextNormalizer:
    """A Hugging Face BERT folder's text rules up to WordPiece, as text -> text.

    `special_tokens` are the folder's added tokens: matched in the raw text first and kept
    whole (case-sensitive, not normalised), as tokenizers' added-token extraction does."""
    lowercase: bool
    strip_accents: bool | None  # None: strip when lowercasing (BertNormalizer's rule)
    handle_chinese_chars: bool
    special_tokens: tuple[str, ...]
    unk_token: str = "[UNK]"
    max_input_chars_per_word: int = HF_MAX_INPUT_CHARS_PER_WORD
    source: str = "tokenizer.json"  # what the rules were read from (kept when saved)

    def __post_init__(self):
        if self.unk_token not in self.special_tokens:
            raise TokenizationError(f"{self.source}: unknown token {self.unk_token!r} is not "
                                    f"among the special tokens {list(self.special_tokens)}")
        missing = [t for t in KERAS_HUB_BERT_SPECIALS if t not in self.special_tokens]
        if missing:
            raise TokenizationError(f"{self.source}: {missing[0]} is not a special (added) "
                                    f"token, but keras-hub's BertTokenizer treats it as one")
        for token in self.special_tokens:
            # Then no normalised word, nor the spaces between words, can hold a special token,
            # so the WordPiece side's special-token matching only finds the ones kept here.
            if len(self._pre_tokenizer.pre_tokenize_str(token)) < 2 or \
                    any(c.isspace() for c in token):
                raise TokenizationError(f"{self.source}: special token {token!r} is not "
                                        f"supported; only BERT-style tokens like [SEP] are")

    @functools.cached_property
    def _normalizer(self):
        return BertNormalizer(clean_text=True, handle_chinese_chars=self.handle_chinese_chars,
                              strip_accents=self.strip_accents, lowercase=self.lowercase)

    @functools.cached_property
    def _pre_tokenizer(self):
        return BertPreTokenizer()

    @functools.cached_property
    def _special_pattern(self) -> re.Pattern:
        # Longest first: at one position the longest token wins, as tokenizers' matcher does.
        tokens = sorted(self.special_tokens, key=len, reverse=True)
        return re.compile("(" + "|".join(map(re.escape, tokens)) + ")")

    def normalize(self, text: str) -> str:
        """Words as the folder's tokenizer sees them, joined by single spaces."""
        words = []
        for index, piece in enumerate(self._special_pattern.split(text)):
            if index % 2:  # a captured special token
                words.append(piece)
                continue
            normalized = self._normalizer.normalize_str(piece)
            for word, _ in self._pre_tokenizer.pre_tokenize_str(normalized):
                # WordPiece's limit is in characters; the WordPiece side sees only bytes.
                too_long = len(word) > self.max_input_chars_per_word
                words.append(self.unk_token if too_long else word)
        return " ".join(words)

    def __call__(self, texts: Iterable[str]) -> list[str]:
        return [self.normalize(text) for text in texts]

    @property
    def max_bytes_per_word(self) -> int:
        return MAX_UTF8_BYTES_PER_CHAR * self.max_input_chars_per_word

    @property
    def keras_hub_tokenizer_kwargs(self) -> dict:
        """keras_hub.models.BertTokenizer arguments for text this normaliser produced (plus
        max_bytes_per_word, which keras-hub does not expose, and split_on_cjk, which keras-hub
        does not save)."""
        return {"lowercase": False, "strip_accents": False, "split_on_cjk": False,
                "special_tokens": list(self.special_tokens), "special_tokens_in_strings": True}

    def describe(self) -> dict:
        """The run manifest's record of the text rules."""
        return {"normalizer": "huggingface BertNormalizer", "clean_text": True,
                "lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "handle_chinese_chars": self.handle_chinese_chars,
                "pre_tokenizer": "huggingface BertPreTokenizer",
                "special_tokens": list(self.special_tokens), "unk_token": self.unk_token,
                "max_input_chars_per_word": self.max_input_chars_per_word,
                "source": self.source}

    def to_json(self) -> dict:
        """NORMALIZER_FILE's content: tokenizers' own JSON for the two steps, and the rest."""
        return {"format": FORMAT,
                "normalizer": {"type": "BertNormalizer", "clean_text": True,
                               "handle_chinese_chars": self.handle_chinese_chars,
                               "strip_accents": self.strip_accents,
                               "lowercase": self.lowercase},
                "pre_tokenizer": {"type": "BertPreTokenizer"},
                "special_tokens": list(self.special_tokens), "unk_token": self.unk_token,
                "max_input_chars_per_word": self.max_input_chars_per_word,
                "keras_hub_tokenizer": {**self.keras_hub_tokenizer_kwargs,
                                        "max_bytes_per_word": self.max_bytes_per_word},
                "source": self.source}

    def save(self, preset_dir: str | Path) -> Path:
        """Writes NORMALIZER_FILE and README_FILE into a saved keras-hub preset folder."""
        preset_dir = Path(preset_dir)
        path = preset_dir / NORMALIZER_FILE
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        (preset_dir / README_FILE).write_text(_README.format(file=NORMALIZER_FILE),
                                              encoding="utf-8")
        return path


def describe_normalizer(normalizer: TextNormalizer | None) -> dict | None:
    """For the manifests: the normaliser's record, None where keras-hub's own rules apply."""
    return normalizer.describe() if normalizer is not None else None


def normalizer_for(directory: str | Path, kind: str) -> TextNormalizer | None:
    """The text rules of a preset folder of `kind` (shared.runs.presets.preset_kind): a Hugging
    Face folder's own, a saved preset's NORMALIZER_FILE, else None (keras-hub's rules)."""
    directory = Path(directory)
    if kind == "hf":
        return from_hf_folder(directory)
    if kind == "keras_dir":
        return read_normalizer(directory)
    return None


def load_normalizer(preset: str | Path) -> TextNormalizer | None:
    """normalizer_for a --preset value; a keras-hub preset name keeps keras-hub's rules."""
    from shared.runs.presets import preset_dir, preset_kind

    if preset_kind(str(preset)) == "name":
        return None
    return normalizer_for(*preset_dir(str(preset)))  # an alias names a folder


def read_normalizer(preset_dir: str | Path) -> TextNormalizer | None:
    """A saved preset's NORMALIZER_FILE, or None when it has none."""
    path = Path(preset_dir) / NORMALIZER_FILE
    if not path.is_file():
        return None
    data = _read_json(path)
    if data.get("format") not in READ_FORMATS:
        raise TokenizationError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}; "
                                f"re-save the preset with this version")
    normalizer = data["normalizer"]
    return TextNormalizer(lowercase=normalizer["lowercase"],
                          strip_accents=normalizer["strip_accents"],
                          handle_chinese_chars=normalizer["handle_chinese_chars"],
                          special_tokens=tuple(data["special_tokens"]),
                          unk_token=data["unk_token"],
                          max_input_chars_per_word=data["max_input_chars_per_word"],
                          source=data["source"])


def from_hf_folder(directory: str | Path) -> TextNormalizer:
    """A Hugging Face BERT folder's rules: from tokenizer.json when it has one (what its fast
    tokenizer runs), else from tokenizer_config.json as transformers converts it."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return _from_tokenizer_json(directory)
    return _from_tokenizer_config(directory)


def _from_tokenizer_json(directory: Path) -> TextNormalizer:
    path = directory / "tokenizer.json"
    spec = _read_json(path)
    normalizer, pre_tokenizer = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    model, post = spec.get("model") or {}, spec.get("post_processor") or {}
    _require(path, "normalizer.type", normalizer.get("type"), "BertNormalizer")
    # Without clean_text control characters stay inside words, where keras-hub would split.
    _require(path, "normalizer.clean_text", normalizer.get("clean_text"), True)
    _require(path, "pre_tokenizer.type", pre_tokenizer.get("type"), "BertPreTokenizer")
    _require(path, "model.type", model.get("type"), "WordPiece")
    _require(path, "model.continuing_subword_prefix", model.get("continuing_subword_prefix"),
             "##")
    if model.get("vocab") != _vocabulary_ids(directory / "vocab.txt"):
        raise TokenizationError(f"{path}: model.vocab differs from vocab.txt, which keras-hub "
                                f"reads; pass a folder whose two vocabularies agree")
    _check_pair_template(path, post)
    special_tokens = []
    for token in spec.get("added_tokens") or []:
        # tokenizers matches such tokens in the raw text, before normalising; other kinds
        # (normalized, lstrip/rstrip, single_word) have rules keras-hub cannot follow.
        for field, supported in (("normalized", False), ("lstrip", False), ("rstrip", False),
                                 ("single_word", False)):
            _require(path, f"added_tokens[{token.get('content')!r}].{field}",
                     token.get(field), supported)
        if model["vocab"].get(token["content"]) != token["id"]:
            raise TokenizationError(f"{path}: added token {token['content']!r} has id "
                                    f"{token['id']}, not its vocab.txt line; keras-hub would "
                                    f"give it another id")
        special_tokens.append(token["content"])
    return TextNormalizer(lowercase=normalizer["lowercase"],
                          strip_accents=normalizer["strip_accents"],
                          handle_chinese_chars=normalizer["handle_chinese_chars"],
                          special_tokens=tuple(sorted(special_tokens, key=model["vocab"].get)),
                          unk_token=model.get("unk_token", "[UNK]"),
                          max_input_chars_per_word=model.get("max_input_chars_per_word",
                                                             HF_MAX_INPUT_CHARS_PER_WORD),
                          source="tokenizer.json")


def _check_pair_template(path: Path, post: dict) -> None:
    """The pair must be packed as keras-hub packs it: [CLS] A [SEP] B [SEP], types 0 0 0 1 1."""
    if post.get("type") == "BertProcessing":
        pair = [(post["cls"][0], 0), ("A", 0), (post["sep"][0], 0), ("B", 1), (post["sep"][0], 1)]
    elif post.get("type") == "TemplateProcessing":
        pair = [(item[kind]["id"], item[kind]["type_id"])
                for item in post.get("pair", []) for kind in item]
    else:
        pair = None
    if pair != PAIR_TEMPLATE:
        raise TokenizationError(f"{path}: post_processor packs pairs as {pair}, not [CLS] A "
                                f"[SEP] B [SEP] with type ids 0 0 0 1 1 (keras-hub's packer)")


def _from_tokenizer_config(directory: Path) -> TextNormalizer:
    """What transformers' BertConverter builds from a slow BertTokenizer's configuration."""
    path = directory / "tokenizer_config.json"
    config = _read_json(path)
    if "do_lower_case" not in config:
        # keras-hub's converter needs it too; transformers would assume true.
        raise TokenizationError(f"{path}: no do_lower_case; add it (true for an uncased model)")
    _require(path, "do_basic_tokenize", config.get("do_basic_tokenize", True), True)
    _require(path, "never_split", config.get("never_split") or None, None)
    special = {name: _content(config.get(name, default))
               for name, default in HF_SPECIAL_DEFAULTS.items()}
    _require(path, "cls_token", special["cls_token"], CLS)
    _require(path, "sep_token", special["sep_token"], SEP)
    tokens = list(special.values()) + [_content(t) for t in
                                       config.get("additional_special_tokens") or []]
    vocabulary = _vocabulary_ids(directory / "vocab.txt")
    for token in tokens:
        if token not in vocabulary:
            raise TokenizationError(f"{path}: special token {token!r} is not in vocab.txt; "
                                    f"keras-hub cannot give it an id")
    return TextNormalizer(lowercase=bool(config["do_lower_case"]),
                          strip_accents=config.get("strip_accents"),
                          handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
                          special_tokens=tuple(sorted(set(tokens), key=vocabulary.get)),
                          unk_token=special["unk_token"], source="tokenizer_config.json")


def _content(token) -> str:
    # transformers may save a token as {"content": "[UNK]", "__type": "AddedToken", ...}.
    return token["content"] if isinstance(token, dict) else token


def _require(path: Path, field: str, value, supported) -> None:
    if value != supported:
        raise TokenizationError(f"{path}: {field}={value!r} is not supported (only "
                                f"{supported!r}); keras-hub's WordPiece cannot follow it")


def _vocabulary_ids(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise TokenizationError(f"{path}: file not found; the Hugging Face folder is incomplete")
    with open(path, encoding="utf-8") as file:  # as keras-hub reads it: rstrip per line
        return {line.rstrip(): index for index, line in enumerate(file)}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise TokenizationError(f"{path}: file not found; the preset folder is incomplete")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TokenizationError(f"{path}: not valid JSON ({err})") from None


_README = """\
# Tokenize before loading this preset

This keras-hub preset holds a model trained on text tokenized by its base model's own Hugging
Face rules, which keras-hub's tokenizer does not reproduce on its own: loaded with
`keras_hub.models.BertTextClassifier.from_preset(<this folder>)` alone, its preprocessor gives
other token ids for many texts (accents, Greek, non-Latin scripts). The rules are in
`{file}`. Before the preprocessor:

1. Normalise each text (needs the `tokenizers` package):
   - split out the `special_tokens` (exact, case-sensitive, longest first), kept whole;
   - run the rest through `tokenizers.normalizers.BertNormalizer(**normalizer)` (without
     `type`), then `tokenizers.pre_tokenizers.BertPreTokenizer()`;
   - replace each word longer than `max_input_chars_per_word` characters with `unk_token`;
   - join the words and special tokens with single spaces.
2. Set up the preprocessor's tokenizer as `keras_hub_tokenizer` says. lowercase,
   strip_accents, special_tokens and special_tokens_in_strings are saved in this preset
   already. keras-hub does not save split_on_cjk: set `preprocessor.tokenizer.split_on_cjk =
   False`. keras-hub cuts words over 100 bytes to [UNK] and has no option for it: rebuild
   `preprocessor.tokenizer._fast_word_piece` as keras-hub builds it
   (`tensorflow_text.FastWordpieceTokenizer`) but with `max_bytes_per_word` from the file.

Packing stays keras-hub's: [CLS] premise [SEP] hypothesis [SEP], round-robin truncation.

In the watson-peft project this is automatic: tf_baseline's `model.load_preprocessor` (and
`train.predict`) and jax_lora's `Tokenizer.from_preset_dir(<this folder>, "keras_dir")` read
`{file}`; `shared.runs.tokenization.read_normalizer(<this folder>)` gives step 1.
"""
