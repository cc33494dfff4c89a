"""Which rows of extra NLI training data repeat Watson's validation or test pairs, as a command
(the check itself: shared/data/contamination.py):

    python -m shared.contamination --extra FILE.csv|FOLDER [--data-dir DIR] [--split RULE]
                                   [--threshold 0.9] [--out report.json]

Prints the counts by source and language and how many rows a trainer would drop; --out writes
the report with examples of each overlap kind as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from shared.cli import exit_on_bad_input
from shared.data.contamination import check, require_columns
from shared.data.extra import load_prepared
from shared.data.spec import DataSpec, load
from shared.data.split import RULES
from shared.data.watson import DataError
from shared.runs.run_dir import atomic_write_text


def read_extra(path: Path) -> pd.DataFrame:
    """The extra rows: a folder written by `python -m shared.data.prepare`, or a CSV, texts
    kept as written ("NA" stays text)."""
    if path.is_dir():
        return load_prepared(path).rows
    if not path.is_file():
        raise DataError(f"{path}: file not found; pass --extra a CSV with columns premise, "
                        f"hypothesis, language (or lang_abv), source")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0]
        raise DataError(f"{path}: not a readable UTF-8 CSV ({reason}); re-export it") from None
    require_columns(frame, str(path))
    return frame


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shared.contamination",
        description="Count and list extra NLI rows that repeat Watson validation/test pairs.")
    parser.add_argument("--extra", type=Path, required=True, metavar="FILE.csv|FOLDER",
                        help="extra rows: a folder written by python -m shared.data.prepare, "
                             "or a CSV with premise, hypothesis, language or lang_abv, source")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="Watson CSV folder [default: the Kaggle folder, else data/sample]")
    parser.add_argument("--split", default="kaggle", choices=RULES,
                        help="split rule whose validation part is checked [default: kaggle]")
    parser.add_argument("--threshold", type=float, default=0.9, metavar="X",
                        help="pair similarity from which a row is a near duplicate "
                             "[default: 0.9]")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                        help="write the report, with examples, as JSON here")
    args = parser.parse_args(argv)
    with exit_on_bad_input():
        data = load(DataSpec(data_dir=args.data_dir, split=args.split))
        watson = {"validation": data.val} | ({} if data.test is None else {"test": data.test})
        extra = read_extra(args.extra)
        report = check(extra, watson, threshold=args.threshold)
    if args.out is not None:  # first: a closed stdout (`| head`) must not lose the report
        described = {"extra": str(args.extra), "data_dir": str(data.data_dir),
                     "split": args.split,
                     "watson_rows": {part: len(frame) for part, frame in watson.items()},
                     **report.to_dict()}
        atomic_write_text(args.out, json.dumps(described, indent=2, ensure_ascii=False) + "\n")
    print(report.counts.to_string())
    print(f"dropped {int(report.drop_mask.sum())} of {len(extra)} extra rows "
          f"(threshold {report.threshold})")


if __name__ == "__main__":
    main()
