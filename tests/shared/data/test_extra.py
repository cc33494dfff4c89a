"""Extra training rows (--extra-train, issue #18): the prepared folder, how the rows join the
training part (after the dev carve, minus copies of validation/test pairs) and what the manifest
records."""

import dataclasses
import json

import pandas as pd
import pytest

from shared.data.extra import EXTRA_CSV, EXTRA_JSON, load_prepared, write_prepared
from shared.data.spec import DataSpec, load
from shared.data.watson import SAMPLE_DATA_DIR, DataError
from tests.conftest import PLANTED_EXTRA, extra_rows

SPEC = DataSpec(data_dir=SAMPLE_DATA_DIR, limit=160)


def test_prepared_folder_round_trips(extra_train):
    prepared = load_prepared(extra_train)
    rows = extra_rows(SAMPLE_DATA_DIR)
    pd.testing.assert_frame_equal(prepared.rows, rows.astype({"label": int}))
    meta = json.loads((extra_train / EXTRA_JSON).read_text())
    assert meta["rows"] == len(rows) and meta["fingerprint"] == prepared.fingerprint
    assert prepared.sources[0]["spec"] == "mock_nli:train"


def test_an_edited_or_incomplete_folder_is_refused(extra_train, tmp_path):
    edited = tmp_path / "edited"
    edited.mkdir()
    (edited / EXTRA_JSON).write_text((extra_train / EXTRA_JSON).read_text())
    (edited / EXTRA_CSV).write_text((extra_train / EXTRA_CSV).read_text().replace("mock", "m0ck"))
    with pytest.raises(DataError, match=r"changed since it was prepared.*shared\.data\.prepare"):
        load_prepared(edited)
    (edited / EXTRA_JSON).unlink()
    with pytest.raises(DataError, match="needs extra.csv and extra.json"):
        load_prepared(edited)
    with pytest.raises(DataError, match="not a folder"):
        load_prepared(tmp_path / "absent")


@pytest.mark.parametrize("column, value, problem", [
    ("label", 3, "is not one of 0, 1, 2"), ("hypothesis", " ", "is empty"),
    ("id", "mock_nli:train:0", "duplicates row 1")])
def test_bad_rows_write_nothing(tmp_path, column, value, problem):
    rows = extra_rows(SAMPLE_DATA_DIR)
    rows.loc[5, column] = value
    with pytest.raises(DataError, match=f"row 6 .*{problem}"):
        write_prepared(rows, [], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no folder, no staging left behind


def test_a_folder_is_never_overwritten(extra_train):
    with pytest.raises(DataError, match="not an empty folder"):
        write_prepared(extra_rows(SAMPLE_DATA_DIR), [], extra_train)


def test_extra_rows_join_the_training_part_only_minus_copies_of_test_pairs(extra_train):
    plain = load(dataclasses.replace(SPEC, dev_fraction=0.2))
    data = load(dataclasses.replace(SPEC, dev_fraction=0.2, extra_train=extra_train))
    extra = load_prepared(extra_train).rows
    # validation, dev, test and the split are those of the run without extra rows
    assert data.split.fingerprint == plain.split.fingerprint
    for part in ("val", "dev", "test"):
        pd.testing.assert_frame_equal(getattr(data, part), getattr(plain, part))
    assert data.carve.fingerprint == plain.carve.fingerprint
    # the training part: the plain one plus every extra row but the planted copies, shuffled
    planted = set(extra["id"].head(PLANTED_EXTRA))
    assert sorted(data.train["id"]) == sorted(list(plain.train["id"])
                                              + [i for i in extra["id"] if i not in planted])
    assert list(data.train["id"]) != list(plain.train["id"]) + list(extra["id"][PLANTED_EXTRA:])
    by_id = data.train.set_index("id")
    for row in extra.iloc[PLANTED_EXTRA:].itertuples():
        assert (by_id.loc[row.id, ["premise", "hypothesis", "label"]].tolist()
                == [row.premise, row.hypothesis, row.label])

    described = data.describe()
    assert described["sha256"]["extra.csv"] == load_prepared(extra_train).fingerprint
    recorded = described["extra"]
    assert recorded["joined"] == len(extra) - PLANTED_EXTRA
    assert recorded["dropped"] == PLANTED_EXTRA and not recorded["contaminated"]
    assert recorded["overlap"]["exact"] == 2 and recorded["overlap"]["near_duplicate"] == 1
    assert recorded["sources"][0]["spec"] == "mock_nli:train"
    assert "extra_train" in described["spec"] and described["spec"]["allow_overlap"] is False
    assert "3 near copies" not in data.extra.summary()
    assert "2 exact and 1 near copies of validation/test pairs dropped" in data.extra.summary()
    json.dumps(described)  # the manifest is JSON


def test_allow_overlap_keeps_the_copies_and_marks_the_run(extra_train):
    data = load(dataclasses.replace(SPEC, extra_train=extra_train, allow_overlap=True))
    assert set(load_prepared(extra_train).rows["id"]) <= set(data.train["id"])
    recorded = data.describe()["extra"]
    assert recorded["contaminated"] and recorded["dropped"] == 0
    assert recorded["joined"] == len(load_prepared(extra_train).rows)
    assert "KEPT" in data.extra.summary()
    other = load(dataclasses.replace(SPEC, extra_train=extra_train))
    assert recorded["fingerprint_joined"] != other.describe()["extra"]["fingerprint_joined"]


def test_an_extra_id_equal_to_a_watson_id_is_refused(tmp_path):
    rows = extra_rows(SAMPLE_DATA_DIR)
    rows.loc[7, "id"] = "4aba80e4e4"  # the sample's first training row
    folder = write_prepared(rows, [], tmp_path / "clash").folder
    with pytest.raises(DataError, match="'4aba80e4e4' is also a Watson id"):
        load(dataclasses.replace(SPEC, extra_train=folder))


def test_the_spec_round_trips_through_a_manifest(extra_train):
    spec = dataclasses.replace(SPEC, extra_train=extra_train, allow_overlap=True).resolved()
    assert DataSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
