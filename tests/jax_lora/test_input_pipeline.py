"""Batches: buckets, per-epoch shuffles that a resume repeats, evaluation that covers every row."""

import numpy as np
import pytest

from jax_lora.input_pipeline import (Encoded, bucket_length, epoch_order, eval_batches,
                                     steps_per_epoch, train_batches)


def fake_encoded(lengths, sequence_length=128):
    """Rows whose token i is row*1000 + i for the first `length` positions, 0 after."""
    rows = len(lengths)
    positions = np.arange(sequence_length)[None, :]
    mask = (positions < np.asarray(lengths)[:, None]).astype(np.int32)
    token_ids = (np.arange(rows)[:, None] * 1000 + positions) * mask
    return Encoded(token_ids.astype(np.int32), np.zeros_like(mask), mask,
                   labels=(np.arange(rows) % 3).astype(np.int32))


@pytest.mark.parametrize("longest, sequence_length, expected", [
    (1, 512, 32), (32, 512, 32), (33, 512, 64), (300, 512, 512), (70, 100, 100), (20, 16, 16),
    (129, 200, 200)])
def test_bucket_length(longest, sequence_length, expected):
    assert bucket_length(longest, sequence_length) == expected


def test_train_batches_drop_remainder_and_reshuffle_per_epoch():
    data = fake_encoded(np.arange(1, 11) * 10)  # 10 rows, lengths 10..100
    assert steps_per_epoch(len(data), 4) == 2
    epochs = []
    for epoch in range(3):
        batches = list(train_batches(data, 4, seed=7, epoch=epoch, dynamic=True))
        assert len(batches) == 2 and all(len(b["labels"]) == 4 for b in batches)
        rows = np.concatenate([b["token_ids"][:, 0] // 1000 for b in batches])
        assert len(set(rows.tolist())) == 8  # no row twice; the remainder of 2 is dropped
        epochs.append(rows.tolist())
    assert epochs[0] != epochs[1] != epochs[2]
    assert np.array_equal(epoch_order(10, 7, 1), epoch_order(10, 7, 1))
    assert not np.array_equal(epoch_order(10, 7, 1), epoch_order(10, 8, 1))


def test_resumed_epoch_yields_the_same_batches():
    data = fake_encoded(np.arange(1, 21) * 5)
    full = list(train_batches(data, 4, seed=0, epoch=2, dynamic=True))
    resumed = list(train_batches(data, 4, seed=0, epoch=2, dynamic=True, start=3))
    assert len(resumed) == 2
    for a, b in zip(full[3:], resumed):
        for key in a:
            assert np.array_equal(a[key], b[key])


def test_dynamic_padding_keeps_every_real_token():
    lengths = np.array([3, 40, 7, 90, 33, 12, 5, 64])
    data = fake_encoded(lengths)
    for batch in train_batches(data, 4, seed=1, epoch=0, dynamic=True):
        rows = batch["token_ids"][:, 0] // 1000
        width = batch["token_ids"].shape[1]
        assert width == bucket_length(lengths[rows].max(), 128)
        assert np.array_equal(batch["padding_mask"].sum(1), lengths[rows])
        assert np.array_equal(batch["labels"], data.labels[rows])
    fixed = next(train_batches(data, 4, seed=1, epoch=0, dynamic=False))
    assert fixed["token_ids"].shape == (4, 128)


def test_eval_batches_cover_every_row_once_with_weighted_padding():
    lengths = np.array([50, 3, 20, 7, 100, 9, 31])
    data = fake_encoded(lengths)
    seen = []
    for rows, batch in eval_batches(data, 3, dynamic=True):
        assert batch["token_ids"].shape[0] == 3  # one shape per bucket: the last batch is filled
        weights = batch["weights"]
        assert weights.tolist() == [1.0] * len(rows) + [0.0] * (3 - len(rows))
        assert np.array_equal(batch["token_ids"][: len(rows), 0] // 1000, rows)
        assert batch["token_ids"].shape[1] == bucket_length(lengths[rows].max(), 128)
        seen.extend(rows.tolist())
    assert sorted(seen) == list(range(7))
    assert [lengths[r] for r in seen] == sorted(lengths)  # sorted by length: less padding
