"""The app's tokenizer questions (app/views.py) on XLM-R's SentencePiece tokenizer next to
BERT's WordPiece one: the special tokens around a pair, whether a pair is cut, where the
hypothesis starts, the unknown token and SentencePiece pieces as labels (issue #20)."""

import warnings

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from app import views
from jax_lora.lora import LoraConfig
from jax_lora.weights import load_pretrained
from shared.data.watson import SAMPLE_DATA_DIR, load_train
from tests.e5_fixtures import write_tiny_e5_hf
from tests.xlmr_fixtures import train_sentencepiece, write_tiny_xlmr_hf


@pytest.fixture(scope="module")
def tokenizers(tiny_hf_preset, tmp_path_factory) -> dict:
    """{'xlmr': the tiny XLM-R folder's tokenizer, 'bert': the tiny BERT folder's, 'e5': the
    tiny BERT-with-SentencePiece folder's (the multilingual-e5 family)}."""
    root = tmp_path_factory.mktemp("xlmr_views")
    spm = train_sentencepiece(root / "sample.spm")
    xlmr = write_tiny_xlmr_hf(root / "hf", spm)
    e5 = write_tiny_e5_hf(root / "e5", spm)
    return {name: load_pretrained(str(folder), LoraConfig(targets=()), pooling=pooling).tokenizer
            for name, folder, pooling in (("xlmr", xlmr, "cls"), ("bert", tiny_hf_preset, "cls"),
                                          ("e5", e5, "mean"))}


@pytest.fixture(scope="module")
def pairs() -> tuple[list[str], list[str]]:
    frame = load_train(SAMPLE_DATA_DIR).iloc[::50]
    return frame["premise"].tolist(), frame["hypothesis"].tolist()


def test_special_tokens_come_from_the_tokenizers_own_packing(tokenizers):
    spelled = {name: [tokenizer.vocabulary[i] for i in views.pair_specials(tokenizer)]
               for name, tokenizer in tokenizers.items()}
    assert spelled == {"xlmr": ["<s>", "</s>", "</s>", "</s>"],
                       "bert": ["[CLS]", "[SEP]", "[SEP]"],
                       "e5": ["<s>", "</s>", "</s>", "</s>"]}
    assert views.unknown_token(tokenizers["xlmr"]) == "<unk>"
    assert views.unknown_token(tokenizers["bert"]) == "[UNK]"


@pytest.mark.parametrize("name", ["xlmr", "bert", "e5"])
def test_pair_length_is_the_packed_length_and_says_when_a_pair_is_cut(tokenizers, pairs, name):
    tokenizer = tokenizers[name]
    lengths = np.array([views.pair_length(tokenizer, p, h) for p, h in zip(*pairs)])
    packed = tokenizer(*pairs, 512)["padding_mask"].sum(axis=1)
    np.testing.assert_array_equal(lengths, packed)  # none is cut at 512
    cut_at = int(np.median(lengths))
    kept = tokenizer(*pairs, cut_at)["padding_mask"].sum(axis=1)
    np.testing.assert_array_equal(kept, np.minimum(lengths, cut_at))
    assert (lengths > cut_at).sum() >= 3 and (lengths < cut_at).sum() >= 3


@pytest.mark.parametrize("length", [512, 40])
def test_the_hypothesis_starts_after_the_premises_separators(tokenizers, pairs, length):
    """XLM-R has no segment ids: the split is found after <s> premise </s></s>; on BERT's ids
    the same rule gives BERT's own segment ids, which are used as they are."""
    xlmr, bert = tokenizers["xlmr"], tokenizers["bert"]
    packed = xlmr(*pairs, length)
    assert not packed["segment_ids"].any()
    specials = views.pair_specials(xlmr)
    for row, (premise, hypothesis) in enumerate(zip(*pairs)):
        ids, n = packed["token_ids"][row], int(packed["padding_mask"][row].sum())
        first, second = xlmr.encode(premise), xlmr.encode(hypothesis)
        budget = length - 4
        # tf_text's RoundRobinTrimmer: one token each in turn, the premise first.
        kept = len(first) if len(first) + len(second) <= budget else \
            min(len(first), max(-(-budget // 2), budget - len(second)))
        assert ids[1:1 + kept].tolist() == first[:kept]
        assert ids[1 + kept:3 + kept].tolist() == [2, 2]  # </s></s>
        segments = views.hypothesis_segments(ids[:n], packed["segment_ids"][row][:n], specials)
        np.testing.assert_array_equal(segments, np.arange(n) >= kept + 3)
    assert (packed["padding_mask"].sum(axis=1) == length).any() == (length == 40)
    bert_packed, bert_specials = bert(*pairs, length), views.pair_specials(bert)
    for ids, segment_ids, mask in zip(*(bert_packed[k] for k in ("token_ids", "segment_ids",
                                                                  "padding_mask"))):
        n = int(mask.sum())
        np.testing.assert_array_equal(
            views.hypothesis_segments(ids, segment_ids, bert_specials), segment_ids)
        derived = views.hypothesis_segments(ids[:n], np.zeros(n, int), bert_specials)
        np.testing.assert_array_equal(derived, segment_ids[:n])


def test_sentencepiece_pieces_label_the_heatmap_and_the_shading(tokenizers):
    xlmr = tokenizers["xlmr"]
    packed = xlmr(["The cat and the dog ☃"], ["It is a house ☃"], 32)  # ☃: not in the sample
    n = int(packed["padding_mask"][0].sum())
    ids = packed["token_ids"][0][:n]
    tokens = [xlmr.vocabulary[i] for i in ids]
    unknown = views.unknown_token(xlmr)
    unknowns = tokens.count(unknown)
    assert unknowns >= 2 and any(t.startswith("▁") and len(t) > 1 for t in tokens)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a glyph the font lacks would warn
        fig = views.heatmap_figure(np.eye(n), tokens, "t", unknown)
        FigureCanvasAgg(fig).draw()
    labels = fig.axes[0].get_xticklabels()
    assert [label.get_text() for label in labels] == tokens
    assert {label.get_text() for label in labels if label.get_color() == "red"} == {unknown}
    segments = views.hypothesis_segments(ids, packed["segment_ids"][0][:n],
                                         views.pair_specials(xlmr))
    html = views.cls_shading_html(tokens, np.linspace(0, 1, n), segments, unknown)
    assert html.count("<br>") == 1 and html.count("border:2px solid red") == unknowns
    assert "&lt;s&gt;" in html and "&lt;/s&gt;" in html and "<s>" not in html
