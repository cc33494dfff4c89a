"""Splits: the Kaggle rule reproduces the notebook, fingerprints identify ids and rule."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from shared.data.watson import SAMPLE_DATA_DIR, load_train
from shared.data.split import SplitSpec, make_split, split_fingerprint

MANIFEST = SAMPLE_DATA_DIR.parent / "splits" / "watson_train_ids.csv"


def toy(n=20):
    return pd.DataFrame({"id": [f"r{i:02d}" for i in range(n)],
                         "premise": [f"p{i // 2}" for i in range(n)],  # premises repeat in pairs
                         "language": [("English", "French")[i % 2] for i in range(n)],
                         "label": [i % 3 for i in range(n)]})


def test_kaggle_rule_is_first_70_percent_in_file_order():
    frame = toy(20)
    split = make_split(frame)
    assert split.train_ids == tuple(frame["id"][:14]) and split.val_ids == tuple(frame["id"][14:])
    train, val = split.parts(frame)
    assert train["id"].tolist() == list(split.train_ids) and len(val) == 6


def test_kaggle_rule_truncates_like_int():
    assert len(make_split(toy(11)).train_ids) == int(11 * 0.7) == 7


def test_fingerprint_changes_with_ids_order_and_rule():
    frame = toy()
    base = make_split(frame)
    assert base.fingerprint == make_split(frame.copy()).fingerprint
    assert base.fingerprint != split_fingerprint(base.spec, base.train_ids[::-1], base.val_ids)
    moved = split_fingerprint(base.spec, base.train_ids[:-1], (base.train_ids[-1],) + base.val_ids)
    assert base.fingerprint != moved
    assert base.fingerprint != split_fingerprint(SplitSpec("grouped"), base.train_ids, base.val_ids)
    # The kaggle rule ignores the seed, so the seed must not change its fingerprint.
    assert make_split(frame, SplitSpec(seed=5)).fingerprint == base.fingerprint


def test_seeded_rules_are_deterministic_and_keep_file_order():
    frame = toy(40)
    for rule in ("stratified", "grouped"):
        a, b = make_split(frame, SplitSpec(rule, seed=3)), make_split(frame, SplitSpec(rule, seed=3))
        assert a == b and a.fingerprint != make_split(frame, SplitSpec(rule, seed=4)).fingerprint
        assert list(a.train_ids) == sorted(a.train_ids) and list(a.val_ids) == sorted(a.val_ids)
        assert set(a.train_ids).isdisjoint(a.val_ids) and len(a.train_ids) + len(a.val_ids) == 40


def test_grouped_rule_keeps_premises_on_one_side():
    frame = toy(40)
    train, val = make_split(frame, SplitSpec("grouped", seed=1)).parts(frame)
    assert set(train["premise"]).isdisjoint(val["premise"])


def test_stratified_rule_balances_strata():
    frame = toy(60)
    train, _ = make_split(frame, SplitSpec("stratified", seed=0)).parts(frame)
    counts = train.groupby(["language", "label"]).size()
    assert counts.min() == counts.max() == 7  # 10 rows per stratum, 70 % train


def test_bad_spec_and_impossible_split():
    with pytest.raises(ValueError, match="--split 'random': choose one of"):
        SplitSpec("random")
    with pytest.raises(ValueError, match="stratified split impossible"):
        make_split(toy(4), SplitSpec("stratified"))


def test_sample_supports_every_rule():
    frame = load_train(SAMPLE_DATA_DIR)
    for rule in ("kaggle", "stratified", "grouped"):
        split = make_split(frame, SplitSpec(rule))
        assert len(split.train_ids) > len(split.val_ids) > 0


def test_real_data_matches_committed_id_manifest(watson_dir):
    frame = load_train(watson_dir)
    manifest = pd.read_csv(MANIFEST, dtype=str)
    assert manifest["id"].tolist() == frame["id"].tolist()
    split = make_split(frame)
    assert (len(split.train_ids), len(split.val_ids)) == (8_484, 3_636)
    assert manifest.loc[manifest["kaggle_part"] == "validation", "id"].tolist() == list(split.val_ids)
    train, val = split.parts(frame)
    assert val["premise"].isin(set(train["premise"])).sum() == 1_617  # documented in data/README.md
    documented = (SAMPLE_DATA_DIR.parent / "README.md").read_text()
    assert split.fingerprint in documented
    grouped = make_split(frame, SplitSpec("grouped"))
    train, val = grouped.parts(frame)
    assert set(train["premise"]).isdisjoint(val["premise"])


def test_cli_prints_fingerprint():
    result = subprocess.run([sys.executable, "-m", "shared.cli", "split", "--split", "grouped",
                             "--split-seed", "0"], capture_output=True, text=True, check=True)
    described = json.loads(result.stdout)
    frame = load_train(SAMPLE_DATA_DIR)
    assert described["fingerprint"] == make_split(frame, SplitSpec("grouped")).fingerprint


def test_dev_part_is_carved_from_the_training_part_by_premise():
    from shared.data.split import carve_dev
    from shared.data.spec import DataSpec, load

    plain = load(DataSpec(data_dir=SAMPLE_DATA_DIR))
    data = load(DataSpec(data_dir=SAMPLE_DATA_DIR, dev_fraction=0.2, dev_seed=3))
    # The validation part is the split's, untouched; dev and the rows left come from training.
    pd.testing.assert_frame_equal(data.val, plain.val)
    assert data.split.fingerprint == plain.split.fingerprint
    assert set(data.dev["id"]) | set(data.train["id"]) == set(plain.train["id"])
    assert not set(data.dev["id"]) & set(data.train["id"])
    assert not set(data.dev["premise"]) & set(data.train["premise"])  # grouped by premise
    assert 0.1 < len(data.dev) / len(plain.train) < 0.3
    assert data.train["id"].tolist() == [i for i in plain.train["id"] if i in set(data.train["id"])]
    recorded = data.describe()["dev"]
    assert recorded["n_dev"] == len(data.dev) and recorded["n_train"] == len(data.train)
    again = carve_dev(plain.train, 0.2, 3)
    assert again.fingerprint == recorded["fingerprint"]
    assert carve_dev(plain.train, 0.2, 4).fingerprint != recorded["fingerprint"]
    subset = load(DataSpec(data_dir=SAMPLE_DATA_DIR, dev_fraction=0.2, dev_seed=3,
                           train_subset=100))
    assert len(subset.train) == 100 and set(subset.train["id"]) <= set(data.train["id"])
    pd.testing.assert_frame_equal(subset.dev, data.dev)
    assert "dev" not in plain.describe() and plain.dev is None


@pytest.mark.parametrize("spec, message", [
    ({"dev_fraction": 1.0}, "--dev-fraction 1.0: must lie in"),
    ({"train_subset": 0}, "--train-subset 0: must be >= 1"),
    ({"train_subset": 10_000}, "--train-subset 10000: only 653 training rows")])
def test_bad_carves_name_the_flag(spec, message):
    from shared.data.spec import DataSpec, load

    with pytest.raises(ValueError, match=message):
        load(DataSpec(data_dir=SAMPLE_DATA_DIR, **spec))
