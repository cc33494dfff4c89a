"""How many Watson pairs a sequence length cuts, under a preset's own tokenizer (tokenizer.json,
which both trainers equal on every Watson row): the evidence for a study's --sequence-length.

    python -m shared.jobs.token_lengths --preset multilingual-e5-small \
        --data-dir /work/shared/data/watson --lengths 64,128,256

A pair is cut when its tokens with the pair's special tokens exceed the length. Prints the
share cut over all train.csv rows, over the English rows and over the others, and the median
and 99th percentile of the uncut lengths.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from shared.cli import exit_on_bad_input
from shared.data.watson import load_train
from shared.runs.presets import resolve_alias


def pair_lengths(tokenizer_json: Path, premises, hypotheses) -> np.ndarray:
    """Tokens of each (premise, hypothesis) pair, special tokens included, nothing cut."""
    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(list(zip(premises, hypotheses)))
    return np.array([len(encoding.ids) for encoding in encodings])


def cut_shares(lengths: np.ndarray, limits: list[int]) -> dict[int, float]:
    """Share of pairs longer than each limit."""
    return {limit: float((lengths > limit).mean()) for limit in limits}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.jobs.token_lengths",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="multilingual-e5-small",
                        help="a Hugging Face folder with tokenizer.json, or an alias")
    parser.add_argument("--data-dir", type=Path, required=True, help="Watson CSV folder")
    parser.add_argument("--lengths", default="64,128,256", help="sequence lengths to check")
    args = parser.parse_args(argv)
    with exit_on_bad_input():
        tokenizer_json = Path(resolve_alias(args.preset)) / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise ValueError(f"{tokenizer_json}: missing; pass a folder with tokenizer.json")
        limits = [int(part) for part in args.lengths.split(",")]
        train = load_train(args.data_dir)
    lengths = pair_lengths(tokenizer_json, train["premise"], train["hypothesis"])
    english = (train["language"] == "English").to_numpy()
    print(f"{len(train):,} train.csv rows, {tokenizer_json}: pair length median "
          f"{np.median(lengths):.0f}, 99th percentile {np.percentile(lengths, 99):.0f}, "
          f"max {lengths.max()}")
    for name, keep in (("all", np.ones(len(train), bool)), ("English", english),
                       ("other languages", ~english)):
        shares = cut_shares(lengths[keep], limits)
        print(f"  {name} ({keep.sum():,} rows): cut at " + ", ".join(
            f"{limit}: {100 * share:.2f} % ({int(round(share * keep.sum()))} rows)"
            for limit, share in shares.items()))


if __name__ == "__main__":
    main()
