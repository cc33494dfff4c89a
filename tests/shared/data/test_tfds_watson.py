"""The contradictory_my_dear_watson tfds builder gives Watson's rows as the CSV path reads them:
the same ids, order, texts and labels, hence the same split fingerprint; bad files are refused
with the CSV path's message."""

import shutil

import pandas as pd
import pytest
import tensorflow_datasets as tfds

import shared.data.tfds_watson  # noqa: F401  registers the builder
from shared.data.split import SplitSpec, make_split
from shared.data.watson import (LABEL_NAMES, SAMPLE_DATA_DIR, TEST_COLUMNS, TRAIN_COLUMNS,
                                DataError, load_test, load_train)

BUILDER = "contradictory_my_dear_watson"


def load_part(manual_dir, data_dir, split: str):
    """(frame in the CSV path's columns, info) of one split, prepared from `manual_dir`."""
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    dataset, info = tfds.load(BUILDER, split=split, data_dir=str(data_dir), with_info=True,
                              download_and_prepare_kwargs={"download_config": config})
    columns = TRAIN_COLUMNS if split == "train" else TEST_COLUMNS + ("label",)
    rows = [[int(example[c]) if c == "label" else example[c].decode("utf-8") for c in columns]
            for example in tfds.as_numpy(dataset)]
    return pd.DataFrame(rows, columns=list(columns)), info


def assert_same_as_csv(manual_dir, data_dir):
    train, info = load_part(manual_dir, data_dir, "train")
    expected = load_train(manual_dir)
    pd.testing.assert_frame_equal(train, expected)
    assert make_split(train, SplitSpec()).fingerprint == \
        make_split(expected, SplitSpec()).fingerprint
    test, _ = load_part(manual_dir, data_dir, "test")
    assert set(test["label"]) == {-1}  # tfds's "no label"
    pd.testing.assert_frame_equal(test[list(TEST_COLUMNS)], load_test(manual_dir))
    return info


def test_sample_reads_as_the_csv_path(tmp_path):
    info = assert_same_as_csv(SAMPLE_DATA_DIR, tmp_path)
    assert (info.name, str(info.version)) == (BUILDER, "1.0.0")
    assert info.disable_shuffling
    assert info.features["label"].names == list(LABEL_NAMES)
    assert {name: split.num_examples for name, split in info.splits.items()} == \
        {"train": 933, "test": 87}


def test_real_data_reads_as_the_csv_path(watson_dir, tmp_path):
    info = assert_same_as_csv(watson_dir, tmp_path)
    assert info.splits["train"].num_examples == 12_120


def test_texts_are_kept_byte_for_byte_and_test_csv_is_optional(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    (manual_dir / "train.csv").write_bytes(
        "\ufeffid,premise,hypothesis,lang_abv,language,label\n"
        'b000000001,"  Leading and trailing spaces  ",NA,en,English,0\n'
        'b000000002,"Atat??rk said ""no"", twice","two\nlines\r\nhere",tr,Turkish,2\n'
        "b000000003,L'été \U0001f600 à Paris,ẞtraße ﬁne,fr,French,1\n".encode("utf-8"))
    train, info = load_part(manual_dir, tmp_path / "tfds", "train")
    pd.testing.assert_frame_equal(train, load_train(manual_dir))
    assert train["premise"].tolist()[:2] == ["  Leading and trailing spaces  ",
                                             'Atat??rk said "no", twice']
    assert train["hypothesis"].tolist() == ["NA", "two\nlines\r\nhere", "ẞtraße ﬁne"]
    assert list(info.splits) == ["train"]


def test_invalid_file_is_refused_with_the_csv_message(tmp_path):
    manual_dir = tmp_path / "manual"
    manual_dir.mkdir()
    shutil.copy(SAMPLE_DATA_DIR / "test.csv", manual_dir / "test.csv")
    (manual_dir / "train.csv").write_text(
        "id,premise,hypothesis,lang_abv,language,label\n"
        "c000000001,A cat sleeps.,An animal rests.,en,English,0\n"
        "c000000002,A dog barks.,It is silent.,en,English,3\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.csv: row 2 \(id c000000002\), field 'label': "
                                        r"'3' is not one of 0, 1, 2"):
        load_part(manual_dir, tmp_path / "tfds", "train")
    assert not (tmp_path / "tfds" / BUILDER / "1.0.0").exists()


def test_missing_manual_dir_shows_the_instructions(tmp_path):
    with pytest.raises(AssertionError, match="train.csv and test.csv"):
        load_part(tmp_path / "absent", tmp_path / "tfds", "train")
