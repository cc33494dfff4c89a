"""Watson-format CSV loading with validation before any work starts.

Texts are kept byte-for-byte as the file holds them (leading/trailing spaces, "??"
artefacts, the string "NA"): the TF replica must see what the Kaggle notebook sees, and
both trainers must see the same thing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path

import pandas as pd

TRAIN_COLUMNS = ("id", "premise", "hypothesis", "lang_abv", "language", "label")
TEST_COLUMNS = TRAIN_COLUMNS[:-1]
TEXT_COLUMNS = ("premise", "hypothesis")
LABEL_NAMES = ("entailment", "neutral", "contradiction")
KAGGLE_DATA_DIR = Path("/kaggle/input/contradictory-my-dear-watson")
SAMPLE_DATA_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"
# The longest text in the Kaggle train/test files is ~1,000 characters; 10x that means
# something other than a sentence pair ended up in the file.
DEFAULT_MAX_TEXT_CHARS = 10_000
# Control characters no text holds: NUL, the C0 controls but tab, newline and carriage return
# (which a quoted CSV field may hold), DEL, and the C1 controls U+0080-U+009F (category Cc too:
# no glyph, no use in text). In a field they mean a binary or corrupt file (C1 in UTF-8 text is
# mostly mojibake: UTF-8 read as Latin-1 and saved again turns "“" into "â\x80\x9c"); the BERT
# tokenizers would drop them silently, so a corrupt row would train as a shorter, different
# text. Rejected, not removed: removing would keep the rest of the mojibake ("â") and break
# the rule that texts are kept as the file holds them. The real Watson files hold none.
CONTROL_CHARACTERS = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]"


class DataError(ValueError):
    """Bad input data. The message is one line naming the file, row, id and field."""


def default_data_dir() -> Path:
    """The Kaggle competition folder when attached, else the embedded sample."""
    return KAGGLE_DATA_DIR if KAGGLE_DATA_DIR.is_dir() else SAMPLE_DATA_DIR


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:  # streamed: weight files can be gigabytes
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_train(data_dir: Path, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> pd.DataFrame:
    """train.csv as a DataFrame (str columns, int `label`), validated."""
    return read_watson_csv(Path(data_dir) / "train.csv", TRAIN_COLUMNS, max_text_chars)


def load_test(data_dir: Path, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> pd.DataFrame | None:
    """test.csv validated, or None when the folder has no test.csv."""
    path = Path(data_dir) / "test.csv"
    if not path.exists():
        return None
    return read_watson_csv(path, TEST_COLUMNS, max_text_chars)


def read_watson_csv(path: Path, columns: tuple[str, ...], max_text_chars: int) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass --data-dir pointing at a folder with "
                        f"train.csv (and optionally test.csv) in the Watson format")
    text = _decode(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: file is empty; expected a header {','.join(columns)}") from None
    except csv.Error as err:
        raise DataError(f"{path}: header is not valid CSV ({err})") from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; header is "
                        f"{','.join(header)}, expected {','.join(columns)}")
    records = _read_records(path, reader, len(header))
    if not records:
        raise DataError(f"{path}: header but no rows; the file needs at least one data row")
    frame = pd.DataFrame(records, columns=header)[list(columns)]
    _validate(path, frame, max_text_chars)
    if "label" in columns:
        frame["label"] = frame["label"].astype(int)
    return frame


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line}: bytes are not valid UTF-8 ({err.reason}); "
                        f"re-save the file as UTF-8") from None


def _read_records(path: Path, reader, n_fields: int) -> list[list[str]]:
    records = []
    row = 0
    try:
        for row, record in enumerate(reader, start=1):
            if len(record) != n_fields:
                raise DataError(f"{path}: row {row} (line {reader.line_num}): {len(record)} "
                                f"fields, expected {n_fields}; check the quoting of that row")
            records.append(record)
    except csv.Error as err:
        raise DataError(f"{path}: row {row + 1} (line {reader.line_num}): broken CSV quoting "
                        f"({err}); quote texts that hold commas or quotes") from None
    return records


def _validate(path: Path, frame: pd.DataFrame, max_text_chars: int) -> None:
    def fail(index: int, field: str, problem: str) -> None:
        row_id = frame["id"].iat[index] or "<empty>"
        if not row_id.isprintable():  # a newline or control character: keep the message one line
            row_id = repr(row_id)
        raise DataError(f"{path}: row {index + 1} (id {row_id}), field '{field}': {problem}")

    for field in frame.columns:
        control = frame[field].str.contains(CONTROL_CHARACTERS, regex=True)
        if control.any():
            index = int(control.to_numpy().argmax())
            match = re.search(CONTROL_CHARACTERS, frame[field].iat[index])
            code = ord(match.group())
            cause = ("text decoded as Latin-1 and saved again?" if code >= 0x80
                     else "a corrupt or binary file?")
            fail(index, field, f"holds control character U+{code:04X} at character "
                               f"{match.start() + 1}, which no text contains ({cause}); fix or "
                               f"remove the row, or re-export the file as plain UTF-8 text")
    for field in frame.columns:
        empty = frame[field].str.strip() == ""
        if empty.any():
            fail(int(empty.to_numpy().argmax()), field,
                 "is empty or whitespace-only; fill it in or remove the row")
    for field in TEXT_COLUMNS:
        too_long = frame[field].str.len() > max_text_chars
        if too_long.any():
            index = int(too_long.to_numpy().argmax())
            fail(index, field, f"has {len(frame[field].iat[index])} characters, over the cap "
                               f"of {max_text_chars}; shorten it or raise --max-text-chars")
    duplicated = frame["id"].duplicated()
    if duplicated.any():
        index = int(duplicated.to_numpy().argmax())
        first = int((frame["id"] == frame["id"].iat[index]).to_numpy().argmax())
        fail(index, "id", f"duplicates row {first + 1}; ids must be unique")
    if "label" in frame.columns:
        bad = ~frame["label"].isin(["0", "1", "2"])
        if bad.any():
            index = int(bad.to_numpy().argmax())
            fail(index, "label", f"{frame['label'].iat[index]!r} is not one of 0, 1, 2 "
                                 f"(0 entailment, 1 neutral, 2 contradiction)")
