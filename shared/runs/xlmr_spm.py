"""XLM-R's tokenizer files from a vocabulary in fairseq's order: the SentencePiece model
(sentencepiece.bpe.model) and the tokenizer.json Hugging Face's XLMRobertaConverter writes for
it. Used by the multilingual-e5-small converter (shared.runs.e5) and by the tests' tiny XLM-R.

fairseq's ids, which XLM-R's embedding rows follow: <s> 0, <pad> 1, </s> 2, <unk> 3, then the
SentencePiece pieces after SentencePiece's own <unk>, <s>, </s> (fairseq id k = SentencePiece
id k - 1), then <mask>.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2

FAIRSEQ_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
MASK = "<mask>"
NORMALIZATION = "nmt_nfkc"  # the rule XLM-R's SentencePiece model was trained with
Piece = sentencepiece_model_pb2.ModelProto.SentencePiece


@contextlib.contextmanager
def _quiet_stderr():
    """SentencePiece's C++ rule compiler logs to file descriptor 2 (absl), past Python."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def builtin_rules(name: str = NORMALIZATION) -> dict[str, str]:
    """SentencePiece's built-in normalisation rule set `name`, source -> replacement."""
    import sentencepiece

    return dict(sentencepiece.SentencePieceNormalizer(rule_name=name).decompile())


def charsmap_rules(code_point_rules: dict[int, str]) -> tuple[dict[str, str], dict]:
    """SentencePiece's nmt_nfkc rules with their single-code-point rules replaced by
    `code_point_rules` (a model's own table; a code point absent from it is kept as it is),
    and a note of what changed.

    The installed SentencePiece's nmt_nfkc can be newer than the one a model was trained
    with (XLM-R's: 2019): since then it stopped turning the zero-width joiner into a space
    (2021) and learnt characters of newer Unicode versions. The model's own table wins on
    every code point; rules over several code points (recomposing decomposed accents) come
    from SentencePiece, except those holding a code point the two tables treat differently,
    which the older rule set did not hold in that form."""
    builtin = builtin_rules()
    single = {source: target for source, target in builtin.items() if len(source) == 1}
    table = {chr(code_point): target for code_point, target in code_point_rules.items()}
    differing = {c for c in single.keys() | table.keys() if single.get(c, c) != table.get(c, c)}
    multi = {source: target for source, target in builtin.items()
             if len(source) > 1 and not differing & set(source)}
    rules = {**multi, **{c: target for c, target in table.items() if target != c}}
    note = {"builtin_single": len(single), "model_single": len(table),
            "code_points_differing": len(differing), "differing": sorted(map(ord, differing)),
            "multi_kept": len(multi),
            "multi_dropped": sum(len(source) > 1 for source in builtin) - len(multi)}
    return rules, note


def normalizer_spec(rules: dict[str, str]) -> sentencepiece_model_pb2.NormalizerSpec:
    """XLM-R's normaliser settings (nmt_nfkc: dummy prefix, extra whitespace removed,
    whitespace escaped to ▁) with `rules` compiled into a precompiled charsmap."""
    import sentencepiece

    with _quiet_stderr():
        compiled = sentencepiece.SentencePieceNormalizer(norm_map=sorted(rules.items()))
    spec = sentencepiece_model_pb2.NormalizerSpec()
    spec.ParseFromString(compiled.serialized_normalizer_spec())
    return sentencepiece_model_pb2.NormalizerSpec(
        name=NORMALIZATION, precompiled_charsmap=spec.precompiled_charsmap,
        add_dummy_prefix=True, remove_extra_whitespaces=True, escape_whitespaces=True)


def sentencepiece_model(pieces: list[str], scores, normalizer) -> bytes:
    """The SentencePiece unigram model of a fairseq-ordered vocabulary (`pieces` start with
    FAIRSEQ_SPECIALS and end with <mask>; `scores` one per piece), serialized."""
    if pieces[:4] != FAIRSEQ_SPECIALS or pieces[-1] != MASK:
        raise ValueError(f"vocabulary starts {pieces[:4]} and ends {pieces[-1]!r}: not fairseq's "
                         f"order ({', '.join(FAIRSEQ_SPECIALS)} ... {MASK})")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.pieces.extend([Piece(piece="<unk>", score=float(scores[3]), type=Piece.UNKNOWN),
                         Piece(piece="<s>", score=float(scores[0]), type=Piece.CONTROL),
                         Piece(piece="</s>", score=float(scores[2]), type=Piece.CONTROL)])
    proto.pieces.extend(Piece(piece=piece, score=float(score), type=Piece.NORMAL)
                        for piece, score in zip(pieces[4:-1], scores[4:-1]))
    proto.trainer_spec.model_type = proto.trainer_spec.UNIGRAM
    proto.trainer_spec.vocab_size = len(proto.pieces)
    proto.normalizer_spec.CopyFrom(normalizer)
    return proto.SerializeToString()


def write_tokenizer_json(spm_file: Path, path: Path) -> Path:
    """The tokenizer.json Hugging Face's XLMRobertaConverter (transformers'
    convert_slow_tokenizer.py) writes for a SentencePiece model: a Unigram model over fairseq's
    ids (<unk> = 3), the SentencePiece normaliser (its precompiled charsmap), right strip,
    runs of spaces to one ▁, Metaspace, `<s> A </s> </s> B </s>`, and the special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(spm_file).read_bytes())
    vocabulary = ([(token, 0.0) for token in FAIRSEQ_SPECIALS]
                  + [(piece.piece, piece.score) for piece in proto.pieces[3:]] + [(MASK, 0.0)])
    tokenizer = Tokenizer(models.Unigram(vocabulary, unk_id=3, byte_fallback=False))
    tokenizer.add_tokens([AddedToken(piece.piece, normalized=False, special=True)
                          for piece in proto.pieces if piece.type == Piece.CONTROL])
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap),
        normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.add_special_tokens([*FAIRSEQ_SPECIALS, MASK])
    tokenizer.save(str(path))
    return Path(path)
