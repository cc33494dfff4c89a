"""Sentence-pair tokenization identical to tf_baseline's keras-hub BertTextClassifierPreprocessor,
in Python (no TensorFlow): ~3 s for the 12k Watson training rows.

It reproduces keras-hub 0.32's TensorFlow path step by step (WordPieceTokenizer.pretokenize,
FastWordpieceTokenizer, MultiSegmentPacker). For a keras-hub preset that is the whole story:
keras-hub splits only on [ \\t\\n\\r\\f], Cc and Cf (a no-break space stays inside a word),
lowercases with NFKC_Casefold after splitting, keeps accents (strip_accents=False) and maps
words over 100 UTF-8 bytes to [UNK]. A Hugging Face folder (or a preset saved from one) has
its text put through the folder's own rules first (shared.runs.tokenization.TextNormalizer),
and the WordPiece side set up as tf_baseline sets up keras-hub's for it, so the ids equal the
folder's tokenizer.json. tests/jax_lora/test_tokenizer.py checks equality with keras-hub on
every Watson row, and with tokenizer.json for MiniLM. XLM-R's SentencePiece tokenizer is in
jax_lora/xlmr_tokenizer.py; both pack their pairs with pack_pairs (keras-hub's packer).
"""

from __future__ import annotations

import functools
import json
import re
import sys
import unicodedata
from pathlib import Path
from typing import Iterable

import numpy as np

from shared.runs.tokenization import TextNormalizer, describe_normalizer, normalizer_for

# FastWordpieceTokenizer's default max_bytes_per_word: longer words become the OOV token.
MAX_BYTES_PER_WORD = 100
SUFFIX = "##"
# WordPieceTokenizer's config defaults, for fields a saved tokenizer.json leaves out.
KERAS_HUB_DEFAULTS = {"split": True, "strip_accents": False, "special_tokens_in_strings": False,
                      "suffix_indicator": SUFFIX, "lowercase": False, "special_tokens": None}
CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
              (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
# keras-hub PUNCTUATION_REGEX: the four ASCII symbol ranges plus Unicode category P.
ASCII_PUNCTUATION = ((0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E))
# DerivedCoreProperties Default_Ignorable_Code_Point, which NFKC_Casefold deletes.
DEFAULT_IGNORABLE = ((0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
                     (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
                     (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
                     (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                     (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF))


def _char_class(ranges) -> str:
    return "".join(f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in ranges)


@functools.lru_cache(maxsize=1)
def _character_classes() -> tuple[str, str]:
    """(punctuation, whitespace) as regex class bodies: keras-hub's split classes.

    Python's `re` has no \\p{..}; enumerating the code points gives the same classes. Built once
    (about a second)."""
    by_category = {"P": [], "C": []}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category[0] == "P":
            by_category["P"].append(code)
        elif category in ("Cc", "Cf"):
            by_category["C"].append(code)
    punctuation = _char_class(_ranges(by_category["P"]) + list(ASCII_PUNCTUATION))
    # RE2's \s (used by keras-hub through tf_text.regex_split) is ASCII [\t\n\f\r ] only.
    whitespace = r" \t\n\r\f" + _char_class(_ranges(by_category["C"]))
    return punctuation, whitespace


@functools.lru_cache(maxsize=8)
def _splitter(split_on_cjk: bool, special_tokens: tuple[str, ...]) -> re.Pattern:
    """Splits on whitespace and keeps punctuation (and CJK characters) as words of their own;
    special tokens, when given, are matched first and kept whole, as keras-hub's
    special_tokens_in_strings does."""
    punctuation, whitespace = _character_classes()
    kept = f"[{punctuation}{_char_class(CJK_RANGES) if split_on_cjk else ''}]"
    if special_tokens:
        kept = "|".join([*map(re.escape, special_tokens), kept])
    return re.compile(f"[{whitespace}]+|({kept})")


def _ranges(codes: list[int]) -> list[tuple[int, int]]:
    ranges = []
    for code in codes:
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return ranges


DEFAULT_IGNORABLE_PATTERN = re.compile(f"[{_char_class(DEFAULT_IGNORABLE)}]")


def _casefold(word: str) -> str:
    """NFKC_Casefold, as tf_text.case_fold_utf8 applies it."""
    word = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", word).casefold())
    return DEFAULT_IGNORABLE_PATTERN.sub("", word)


class Tokenizer:
    """WordPiece + [CLS] premise [SEP] hypothesis [SEP] packing with round-robin truncation.

    With a `normalizer` (a Hugging Face folder's text rules) the texts go through it first and
    the WordPiece side takes the keras-hub settings it asks for (normalizer.
    keras_hub_tokenizer_kwargs and max_bytes_per_word), as tf_baseline configures keras-hub."""

    def __init__(self, vocabulary: list[str], *, lowercase: bool, oov_token: str = "[UNK]",
                 normalizer: TextNormalizer | None = None):
        self.vocabulary = list(vocabulary)
        self.lowercase = lowercase
        self.truncate = "round_robin"  # a key of TRUNCATIONS; the trainer sets --truncate
        self.normalizer = normalizer
        self.token_to_id = {token: index for index, token in enumerate(self.vocabulary)}
        if len(self.token_to_id) != len(self.vocabulary):
            repeated = next(t for t in self.token_to_id if self.vocabulary.count(t) > 1)
            raise ValueError(f"vocabulary lists {repeated!r} twice; keras-hub (tf_text) "
                             f"rejects such a vocabulary")
        for token in (oov_token, "[CLS]", "[SEP]", "[PAD]"):
            if token not in self.token_to_id:
                raise ValueError(f"vocabulary has no {token} token; a BERT vocabulary needs "
                                 f"[UNK], [CLS], [SEP] and [PAD]")
        self.oov_id = self.token_to_id[oov_token]
        self.cls_id, self.sep_id = self.token_to_id["[CLS]"], self.token_to_id["[SEP]"]
        self.pad_id = self.token_to_id["[PAD]"]
        self.split_on_cjk, self.special_tokens = True, ()  # keras-hub's defaults
        self.max_bytes_per_word = MAX_BYTES_PER_WORD
        if normalizer is not None:
            self._follow(normalizer, oov_token)
        self._split = _splitter(self.split_on_cjk, self.special_tokens)
        self._word_ids = functools.lru_cache(maxsize=1 << 18)(self._wordpiece)

    def _follow(self, normalizer: TextNormalizer, oov_token: str) -> None:
        settings = normalizer.keras_hub_tokenizer_kwargs
        if self.lowercase != settings["lowercase"] or settings["strip_accents"]:
            raise ValueError(f"lowercase={self.lowercase} with a text normaliser: the "
                             f"normaliser decides casing and accents; pass lowercase=False")
        if normalizer.unk_token != oov_token:
            raise ValueError(f"the normaliser's unknown token {normalizer.unk_token!r} is not "
                             f"oov_token {oov_token!r}; pass oov_token={normalizer.unk_token!r}")
        missing = [t for t in normalizer.special_tokens if t not in self.token_to_id]
        if missing:
            raise ValueError(f"special token {missing[0]!r} of the normaliser is not in the "
                             f"vocabulary; pass the model's own vocabulary")
        self.split_on_cjk = settings["split_on_cjk"]
        # Among them keras-hub's own KERAS_HUB_BERT_SPECIALS (the normaliser checks). keras-hub
        # joins them in a set's order, which cannot matter for [X]-style tokens; longest first.
        self.special_tokens = tuple(sorted(settings["special_tokens"], key=lambda t: (-len(t), t)))
        self.max_bytes_per_word = normalizer.max_bytes_per_word

    @classmethod
    def from_preset_dir(cls, directory: Path, kind: str) -> "Tokenizer":
        """The tokenizer tf_baseline builds for a local preset ('keras_dir') or HF folder
        ('hf'): keras-hub's, after the folder's own text rules when it has them."""
        directory = Path(directory)
        normalizer = normalizer_for(directory, kind)
        if kind == "hf":
            return cls(_read_vocabulary(directory / "vocab.txt"), lowercase=False,
                       oov_token=normalizer.unk_token, normalizer=normalizer)
        config_file = directory / "tokenizer.json"
        config = read_json(config_file).get("config", {})
        # BERT presets use keras-hub's defaults for these, presets saved with a normaliser its
        # settings; anything else is not reproduced.
        supported = {"split": True, "strip_accents": False, "special_tokens_in_strings": False,
                     "suffix_indicator": SUFFIX}
        if normalizer is not None:
            supported.update(normalizer.keras_hub_tokenizer_kwargs)
            del supported["split_on_cjk"]  # keras-hub does not save it
        for field, value in supported.items():
            if config.get(field, KERAS_HUB_DEFAULTS.get(field)) != value:
                raise ValueError(f"{config_file}: {field}={config.get(field)!r} is not "
                                 f"supported (only {value!r})")
        return cls(_read_vocabulary(directory / "assets" / "tokenizer" / "vocabulary.txt"),
                   lowercase=bool(config.get("lowercase", False)),
                   oov_token=config.get("oov_token", "[UNK]"), normalizer=normalizer)

    def describe(self) -> dict:
        """For the run manifest: the text rules before WordPiece (None: keras-hub's own)."""
        return {"lowercase": self.lowercase, "vocabulary_size": len(self.vocabulary),
                "text_normalizer": describe_normalizer(self.normalizer)}

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        """Greedy longest-match-first, the result FastWordpieceTokenizer gives."""
        if self.lowercase and word not in self.special_tokens:
            word = _casefold(word)  # after splitting, as keras-hub does
        if len(word.encode("utf-8")) > self.max_bytes_per_word:
            return (self.oov_id,)
        ids, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else SUFFIX + word[start:end]
                if piece in self.token_to_id:
                    ids.append(self.token_to_id[piece])
                    start = end
                    break
            else:
                return (self.oov_id,)
        return tuple(ids)

    def normalize(self, texts: list[str]) -> list[str]:
        """The texts as the WordPiece side sees them (unchanged without a normaliser)."""
        return list(texts) if self.normalizer is None else self.normalizer(texts)

    def encode(self, text: str) -> list[int]:
        """The ids of one text, without [CLS]/[SEP]."""
        return self._encode(self.normalize([text])[0])

    def _encode(self, text: str) -> list[int]:
        return [i for word in self._split.split(text) if word for i in self._word_ids(word)]

    def __call__(self, premises: list[str], hypotheses: list[str],
                 sequence_length: int) -> dict[str, np.ndarray]:
        """{'token_ids','segment_ids','padding_mask'} int32 [N, sequence_length]."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        pairs = zip(map(self._encode, self.normalize(premises)),
                    map(self._encode, self.normalize(hypotheses)))
        return pack_pairs(pairs, len(premises), sequence_length, start=[self.cls_id],
                          sep=[self.sep_id], end=[self.sep_id], pad_id=self.pad_id,
                          truncate=self.truncate)


def pack_pairs(pairs: Iterable[tuple[list[int], list[int]]], rows: int, sequence_length: int,
               *, start: list[int], sep: list[int], end: list[int], pad_id: int,
               segments: bool = True, truncate: str = "round_robin") -> dict[str, np.ndarray]:
    """keras-hub's MultiSegmentPacker on `rows` (first, second) id lists: start, first, sep,
    second, end, the pair cut by `truncate` (TRUNCATIONS; keras-hub's round-robin by default)
    to what the specials leave, then padded with `pad_id`. Segment ids are 0 up to and including sep, 1 after (all 0 without `segments`).
    {'token_ids','segment_ids','padding_mask'} int32 [rows, sequence_length]."""
    specials = len(start) + len(sep) + len(end)
    if sequence_length <= specials:
        raise ValueError(f"sequence_length={sequence_length}: must be >= {specials + 1} "
                         f"({specials} special tokens and one token)")
    token_ids = np.full((rows, sequence_length), pad_id, np.int32)
    segment_ids = np.zeros((rows, sequence_length), np.int32)
    cut = TRUNCATIONS[truncate]
    for row, (first, second) in enumerate(pairs):
        first, second = cut(first, second, sequence_length - specials)
        ids = [*start, *first, *sep, *second, *end]
        token_ids[row, :len(ids)] = ids
        if segments:
            segment_ids[row, len(start) + len(first) + len(sep):len(ids)] = 1
    # keras-hub's mask is "not the pad id", not "inside the packed length".
    padding_mask = (token_ids != pad_id).astype(np.int32)
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


def round_robin(first: list[int], second: list[int], budget: int):
    """tf_text.RoundRobinTrimmer for two segments: one token each in turn, first starts."""
    if len(first) + len(second) <= budget:
        return first, second
    keep_first = min(len(first), max((budget + 1) // 2, budget - len(second)))
    return first[:keep_first], second[:budget - keep_first]


def longest_first(first: list[int], second: list[int], budget: int):
    """Hugging Face's `longest_first` for a pair (tokenizers' truncation.rs): the shorter text
    is kept whole when the longer one can give up the rest; else each keeps budget // 2 and
    the spare token of an odd budget goes to the longer (to the second on a tie), where
    round_robin gives it to the first."""
    if len(first) + len(second) <= budget:
        return first, second
    swap = len(first) > len(second)
    n1, n2 = sorted((len(first), len(second)))
    n2 = n1 if n1 > budget else max(n1, budget - n1)
    if n1 + n2 > budget:
        n1, n2 = budget // 2, budget // 2 + budget % 2
    if swap:
        n1, n2 = n2, n1
    return first[:n1], second[:n2]


# How a pair longer than the sequence is cut: keras-hub's (both trainers, the default) or
# Hugging Face's (jax_lora only: so that a PEFT user reproduces predictions on cut rows).
TRUNCATIONS = {"round_robin": round_robin, "longest_first": longest_first}


def read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: file not found; the preset folder is incomplete")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_vocabulary(path: Path) -> list[str]:
    if not path.is_file():
        raise ValueError(f"{path}: vocabulary file not found; the preset folder is incomplete")
    # Exactly keras-hub's WordPieceTokenizer.set_vocabulary (universal newlines, rstrip).
    with open(path, encoding="utf-8") as file:
        return [line.rstrip() for line in file]
