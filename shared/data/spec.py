"""The data spec: which file, which rows and which split a run sees, in one frozen value.

Both trainers' configs hold a DataSpec (`config.data`), every manifest records it, and
`load(spec)` turns it into validated, split frames, so a manifest alone rebuilds what a run saw
(with `--extra-train`, the prepared folder it names must still be there).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shared.data import contamination
from shared.data.extra import Extra, load_prepared
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
    dev_seed: int = 0  # seed of the dev part, of --train-subset and of where --extra-train rows fall among Watson's
    train_subset: int | None = None  # train on this many rows (seeded) of the training part left after the dev part (cheap trials) [default: all]
    limit: int | None = None  # use only the first N rows of train.csv and of test.csv (quick runs) [default: all rows]
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # reject texts longer than this
    extra_train: Path | None = None  # folder of extra training rows (MultiNLI, XNLI, ...) written by `python -m shared.data.prepare`; they join the training part only, after the dev part is carved, minus the pairs that repeat a Watson validation or test pair [default: none]
    allow_overlap: bool = False  # keep the extra rows that repeat a Watson validation or test pair (the run is then marked contaminated)

    def __post_init__(self):
        for name in ("data_dir", "extra_train"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
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
        extra = None if self.extra_train is None else self.extra_train.resolve()
        return dataclasses.replace(self, data_dir=data_dir.resolve(), extra_train=extra)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        for name in ("data_dir", "extra_train"):
            values[name] = None if values[name] is None else str(values[name])
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
    extra: ExtraUse | None = None    # the extra training rows (spec.extra_train), when given

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
        if self.extra is not None:
            described["extra"] = self.extra.describe()
            described["sha256"]["extra.csv"] = self.extra.prepared.fingerprint
        return described


@dataclass(frozen=True)
class ExtraUse:
    """Extra training rows as a run uses them: the prepared folder, the contamination check
    against the run's validation part and test.csv, and how many rows joined the training
    part."""
    prepared: Extra
    report: contamination.Report
    joined: int           # rows added to the training part
    allow_overlap: bool

    @property
    def overlapping(self) -> int:
        """Rows that repeat a Watson validation or test pair (exact or near)."""
        return int(self.report.drop_mask.sum())

    @property
    def contaminated(self) -> bool:
        """Rows repeating a validation or test pair were trained on (--allow-overlap)."""
        return self.allow_overlap and self.overlapping > 0

    def summary(self) -> str:
        """One line for a trainer's log."""
        sources = ", ".join(source.get("spec", "?") for source in self.prepared.sources)
        exact = int((self.report.rows["overlap"] == "exact").sum())
        said = (f"{exact:,} exact and {self.overlapping - exact:,} near copies of validation/test "
                f"pairs")
        said = (f"{said} KEPT (--allow-overlap: the run is contaminated)" if self.contaminated
                else f"{said} dropped")
        return (f"extra rows: {len(self.prepared.rows):,} from {sources or self.prepared.folder}; "
                f"{said}; {self.joined:,} joined the training part")

    def describe(self) -> dict:
        """The manifest's `data.extra`: sources, counts, fingerprints and the check's counts
        by kind; the run is `contaminated` when it kept overlapping rows."""
        kinds = self.report.rows["overlap"].value_counts()
        return {**self.prepared.describe(), "joined": self.joined,
                "dropped": 0 if self.allow_overlap else self.overlapping,
                "allow_overlap": self.allow_overlap, "contaminated": self.contaminated,
                "overlap": {kind: int(kinds.get(kind, 0)) for kind in contamination.KINDS},
                "threshold": self.report.threshold,
                "counts": {key: value for key, value in self.report.to_dict().items()
                           if key == "counts"}["counts"],
                "fingerprint_joined": rows_fingerprint(self.prepared.rows, self.report,
                                                        self.allow_overlap)}


def rows_fingerprint(rows: pd.DataFrame, report: contamination.Report, allow_overlap: bool) -> str:
    """sha256 over the ids of the extra rows that joined the training part, in order."""
    kept = rows if allow_overlap else contamination.drop_overlaps(rows, report)[0]
    return hashlib.sha256("\n".join(kept["id"]).encode("utf-8")).hexdigest()


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
    carve = dev = None
    if spec.carves:
        carve = carve_dev(train, spec.dev_fraction, spec.dev_seed, spec.train_subset)
        train, dev = carve.parts(train)
        dev = dev if len(dev) else None
    extra = None
    if spec.extra_train is not None:
        train, extra = join_extra(train, frame, val, test, spec)
    return Data(spec, train, val, test, split, dev, carve, extra)


def join_extra(train: pd.DataFrame, frame: pd.DataFrame, val: pd.DataFrame,
               test: pd.DataFrame | None, spec: DataSpec) -> tuple[pd.DataFrame, ExtraUse]:
    """The training part joined with the prepared extra rows, shuffled once (seed
    spec.dev_seed): checked against the validation part and test.csv, the overlapping pairs
    dropped unless spec.allow_overlap."""
    prepared = load_prepared(spec.extra_train, spec.max_text_chars)
    clash = prepared.rows["id"].isin(frame["id"])
    if clash.any():
        raise DataError(f"{spec.extra_train}: extra row id {prepared.rows['id'][clash].iat[0]!r} "
                        f"is also a Watson id; prepare the extra rows again")
    watson = {"validation": val} | ({} if test is None else {"test": test})
    report = contamination.check(prepared.rows, watson)
    kept = (prepared.rows if spec.allow_overlap
            else contamination.drop_overlaps(prepared.rows, report)[0])
    joined = pd.concat([train, kept[list(train.columns)]], ignore_index=True)
    # One seeded shuffle: the starter's pipeline never shuffles, so appended rows would all
    # come after Watson's in every epoch.
    joined = joined.sample(frac=1.0, random_state=spec.dev_seed).reset_index(drop=True)
    return joined, ExtraUse(prepared, report, len(kept), spec.allow_overlap)
