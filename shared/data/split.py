"""Train/validation splits of train.csv, each with a fingerprint that proves identity.

Rules:
  kaggle      the starter notebook's: first int(n * 0.7) rows in file order train, the rest
              validate (8,484 / 3,636 on the full data).
  stratified  seeded split stratified by language x label.
  grouped     seeded split keeping all rows of one premise on one side (premises repeat, so
              `kaggle` and `stratified` leak premises into validation).
Both parts keep file order, whatever the rule.

A dev part (carve_dev) is carved out of the training part only, premise-grouped and seeded, for
choices a run must not make on the validation rows (learning rate, best step); a training
subset (for cheap trials) is drawn from what the carve leaves. The validation part is the
split's, untouched, so runs with and without a dev part are still compared on the same rows.

    python -m shared.cli split --data-dir DIR [--split RULE] [--split-seed S]   # its fingerprint
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit, train_test_split

RULES = ("kaggle", "stratified", "grouped")


@dataclass(frozen=True)
class SplitSpec:
    rule: str = "kaggle"          # one of RULES
    train_fraction: float = 0.7   # share of rows (grouped: of premises) that train
    seed: int = 0                 # used by the seeded rules only

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"--split {self.rule!r}: choose one of {', '.join(RULES)}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction {self.train_fraction}: must lie in (0, 1)")

    def params(self) -> dict:
        """What identifies the rule; the seed only where it matters."""
        params = asdict(self)
        if self.rule == "kaggle":
            params.pop("seed")
        return params


@dataclass(frozen=True)
class Split:
    spec: SplitSpec
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        return split_fingerprint(self.spec, self.train_ids, self.val_ids)

    def parts(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(train, validation) rows of `frame`, in the split's order."""
        by_id = frame.set_index("id", drop=False)
        return (by_id.loc[list(self.train_ids)].reset_index(drop=True),
                by_id.loc[list(self.val_ids)].reset_index(drop=True))

    def describe(self) -> dict:
        """The split as recorded in a run manifest."""
        return {**self.spec.params(), "fingerprint": self.fingerprint,
                "n_train": len(self.train_ids), "n_val": len(self.val_ids)}


def split_fingerprint(spec: SplitSpec, train_ids, val_ids) -> str:
    """sha256 over the rule, its parameters and the ordered ids of each part."""
    payload = json.dumps({"params": spec.params(), "train_ids": list(train_ids),
                          "val_ids": list(val_ids)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def make_split(frame: pd.DataFrame, spec: SplitSpec = SplitSpec()) -> Split:
    n = len(frame)
    positions = np.arange(n)
    if spec.rule == "kaggle":
        cut = int(n * spec.train_fraction)
        train_pos, val_pos = positions[:cut], positions[cut:]
    elif spec.rule == "stratified":
        strata = frame["language"].astype(str) + "/" + frame["label"].astype(str)
        try:
            train_pos, val_pos = train_test_split(positions, train_size=spec.train_fraction,
                                                  random_state=spec.seed, stratify=strata)
        except ValueError as err:
            raise ValueError(f"stratified split impossible on these {n} rows ({err}); "
                             f"use --split kaggle or grouped, or more data") from None
    else:
        splitter = GroupShuffleSplit(n_splits=1, train_size=spec.train_fraction,
                                     random_state=spec.seed)
        train_pos, val_pos = next(splitter.split(positions, groups=frame["premise"]))
    ids = frame["id"].to_numpy()
    train_ids, val_ids = ids[np.sort(train_pos)], ids[np.sort(val_pos)]
    if len(train_ids) == 0 or len(val_ids) == 0:
        raise ValueError(f"split {spec.rule} of {n} rows leaves an empty part; use more rows")
    return Split(spec, tuple(train_ids), tuple(val_ids))


@dataclass(frozen=True)
class DevCarve:
    """The training part of a split, cut into the rows a run trains on and a dev part."""
    fraction: float             # share of the training part's premises held out as dev
    seed: int
    subset: int | None          # train on this many rows (seeded) of what the dev part leaves
    train_ids: tuple[str, ...]
    dev_ids: tuple[str, ...]

    @property
    def fingerprint(self) -> str:
        payload = json.dumps({"params": self.params(), "train_ids": list(self.train_ids),
                              "dev_ids": list(self.dev_ids)}, sort_keys=True,
                             separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def params(self) -> dict:
        return {"fraction": self.fraction, "seed": self.seed, "subset": self.subset}

    def parts(self, train: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(rows to train on, dev rows) of the split's training frame, in file order."""
        by_id = train.set_index("id", drop=False)
        return (by_id.loc[list(self.train_ids)].reset_index(drop=True),
                by_id.loc[list(self.dev_ids)].reset_index(drop=True))

    def describe(self) -> dict:
        """The carve as recorded in a run manifest (data.dev)."""
        return {**self.params(), "fingerprint": self.fingerprint,
                "n_train": len(self.train_ids), "n_dev": len(self.dev_ids)}


def carve_dev(train: pd.DataFrame, fraction: float, seed: int,
              subset: int | None = None) -> DevCarve:
    """Hold out `fraction` of the training part's premises as a dev part (grouped: premises
    repeat, and a row-level dev part would reward memorising them), then keep `subset` rows of
    the rest (seeded), all in file order. ValueError when a part would be empty."""
    positions = np.arange(len(train))
    if fraction > 0:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        train_pos, dev_pos = next(splitter.split(positions, groups=train["premise"]))
    else:
        train_pos, dev_pos = positions, positions[:0]
    if fraction > 0 and (len(dev_pos) == 0 or len(train_pos) == 0):
        raise ValueError(f"--dev-fraction {fraction} of {len(train)} training rows leaves an "
                         f"empty part; use another fraction or more rows")
    if subset is not None:
        if subset > len(train_pos):
            raise ValueError(f"--train-subset {subset}: only {len(train_pos)} training rows "
                             f"are left after the dev part; lower it")
        train_pos = np.random.default_rng(seed).choice(train_pos, size=subset, replace=False)
    ids = train["id"].to_numpy()
    return DevCarve(fraction, seed, subset, tuple(ids[np.sort(train_pos)]),
                    tuple(ids[np.sort(dev_pos)]))
