"""Token arrays, made once, and the batches cut from them.

Every split is tokenized once at the full sequence length before training. A batch is then
a slice of rows and columns: with dynamic padding the columns stop at the batch's longest row
rounded up to a bucket length, which bounds the number of distinct shapes (one compile each)
at len(BUCKETS). Padding positions are masked in attention and BERT's positions are absolute,
so a shorter pad changes no real token's value beyond float rounding.

Training batches: a permutation per epoch seeded by (seed, epoch), the rows that fill no whole
optimizer step dropped (like the baseline's remainder), and addressable by step so a resumed run sees the same batches. With length grouping
(after Hugging Face Trainer's group_by_length) the kept rows are then sorted by length within
chunks of GROUP_CHUNK_BATCHES batches and the batches shuffled — Hugging Face's sampler leaves
each chunk's batches sorted, longest first (benchmarks/torch_epoch.py --batch-order): a batch holds rows of similar length,
so far fewer padding tokens, while which rows meet in a batch and when still changes every
epoch. Evaluation batches cover every row: rows sorted by length (less padding), the last
batch filled with repeats of its last row that carry weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd

# Every 16 tokens up to 128, where nearly all Watson pairs lie, then coarser. Against powers
# of two this cuts the padding of length-grouped batches at --sequence-length 128 from 26.6 %
# to 12.5 % (MiniLM) and from 31.2 % to 16.3 % (multilingual-e5-small), for more shapes (8 and
# 7 instead of 3) to compile once each: the persistent compilation cache (compile_cache.py)
# keeps them for later runs. `python -m benchmarks.padding` prints these figures.
BUCKETS = (16, 32, 48, 64, 80, 96, 112, 128, 192, 256, 384, 512)
# Batches per length-sorted chunk when grouping (Hugging Face's megabatch of 50): large enough
# that neighbours in a chunk have near-equal lengths, small enough that a chunk is a random
# sample of the epoch.
GROUP_CHUNK_BATCHES = 50
# Seeds the shuffle of grouped batches apart from the row permutation of the same (seed, epoch).
BATCH_ORDER_STREAM = 1
TOKEN_FIELDS = ("token_ids", "segment_ids", "padding_mask")


@dataclass(frozen=True)
class Encoded:
    """One split as int32 arrays [rows, sequence_length], plus labels (0 where unknown)."""
    token_ids: np.ndarray
    segment_ids: np.ndarray
    padding_mask: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        """Real tokens per row."""
        return self.padding_mask.sum(axis=1)

    def batch(self, rows: np.ndarray, length: int, weights: np.ndarray | None = None) -> dict:
        """The given rows, first `length` columns; weights default to 1 (every row counts)."""
        batch = {name: getattr(self, name)[rows, :length] for name in TOKEN_FIELDS}
        batch["labels"] = self.labels[rows]
        batch["weights"] = (np.ones(len(rows), np.float32) if weights is None
                            else weights.astype(np.float32))
        return batch


def encode(tokenizer, frame: pd.DataFrame, sequence_length: int) -> Encoded:
    """Tokenize a Watson frame (premise, hypothesis[, label]) once."""
    tokens = tokenizer(frame["premise"].tolist(), frame["hypothesis"].tolist(), sequence_length)
    labels = (frame["label"].to_numpy() if "label" in frame.columns
              else np.zeros(len(frame)))
    return Encoded(*(np.asarray(tokens[name], np.int32) for name in TOKEN_FIELDS),
                   labels=labels.astype(np.int32))


def bucket_length(longest: int, sequence_length: int, buckets=BUCKETS) -> int:
    """The smallest bucket that holds `longest` tokens; never more than sequence_length."""
    return min([b for b in buckets if b >= longest] + [sequence_length])


def padded_length(data: Encoded, rows: np.ndarray, dynamic: bool) -> int:
    sequence_length = data.token_ids.shape[1]
    if not dynamic:
        return sequence_length
    return bucket_length(int(data.lengths[rows].max()), sequence_length)


def micro_batches_per_epoch(rows: int, global_batch: int, accumulate: int = 1) -> int:
    """Batches of `global_batch` rows per epoch: whole optimizer steps of `accumulate` of them,
    the rows that do not fill one dropped. One rule for the last partial batch whatever the
    split into micro-batches: 16 x 1 and 8 x 2 take the same steps on the same rows."""
    return rows // (global_batch * accumulate) * accumulate


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """This epoch's row order; depends on (seed, epoch) only, so a resume repeats it."""
    return np.random.default_rng([seed, epoch]).permutation(rows)


def epoch_batches(lengths: np.ndarray, global_batch: int, *, seed: int, epoch: int,
                  group_by_length: bool, accumulate: int = 1) -> np.ndarray:
    """Row indices [micro-batches, global_batch] of this epoch's batches, from (seed, epoch)
    and the rows' token lengths only, so a resume repeats them. Formed as batches of the
    effective size (global_batch x accumulate), each then cut into `accumulate` consecutive
    micro-batches: the optimizer sees the same rows per step however the batch is split. The
    same rows are dropped with and without grouping: the end of the epoch's permutation."""
    effective = global_batch * accumulate
    steps = micro_batches_per_epoch(len(lengths), global_batch, accumulate) // accumulate
    order = epoch_order(len(lengths), seed, epoch)[:steps * effective]
    if group_by_length:
        chunk = GROUP_CHUNK_BATCHES * effective  # a multiple of the batch: none spans chunks
        chunks = np.split(order, range(chunk, len(order), chunk))
        grouped = np.concatenate([rows[np.argsort(lengths[rows], kind="stable")]
                                  for rows in chunks])
        batch_order = np.random.default_rng([seed, epoch, BATCH_ORDER_STREAM]).permutation(steps)
        order = grouped.reshape(steps, effective)[batch_order]
    return order.reshape(steps * accumulate, global_batch)


def train_batches(data: Encoded, global_batch: int, *, seed: int, epoch: int, dynamic: bool,
                  group_by_length: bool = False, start: int = 0,
                  accumulate: int = 1) -> Iterator[dict]:
    """Micro-batches `start`, `start`+1, ... of `epoch` (epoch_batches)."""
    batches = epoch_batches(data.lengths, global_batch, seed=seed, epoch=epoch,
                            group_by_length=group_by_length, accumulate=accumulate)
    for rows in batches[start:]:
        yield data.batch(rows, padded_length(data, rows, dynamic))


def eval_batches(data: Encoded, global_batch: int, *,
                 dynamic: bool) -> Iterator[tuple[np.ndarray, dict]]:
    """(row indices, batch) covering every row once; padding rows have weight 0 and are not
    among the returned indices."""
    order = np.argsort(data.lengths, kind="stable")
    for start in range(0, len(data), global_batch):
        rows = order[start:start + global_batch]
        fill = global_batch - len(rows)
        padded = np.concatenate([rows, np.full(fill, rows[-1])])
        weights = np.concatenate([np.ones(len(rows)), np.zeros(fill)])
        yield rows, data.batch(padded, padded_length(data, rows, dynamic), weights)
