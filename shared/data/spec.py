"""The data spec: which file, which rows and which split a run sees, in one frozen value.

Both trainers' configs hold a DataSpec (`config.data`), every manifest records it, and
`load(spec)` turns it into validated, split frames, so a manifest alone rebuilds what a run saw.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shared.data.split import RULES, DevCarve, Split, SplitSpec, carve_dev, make_split
from shared.data.watson import (DEFAULT_MAX_TEXT_CHARS, DataError, default_data_dir,
                                file_sha256, load_test, load_train)


@dataclass(frozen=True)
class DataSpec:
    data_dir: Path | None = None  # Watson CSV folder [default: /kaggle/input/contradictory-my-dear-watson if present, else the embedded sample data/sample]
    split: str = "kaggle"  # train/validation rule: kaggle (the notebook's first 70% in file order), stratified or grouped (by premise)
    train_fraction: float = 0.7  # share of train.csv (grouped: of its premises) that trains
    split_seed: int = 0  # seed of the seeded split rules (stratified, grouped)
    dev_fraction: float = 0.0  # share of the training part's premises held out as a dev part (premise-grouped, seeded by --dev-seed) for choices the validation rows must not make: learning rate, best step; 0 = no dev part
    dev_seed: int = 0  # seed of the dev part and of --train-subset
    train_subset: int | None = None  # train on this many rows (seeded) of the training part left after the dev part (cheap trials) [default: all]
    limit: int | None = None  # use only the first N rows of train.csv and of test.csv (quick runs) [default: all rows]
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # reject texts longer than this

    def __post_init__(self):
        if self.data_dir is not None and not isinstance(self.data_dir, Path):
            object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.split not in RULES:
            raise ValueError(f"--split {self.split}: choose one of {', '.join(RULES)}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"--train-fraction {self.train_fraction}: must lie in (0, 1)")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"--dev-fraction {self.dev_fraction}: must lie in [0, 1)")
        if self.train_subset is not None and self.train_subset < 1:
            raise ValueError(f"--train-subset {self.train_subset}: must be >= 1")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"--limit {self.limit}: needs at least 2 rows")
        if self.max_text_chars < 1:
            raise ValueError(f"--max-text-chars {self.max_text_chars}: must be >= 1")

    @property
    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.split, self.train_fraction, self.split_seed)

    @property
    def carves(self) -> bool:
        """The training part is cut (a dev part, a subset, or both)."""
        return self.dev_fraction > 0 or self.train_subset is not None

    def resolved(self) -> "DataSpec":
        """The same spec with the default folder filled in (what a manifest records)."""
        data_dir = self.data_dir if self.data_dir is not None else default_data_dir()
        return dataclasses.replace(self, data_dir=data_dir.resolve())

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["data_dir"] = None if self.data_dir is None else str(self.data_dir)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "DataSpec":
        """The spec a manifest recorded; unknown keys are an error, missing ones take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"data spec has unknown field(s) {', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class Data:
    """Validated data, split: what a trainer needs, and what its manifest records."""
    spec: DataSpec        # resolved: data_dir is the folder read
    train: pd.DataFrame   # the rows a run trains on: the split's training part, minus dev
    val: pd.DataFrame     # the split's validation rows
    test: pd.DataFrame | None
    split: Split
    dev: pd.DataFrame | None = None  # held out of the training part (spec.dev_fraction)
    carve: DevCarve | None = None    # how the training part was cut, when it was

    @property
    def data_dir(self) -> Path:
        return self.spec.data_dir

    def describe(self) -> dict:
        """The manifest's `data`: the spec, the files' checksums, the test size and, when the
        training part was cut, the carve (`dev`)."""
        described = {"spec": self.spec.to_dict(), "data_dir": str(self.data_dir),
                     "sha256": file_checksums(self.data_dir), "n_test": 0 if self.test is None
                     else len(self.test)}
        if self.carve is not None:
            described["dev"] = self.carve.describe()
        return described


def file_checksums(data_dir: Path) -> dict:
    return {name: file_sha256(Path(data_dir) / name)
            for name in ("train.csv", "test.csv") if (Path(data_dir) / name).exists()}


def load(spec: DataSpec) -> Data:
    """Load, validate and split as `spec` says. Raises DataError / ValueError on bad input."""
    spec = spec.resolved()
    if not spec.data_dir.is_dir():
        raise DataError(f"--data-dir {spec.data_dir}: not a folder; point it at the folder that "
                        f"holds train.csv")
    frame = load_train(spec.data_dir, spec.max_text_chars)
    test = load_test(spec.data_dir, spec.max_text_chars)
    if spec.limit is not None:
        frame = frame.head(spec.limit).reset_index(drop=True)
        test = None if test is None else test.head(spec.limit).reset_index(drop=True)
    split = make_split(frame, spec.split_spec)
    train, val = split.parts(frame)
    if not spec.carves:
        return Data(spec, train, val, test, split)
    carve = carve_dev(train, spec.dev_fraction, spec.dev_seed, spec.train_subset)
    train, dev = carve.parts(train)
    return Data(spec, train, val, test, split, dev if len(dev) else None, carve)
