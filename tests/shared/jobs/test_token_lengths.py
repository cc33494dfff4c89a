"""The sequence-length evidence: pair lengths under a preset's tokenizer.json and the share cut."""

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from shared.jobs import token_lengths
from shared.runs.presets import PresetError, resolve_alias


def e5_tokenizer():
    try:
        return Path(resolve_alias("multilingual-e5-small")) / "tokenizer.json"
    except PresetError:
        return Path("/nonexistent")


E5_TOKENIZER = e5_tokenizer()


def test_cut_shares_count_pairs_longer_than_each_length():
    lengths = np.array([10, 64, 65, 128, 129, 300])
    assert token_lengths.cut_shares(lengths, [64, 128, 256]) == {64: 4 / 6, 128: 2 / 6,
                                                                 256: 1 / 6}


@pytest.mark.skipif(not E5_TOKENIZER.is_file(), reason="multilingual-e5-small not built "
                    "(bash scripts/setup.sh)")
def test_pair_lengths_count_xlmr_pair_specials():
    """e5's tokenizer.json packs <s> A </s></s> B </s>: four special tokens besides the texts'."""
    premise, hypothesis = "Le chat dort sur le canapé.", "A cat is sleeping."
    tokenizer = Tokenizer.from_file(str(E5_TOKENIZER))
    texts = sum(len(tokenizer.encode(text, add_special_tokens=False).ids)
                for text in (premise, hypothesis))
    assert token_lengths.pair_lengths(E5_TOKENIZER, [premise], [hypothesis])[0] == texts + 4
