"""Extra training rows (MultiNLI, XNLI, ... through tfds) in the form both trainers read.

Reading tfds needs TensorFlow, which stays out of the JAX trainer's process and the evaluator
(issue #18), so the rows are prepared once by a separate command
(`python -m shared.data.prepare`) into a folder:

    extra.csv    id, premise, hypothesis, lang_abv, language, label, source: Watson's columns
                 and label order (0 entailment, 1 neutral, 2 contradiction), one row per pair
                 and language, `source` naming the spec it came from (e.g. xnli:validation)
    extra.json   format, the sources (spec, builder, version, split, rows, label names, rows
                 skipped), the row count and the fingerprint (sha256 of extra.csv)

`--extra-train FOLDER` (the data spec, both trainers) reads it: the rows join the training part
only, after the dev part is carved, and the pairs that repeat a Watson validation or test pair
are dropped first (shared.data.contamination) unless `--allow-overlap`.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shared.data.watson import (DEFAULT_MAX_TEXT_CHARS, TRAIN_COLUMNS, DataError, file_sha256,
                                read_watson_csv)

EXTRA_CSV = "extra.csv"
EXTRA_JSON = "extra.json"
EXTRA_COLUMNS = TRAIN_COLUMNS + ("source",)
FORMAT = 1


@dataclass(frozen=True)
class Extra:
    """A prepared folder, read and validated."""
    folder: Path
    rows: pd.DataFrame    # EXTRA_COLUMNS, label int
    sources: list[dict]   # extra.json's
    fingerprint: str      # sha256 of extra.csv

    def describe(self) -> dict:
        return {"folder": str(self.folder), "fingerprint": self.fingerprint,
                "rows": len(self.rows), "sources": self.sources}


def write_prepared(rows: pd.DataFrame, sources: list[dict], out: Path) -> Extra:
    """Write `rows` (EXTRA_COLUMNS) and `sources` as a prepared folder, all or nothing: the
    files are validated by reading them back before the folder appears. `out` must not hold
    a prepared folder already (DataError)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out}: exists and is not an empty folder; pass a new folder")
    missing = [c for c in EXTRA_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"extra rows lack column(s) {', '.join(missing)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        frame = rows[list(EXTRA_COLUMNS)].astype({"label": int})
        frame.to_csv(staging / EXTRA_CSV, index=False)
        fingerprint = file_sha256(staging / EXTRA_CSV)
        meta = {"format": FORMAT, "rows": len(frame), "fingerprint": fingerprint,
                "sources": sources}
        (staging / EXTRA_JSON).write_text(json.dumps(meta, indent=2) + "\n")
        extra = load_prepared(staging)  # the same checks a trainer will make
        os.replace(staging, out)  # replaces an empty folder too
    except BaseException:
        for path in staging.glob("*"):
            path.unlink()
        staging.rmdir()
        raise
    return Extra(out.resolve(), extra.rows, extra.sources, extra.fingerprint)


def load_prepared(folder: Path, max_text_chars: int = DEFAULT_MAX_TEXT_CHARS) -> Extra:
    """A folder written by `python -m shared.data.prepare`, validated like Watson's files (ids
    unique, labels 0-2, no empty or control-character texts) and checked against its recorded
    fingerprint. Raises DataError with one line naming the file and what to do."""
    folder = Path(folder)
    hint = ("; write it with python -m shared.data.prepare --extra-train SPEC --out "
            f"{folder}")
    meta_path, csv_path = folder / EXTRA_JSON, folder / EXTRA_CSV
    if not folder.is_dir():
        raise DataError(f"--extra-train {folder}: not a folder{hint}")
    if not meta_path.is_file() or not csv_path.is_file():
        raise DataError(f"--extra-train {folder}: needs {EXTRA_CSV} and {EXTRA_JSON}{hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{meta_path}: not valid JSON ({err}){hint}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{meta_path}: not a prepared-data record of format {FORMAT}{hint}")
    fingerprint = file_sha256(csv_path)
    if fingerprint != meta.get("fingerprint"):
        raise DataError(f"{csv_path}: changed since it was prepared (sha256 {fingerprint[:12]}, "
                        f"recorded {str(meta.get('fingerprint'))[:12]}){hint}")
    rows = read_watson_csv(csv_path, EXTRA_COLUMNS, max_text_chars)
    return Extra(folder.resolve(), rows, list(meta.get("sources") or []), fingerprint)
