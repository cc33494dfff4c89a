"""XLM-R sentence pairs as keras-hub's XLMRobertaTokenizer + XLMRobertaTextClassifierPreprocessor
tokenize them, without TensorFlow: the SentencePiece model through the `sentencepiece`
package, or a Hugging Face folder's tokenizer.json through the `tokenizers` library.

keras-hub 0.32's choices, kept: SentencePiece's ids move to fairseq's dictionary (<s> 0,
<pad> 1, </s> 2, <unk> 3; SentencePiece's <unk> (0) becomes 3 and every other id k becomes
k + 1, so its <s>/</s> rows 1 and 2 are never produced; <mask> is the last id, after the
pieces); a pair is packed <s> a </s></s> b </s> (MultiSegmentPacker with sep_value = two
</s>), the two texts cut round-robin to sequence_length - 4, padded with <pad>; the mask is
"not <pad>". The preprocessor drops segment ids (the model has no segment embedding): we
return zeros, the type ids of a Hugging Face tokenizer.json. tests/jax_lora/test_xlmr.py checks
the ids against keras-hub on every sample and Watson row and against tokenizer.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from jax_lora.tokenizer import pack_pairs, read_json

START, PAD, END, UNK = 0, 1, 2, 3  # keras-hub's XLMRobertaTokenizer hard-codes these ids
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"
# SentencePiece's own first three pieces, which keras-hub's id shift assumes (XLM-R's
# sentencepiece.bpe.model and any model trained with SentencePiece's defaults have them).
SPM_SPECIALS = ("<unk>", "<s>", "</s>")
KERAS_PROTO = Path("assets") / "tokenizer" / "vocabulary.spm"
# tf_baseline's tokenizer for a BERT with XLM-R's tokenizer (e5): the folder's tokenizer.json
# kept beside keras-hub's SentencePiece asset, whose ids it gives (tf_baseline/hf_json_tokenizer).
HF_JSON_CLASS = "HFJsonXLMRobertaTokenizer"
HF_JSON_ASSET = Path("assets") / "tokenizer" / "hf_tokenizer.json"
HF_PROTO, HF_TOKENIZER = "sentencepiece.bpe.model", "tokenizer.json"


class XLMRobertaTokenizer:
    """<s> premise </s></s> hypothesis </s> with round-robin truncation, fairseq's ids.

    `encode_batch` turns texts into ids without special tokens; `vocabulary` lists the tokens
    by id (<s>, <pad>, </s>, <unk>, the pieces, <mask>); `source` names the file read. The
    SentencePiece model carries its own text rules (normalisation), so there is no separate
    text normaliser as for BERT."""

    def __init__(self, encode_batch: Callable[[list[str]], list[list[int]]],
                 vocabulary: list[str], source: str):
        self.encode_batch = encode_batch
        self.vocabulary = vocabulary
        self.source = source
        self.truncate = "round_robin"  # a key of tokenizer.TRUNCATIONS; the trainer sets --truncate

    @classmethod
    def from_sentencepiece(cls, proto: bytes, source: str) -> "XLMRobertaTokenizer":
        """keras-hub's XLMRobertaTokenizer(proto): SentencePiece ids shifted to fairseq's."""
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        if tuple(pieces[:3]) != SPM_SPECIALS:
            raise ValueError(f"{source}: SentencePiece pieces 0-2 are {pieces[:3]}; keras-hub's "
                             f"XLM-R id shift needs {', '.join(SPM_SPECIALS)} there")

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [[UNK if i == 0 else i + 1 for i in ids] for ids in processor.encode(texts)]

        return cls(encode_batch, [*SPECIALS, *pieces[3:], MASK], source)

    @classmethod
    def from_tokenizer_json(cls, path: Path) -> "XLMRobertaTokenizer":
        """A Hugging Face tokenizer.json run by the `tokenizers` library, its own padding,
        truncation and template off (keras-hub's packing replaces them)."""
        from tokenizers import Tokenizer as HFTokenizer

        tokenizer = HFTokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        ids = [tokenizer.token_to_id(token) for token in SPECIALS]
        if ids != [START, PAD, END, UNK]:
            raise ValueError(f"{path}: {', '.join(SPECIALS)} have ids {ids}; an XLM-R "
                             f"tokenizer.json has {START}, {PAD}, {END}, {UNK}")
        by_id = {i: token for token, i in tokenizer.get_vocab(with_added_tokens=True).items()}
        if sorted(by_id) != list(range(len(by_id))):
            raise ValueError(f"{path}: its token ids are not 0..{len(by_id) - 1} without gaps")

        def encode_batch(texts: list[str]) -> list[list[int]]:
            return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]

        return cls(encode_batch, [by_id[i] for i in range(len(by_id))], str(path))

    @classmethod
    def from_preset_dir(cls, directory: Path, kind: str) -> "XLMRobertaTokenizer":
        """A keras-hub XLM-R preset ('keras_dir': assets/tokenizer/vocabulary.spm, the
        tokenizer keras-hub saved) or a Hugging Face folder ('hf': its tokenizer.json when
        present, else its sentencepiece.bpe.model, which keras-hub's converter reads)."""
        directory = Path(directory)
        if kind == "hf":
            if (directory / HF_TOKENIZER).is_file():
                return cls.from_tokenizer_json(directory / HF_TOKENIZER)
            proto_file = directory / HF_PROTO
        else:
            saved = read_json(directory / "tokenizer.json")
            if saved.get("class_name") == HF_JSON_CLASS:
                return cls.from_tokenizer_json(directory / HF_JSON_ASSET)
            config = saved.get("config", {})
            if saved.get("class_name") != "XLMRobertaTokenizer" or config.get("add_bos") or \
                    config.get("add_eos"):
                raise ValueError(f"{directory / 'tokenizer.json'}: class_name="
                                 f"{saved.get('class_name')!r}, add_bos={config.get('add_bos')}, "
                                 f"add_eos={config.get('add_eos')}; only keras-hub's "
                                 f"XLMRobertaTokenizer without bos/eos is supported")
            proto_file = directory / KERAS_PROTO
        if not proto_file.is_file():
            raise ValueError(f"{proto_file}: SentencePiece model not found; the preset folder "
                             f"is incomplete")
        return cls.from_sentencepiece(proto_file.read_bytes(), str(proto_file))

    def describe(self) -> dict:
        """For the run manifest."""
        return {"tokenizer": "sentencepiece", "source": self.source, "lowercase": False,
                "vocabulary_size": len(self.vocabulary), "text_normalizer": None}

    def encode(self, text: str) -> list[int]:
        """The ids of one text, without <s>/</s>."""
        return self.encode_batch([text])[0]

    def __call__(self, premises: list[str], hypotheses: list[str],
                 sequence_length: int) -> dict[str, np.ndarray]:
        """{'token_ids','segment_ids' (zeros),'padding_mask'} int32 [N, sequence_length]."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        pairs = zip(self.encode_batch(list(premises)), self.encode_batch(list(hypotheses)))
        return pack_pairs(pairs, len(premises), sequence_length, start=[START],
                          sep=[END, END], end=[END], pad_id=PAD, segments=False,
                          truncate=self.truncate)
