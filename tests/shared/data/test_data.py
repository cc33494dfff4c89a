"""Data loading and validation: good files load verbatim, bad files fail with a one-line error."""

import subprocess
import sys

import pandas as pd
import pytest

from shared.data.watson import (SAMPLE_DATA_DIR, TEST_COLUMNS, TRAIN_COLUMNS, DataError,
                                load_test, load_train)

HEADER = ",".join(TRAIN_COLUMNS)
GOOD_ROWS = [
    "a1,The cat sat.,A cat is sitting.,en,English,0",
    "a2, Leading space kept,Nobody sits.,en,English,2",
    'a3,"Commas, and ""quotes"" survive",Atat??rk was here.,tr,Turkish,1',
]


def write(tmp_path, name, lines, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes("\n".join(lines).encode(encoding) + b"\n")
    return path


def test_good_file_loads_verbatim(tmp_path):
    write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS)
    frame = load_train(tmp_path)
    assert list(frame.columns) == list(TRAIN_COLUMNS)
    assert frame["premise"].tolist() == ["The cat sat.", " Leading space kept",
                                         'Commas, and "quotes" survive']
    assert frame["hypothesis"].iat[2] == "Atat??rk was here."
    assert frame["label"].tolist() == [0, 2, 1]
    assert load_test(tmp_path) is None


def test_na_strings_stay_text(tmp_path):
    # pandas' default would turn "NA" into a missing value; the text must survive as written.
    write(tmp_path, "train.csv", [HEADER, "b1,NA,null,en,English,1"])
    assert load_train(tmp_path)[["premise", "hypothesis"]].values.tolist() == [["NA", "null"]]


@pytest.mark.parametrize("row, expected", [
    ("a9,   ,x,en,English,0", r"row 4 \(id a9\), field 'premise': is empty or whitespace-only"),
    ("a9,p,h,en,English,", r"row 4 \(id a9\), field 'label': is empty"),
    ("a9,p,h,en,English,3", r"row 4 \(id a9\), field 'label': '3' is not one of 0, 1, 2"),
    ("a9,p,h,en,English,x", r"field 'label': 'x' is not one of"),
    ("a9,p,h,en,English,1.0", r"field 'label': '1.0' is not one of"),
    ("a1,p,h,en,English,1", r"row 4 \(id a1\), field 'id': duplicates row 1"),
    ("a9,p,h,en,English,1,extra", r"row 4 \(line 5\): 7 fields, expected 6"),
    ('a9,"unclosed,h,en,English,1', r"broken CSV quoting"),
    ("a9,p,h,en,English", r"row 4 \(line 5\): 5 fields, expected 6"),
])
def test_bad_rows_name_row_id_and_field(tmp_path, row, expected):
    write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS + [row])
    with pytest.raises(DataError, match=expected) as info:
        load_train(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "train.csv" in message


def test_text_over_cap(tmp_path):
    write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS + ["a9," + "w" * 51 + ",h,en,English,0"])
    with pytest.raises(DataError, match=r"field 'premise': has 51 characters, over the cap of 50"):
        load_train(tmp_path, max_text_chars=50)


@pytest.mark.parametrize("lines, expected", [
    ([], "file is empty"),
    ([HEADER], "header but no rows"),
    (["id,premise,hypothesis,language,label", "a,b,c,d,0"], r"missing column\(s\) lang_abv"),
])
def test_bad_files(tmp_path, lines, expected):
    (tmp_path / "train.csv").write_text("\n".join(lines))
    with pytest.raises(DataError, match=expected):
        load_train(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="train.csv: file not found"):
        load_train(tmp_path)


def test_undecodable_utf8_names_the_line(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(("\n".join([HEADER] + GOOD_ROWS) + "\n").encode() +
                     "a9,caf\xe9,h,fr,French,0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"line 5: bytes are not valid UTF-8"):
        load_train(tmp_path)


def test_test_file_without_label_and_duplicate_ids(tmp_path):
    write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS)
    write(tmp_path, "test.csv", [",".join(TEST_COLUMNS), "t1,p,h,en,English", "t1,p,h,en,English"])
    with pytest.raises(DataError, match=r"test.csv: row 2 \(id t1\), field 'id': duplicates row 1"):
        load_test(tmp_path)


def test_embedded_sample_is_valid():
    train, test = load_train(SAMPLE_DATA_DIR), load_test(SAMPLE_DATA_DIR)
    assert train["language"].nunique() == 15 and set(train["label"]) == {0, 1, 2}
    assert len(train) >= 200 and test is not None and len(test) >= 30
    assert not set(train["id"]) & set(test["id"])


def test_real_watson_data(watson_dir):
    train, test = load_train(watson_dir), load_test(watson_dir)
    assert (len(train), len(test)) == (12_120, 5_195)
    assert train["label"].value_counts().sort_index().tolist() == [4_176, 3_880, 4_064]
    assert train["premise"].nunique() == 8_209
    raw = pd.read_csv(watson_dir / "train.csv", dtype=str, keep_default_na=False)
    assert train["premise"].tolist() == raw["premise"].tolist()  # texts kept exactly
    assert (train["premise"].str.contains(r"\?\?", regex=True)
            | train["hypothesis"].str.contains(r"\?\?", regex=True)).sum() == 36


@pytest.mark.parametrize("row, expected", [
    ("a9,The c\x00at,h,en,English,0",
     r"row 4 \(id a9\), field 'premise': holds control character U\+0000 at character 6"),
    ("a9,p,A cat\x1b[0m,en,English,0", r"field 'hypothesis': holds control character U\+001B"),
    ("a9,p,h\x0b,en,English,0", r"field 'hypothesis': holds control character U\+000B"),
    ("a9,p,h\x0c,en,English,0", r"field 'hypothesis': holds control character U\+000C"),
    ("a9,p,h,en\x01,English,0", r"field 'lang_abv': holds control character U\+0001"),
    ("a9,p,h,en,Engl\x7fish,0", r"field 'language': holds control character U\+007F"),
    # C1 controls as C0: mojibake of “ (UTF-8 read as Latin-1), and U+0085 (NEL)
    ("a9,p,\u00e2\x80\x9cquoted,en,English,0",
     r"field 'hypothesis': holds control character U\+0080 at character 2, which no text "
     r"contains \(text decoded as Latin-1 and saved again\?\)"),
    ("a9,p\x85,h,en,English,0", r"field 'premise': holds control character U\+0085"),
    ("a9,p,h,en,English\x9f,0", r"field 'language': holds control character U\+009F"),
    ("a\x009,p,h,en,English,0",
     r"row 4 \(id 'a\\x009'\), field 'id': holds control character U\+0000"),
])
def test_control_characters_are_rejected(tmp_path, row, expected):
    write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS + [row])
    with pytest.raises(DataError, match=expected) as info:
        load_train(tmp_path)
    message = str(info.value)
    assert "\n" not in message and "\x00" not in message and "train.csv" in message
    assert "fix or remove the row" in message


def test_latin1_letters_and_format_characters_are_text(tmp_path):
    # Next to the C1 range: U+00A0..U+00FF are letters and signs; the real Watson rows hold
    # U+00AD (soft hyphen), U+200B and U+200F (format characters, not controls).
    write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS
          + ["a9,caf\u00e9\u00a0\u00ff,soft\u00adhy\u200bph\u200fen,en,English,0"])
    assert load_train(tmp_path)["hypothesis"].iat[3] == "soft\u00adhy\u200bph\u200fen"


def test_tab_newline_and_carriage_return_in_quoted_fields_are_text(tmp_path):
    write(tmp_path, "train.csv",
          [HEADER] + GOOD_ROWS + ['a9,"two\tcolumns","line one\nline two\r\n",en,English,0'])
    frame = load_train(tmp_path)
    assert frame["premise"].iat[3] == "two\tcolumns"
    assert frame["hypothesis"].iat[3] == "line one\nline two\r\n"


def test_test_file_is_checked_for_control_characters(tmp_path):
    write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS)
    write(tmp_path, "test.csv", [",".join(TEST_COLUMNS), "t1,p,h\x00\x00,en,English"])
    with pytest.raises(DataError, match=r"test.csv: row 1 \(id t1\), field 'hypothesis': holds "
                                        r"control character U\+0000 at character 2"):
        load_test(tmp_path)


def cli_split(data_dir):
    return subprocess.run([sys.executable, "-m", "shared.cli", "split", "--data-dir",
                           str(data_dir)], capture_output=True, text=True)


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS + ["a9,p,h,en,English,7"])
    result = cli_split(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and "field 'label'" in result.stderr


def test_cli_nul_in_a_file_exits_2_with_one_line(tmp_path):
    # A file with a NUL in a text, like one cut short and padded by a crashed copy.
    path = write(tmp_path, "train.csv", [HEADER] + GOOD_ROWS)
    path.write_bytes(path.read_bytes() + b"a9,p\x00\x00\x00,h,en,English,0\n")
    result = cli_split(tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ")
    assert ("train.csv: row 4 (id a9), field 'premise': holds control character U+0000"
            in result.stderr)
