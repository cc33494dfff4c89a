"""Batches: buckets, per-epoch shuffles that a resume repeats, length grouping, evaluation
that covers every row."""

import numpy as np
import pytest

from jax_lora.config import TrainConfig
from jax_lora.input_pipeline import (GROUP_CHUNK_BATCHES, Encoded, bucket_length, encode,
                                     epoch_batches, epoch_order, eval_batches,
                                     micro_batches_per_epoch, train_batches)
from jax_lora.tokenizer import Tokenizer
from shared.data.spec import DataSpec, load
from shared.data.watson import SAMPLE_DATA_DIR


def fake_encoded(lengths, sequence_length=128):
    """Rows whose token i is row*1000 + i for the first `length` positions, 0 after."""
    rows = len(lengths)
    positions = np.arange(sequence_length)[None, :]
    mask = (positions < np.asarray(lengths)[:, None]).astype(np.int32)
    token_ids = (np.arange(rows)[:, None] * 1000 + positions) * mask
    return Encoded(token_ids.astype(np.int32), np.zeros_like(mask), mask,
                   labels=(np.arange(rows) % 3).astype(np.int32))


@pytest.mark.parametrize("longest, sequence_length, expected", [
    (1, 512, 16), (16, 512, 16), (17, 512, 32), (33, 512, 48), (70, 100, 80), (97, 100, 100),
    (20, 16, 16), (129, 200, 192), (193, 200, 200), (300, 512, 384), (400, 512, 512)])
def test_bucket_length(longest, sequence_length, expected):
    assert bucket_length(longest, sequence_length) == expected


def test_train_batches_drop_remainder_and_reshuffle_per_epoch():
    data = fake_encoded(np.arange(1, 11) * 10)  # 10 rows, lengths 10..100
    assert micro_batches_per_epoch(len(data), 4) == 2
    epochs = []
    for epoch in range(3):
        batches = list(train_batches(data, 4, seed=7, epoch=epoch, dynamic=True))
        assert len(batches) == 2 and all(len(b["labels"]) == 4 for b in batches)
        rows = np.concatenate([b["token_ids"][:, 0] // 1000 for b in batches])
        assert len(set(rows.tolist())) == 8  # no row twice; the remainder of 2 is dropped
        epochs.append(rows.tolist())
    assert all(epochs[i] != epochs[j] for i in range(3) for j in range(i + 1, 3))
    assert np.array_equal(epoch_order(10, 7, 1), epoch_order(10, 7, 1))
    assert not np.array_equal(epoch_order(10, 7, 1), epoch_order(10, 8, 1))


@pytest.mark.parametrize("group_by_length", [False, True])
def test_accumulated_micro_batches_split_the_same_batches(group_by_length):
    """One rule for the last partial batch: 16 x 1 and 8 x 2 take the same rows in the same
    optimizer steps (each 16-row batch cut in two), and drop the same rows."""
    lengths = np.random.default_rng(1).integers(3, 120, 653)  # the sample's 653 training rows
    assert micro_batches_per_epoch(653, 16) == 40 and micro_batches_per_epoch(653, 8, 2) == 80
    assert micro_batches_per_epoch(653, 4, 3) == 54 * 3  # whole steps of 12 rows only
    whole = epoch_batches(lengths, 16, seed=2, epoch=1, group_by_length=group_by_length)
    halves = epoch_batches(lengths, 8, seed=2, epoch=1, group_by_length=group_by_length,
                           accumulate=2)
    np.testing.assert_array_equal(halves.reshape(40, 16), whole)


@pytest.mark.parametrize("group_by_length", [False, True])
def test_resumed_epoch_yields_the_same_batches(group_by_length):
    data = fake_encoded(np.arange(1, 21) * 5)
    full = list(train_batches(data, 4, seed=0, epoch=2, dynamic=True,
                              group_by_length=group_by_length))
    resumed = list(train_batches(data, 4, seed=0, epoch=2, dynamic=True,
                                 group_by_length=group_by_length, start=3))
    assert len(resumed) == 2
    for a, b in zip(full[3:], resumed):
        for key in a:
            assert np.array_equal(a[key], b[key])


def test_grouped_batches_keep_every_row_once_and_follow_seed_and_epoch():
    batch, rows = 8, 2 * GROUP_CHUNK_BATCHES * 8 + 25 * 8 + 5  # 2.5 chunks, remainder of 5
    lengths = np.random.default_rng(0).integers(3, 200, rows)
    steps = micro_batches_per_epoch(rows, batch)

    def batches(seed=3, epoch=1, group_by_length=True):
        return epoch_batches(lengths, batch, seed=seed, epoch=epoch,
                             group_by_length=group_by_length)

    grouped, plain = batches(), batches(group_by_length=False)
    assert grouped.shape == plain.shape == (steps, batch)
    # Every row once; the dropped remainder is the same with and without grouping.
    assert len(set(grouped.ravel().tolist())) == steps * batch
    assert sorted(grouped.ravel().tolist()) == sorted(plain.ravel().tolist())
    # Each batch lies inside one chunk of the epoch's permutation, as a run of its sorted rows.
    position = np.empty(rows, int)
    position[epoch_order(rows, 3, 1)] = np.arange(rows)
    chunk_of = position // (GROUP_CHUNK_BATCHES * batch)
    assert all(len(set(chunk_of[b].tolist())) == 1 for b in grouped)
    for chunk in range(3):
        chunk_batches = [b for b in grouped if chunk_of[b[0]] == chunk]
        spans = sorted((lengths[b].min(), lengths[b].max()) for b in chunk_batches)
        assert all(hi <= next_lo for (_, hi), (next_lo, _) in zip(spans, spans[1:]))
    # The batches are shuffled, not served shortest first.
    widest = lengths[grouped].max(axis=1)
    assert not (np.all(np.diff(widest) >= 0) or np.all(np.diff(widest) <= 0))
    # Deterministic in (seed, epoch) and nothing else.
    assert np.array_equal(grouped, batches())
    assert not np.array_equal(grouped, batches(epoch=2))
    assert not np.array_equal(grouped, batches(seed=4))


def test_grouping_cuts_padding_on_the_sample(tiny_hf_preset):
    """Padding tokens of three recipe epochs (batch 16, dynamic buckets) on the embedded
    sample's training split; measured: grouped 28,523 vs 54,123 random (ratio 0.53)."""
    recipe = TrainConfig(data=DataSpec(data_dir=SAMPLE_DATA_DIR))
    train = load(recipe.data).train
    data = encode(Tokenizer.from_preset_dir(tiny_hf_preset, "hf"), train, 128)
    padding = {}
    for group_by_length in (False, True):
        masks = [batch["padding_mask"] for epoch in range(3) for batch in train_batches(
            data, recipe.batch_per_device, seed=recipe.seed, epoch=epoch, dynamic=True,
            group_by_length=group_by_length)]
        batch = recipe.batch_per_device
        assert sum(len(m) for m in masks) == 3 * (len(train) // batch) * batch
        padding[group_by_length] = sum(int(m.size - m.sum()) for m in masks)
    assert padding[True] < 0.65 * padding[False]


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
