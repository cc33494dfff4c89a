"""Command-line pieces every entry point shares: data flags, loading, and bad-input exits."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shared.data import (DEFAULT_MAX_TEXT_CHARS, DataError, default_data_dir, file_sha256,
                         load_test, load_train)
from shared.split import RULES, Split, SplitSpec, make_split

EXIT_BAD_INPUT = 2


def add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data and split")
    group.add_argument("--data-dir", type=Path, default=None,
                       help="folder with train.csv (+ test.csv) in the Watson format "
                            "[default: /kaggle/input/contradictory-my-dear-watson if present, "
                            "else the embedded sample in data/sample]")
    group.add_argument("--split", choices=RULES, default="kaggle",
                       help="train/validation rule: kaggle = first 70%% of rows in file order "
                            "(the starter notebook's) [default: kaggle]")
    group.add_argument("--train-fraction", type=float, default=0.7,
                       help="share of train.csv that trains [default: 0.7]")
    group.add_argument("--seed", type=int, default=0,
                       help="seed of the seeded split rules and of training [default: 0]")
    group.add_argument("--limit", type=int, default=None,
                       help="use only the first N rows of train.csv and of test.csv "
                            "(quick runs; part of the split fingerprint)")
    group.add_argument("--max-text-chars", type=int, default=DEFAULT_MAX_TEXT_CHARS,
                       help=f"reject texts longer than this [default: {DEFAULT_MAX_TEXT_CHARS}]")


@dataclass(frozen=True)
class Data:
    """Validated data, split: what a trainer needs, and what its manifest records."""
    data_dir: Path
    train: pd.DataFrame   # the split's training rows
    val: pd.DataFrame     # the split's validation rows
    test: pd.DataFrame | None
    split: Split

    def describe(self) -> dict:
        files = {name: file_sha256(self.data_dir / name)
                 for name in ("train.csv", "test.csv") if (self.data_dir / name).exists()}
        return {"data_dir": str(self.data_dir), "sha256": files,
                "n_test": 0 if self.test is None else len(self.test)}


def load_data(args: argparse.Namespace) -> Data:
    """Load, validate and split as the flags say. Raises DataError / ValueError on bad input."""
    if args.limit is not None and args.limit < 2:
        raise ValueError(f"--limit {args.limit}: needs at least 2 rows")
    data_dir = Path(args.data_dir) if args.data_dir is not None else default_data_dir()
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: not a folder; point it at the folder that "
                        f"holds train.csv")
    frame = load_train(data_dir, args.max_text_chars)
    test = load_test(data_dir, args.max_text_chars)
    if args.limit is not None:
        frame = frame.head(args.limit).reset_index(drop=True)
        test = None if test is None else test.head(args.limit).reset_index(drop=True)
    split = make_split(frame, SplitSpec(args.split, args.train_fraction, args.seed))
    train, val = split.parts(frame)
    return Data(data_dir, train, val, test, split)


@contextlib.contextmanager
def exit_on_bad_input():
    """Turn bad-input exceptions into a one-line `error:` on stderr and exit code 2."""
    try:
        yield
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


# ---------------------------------------------------------------- config dataclasses as flags

# TrainConfig fields whose flags add_data_args defines (same names, same defaults): both
# trainers' configs carry them, so one split definition serves both.
DATA_FIELDS = ("data_dir", "split", "train_fraction", "seed", "limit", "max_text_chars")
METAVARS = {int: "N", float: "X", Path: "DIR"}


def data_namespace(config) -> argparse.Namespace:
    """A trainer config's data fields, as load_data expects them."""
    return argparse.Namespace(**{name: getattr(config, name) for name in DATA_FIELDS})


def check_fields(config, checks) -> None:
    """Raise a one-line ValueError for the first (flag, ok, problem) whose `ok` is false."""
    for flag, ok, problem in checks:
        if not ok:
            raise ValueError(f"--{flag} {getattr(config, flag.replace('-', '_'))}: {problem}")


def add_config_flags(group, cls, *, skip=(), rename=None) -> None:
    """One flag per dataclass field: --field-name, typed by the annotation, help = the comment
    after the field, so a config's documentation and its --help cannot drift apart."""
    rename = rename or {}
    hints = typing.get_type_hints(cls)
    comments = dict(re.findall(r"^\s+(\w+): .*?  # (.*)$", inspect.getsource(cls), re.M))
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = (field.default_factory() if field.default is dataclasses.MISSING
                   else field.default)
        help_text = comments[field.name].replace("%", "%%")
        if "[default:" not in help_text:  # a comment may say what a None default means
            shown = ",".join(default) if isinstance(default, tuple) else default
            help_text += f" [default: {shown}]"
        options = {"default": default, "help": help_text}
        kind = hints[field.name]
        if isinstance(kind, types.UnionType):  # `int | None`: the flag takes an int
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options["type"], options["metavar"] = _comma_list, "A,B"
        else:
            options["type"], options["metavar"] = kind, METAVARS.get(kind, field.name.upper())
        group.add_argument("--" + flag_dest(field.name, rename).replace("_", "-"), **options)


def flag_dest(name: str, rename: dict) -> str:
    """The argparse destination of a field's flag."""
    return rename.get(name, name).replace("-", "_")


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())
