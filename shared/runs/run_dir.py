"""The run-directory contract: both trainers write it, the evaluator reads it.

    run_dir/
      manifest.json          what ran (config, weights and data checksums, code commit), on what,
                             how fast; `status` says whether it finished
      predictions.csv        validation split: id, language, label, pred, p_entailment, ...
      history.csv            per epoch: epoch, train_loss, train_accuracy, val_loss, val_accuracy
      evals.csv              optional, runs with a dev part (data spec --dev-fraction): one row per
                             dev evaluation: step, epoch, examples, train_loss, dev_loss,
                             dev_accuracy, train_seconds (EVAL_COLUMNS)
      submission.csv         test.csv predictions: id, prediction (when test.csv exists)
      cls_embeddings.npy     optional: validation [CLS] vectors, rows in predictions.csv order
      run.lock               while a trainer runs: its PID and host (shared/runs/lock.py)

Every file is written to a temporary name and renamed into place, so a crashed run never
leaves a file that looks complete; the manifest is written first with status "running"
and rewritten with "finished" only after every other file is in place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import os
import platform
import resource
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from shared.data.spec import Data, DataSpec, load
from shared.data.watson import LABEL_NAMES, DataError

MANIFEST = "manifest.json"
PREDICTIONS = "predictions.csv"
HISTORY = "history.csv"
EVALS = "evals.csv"
SUBMISSION = "submission.csv"
EMBEDDINGS = "cls_embeddings.npy"
LOCK = "run.lock"

PROB_COLUMNS = tuple(f"p_{name}" for name in LABEL_NAMES)
PREDICTION_COLUMNS = ("id", "language", "label", "pred") + PROB_COLUMNS
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")
SUBMISSION_COLUMNS = ("id", "prediction")
# One dev evaluation: after `step` optimizer steps (`epoch` = step / steps per epoch, fractional
# mid-epoch; `examples` training rows seen), the mean training loss of the steps since the
# previous evaluation, the dev part's loss and accuracy, and the training wall seconds so far
# (compiling included, evaluations excluded).
EVAL_COLUMNS = ("step", "epoch", "examples", "train_loss", "dev_loss", "dev_accuracy",
                "train_seconds")
# Keys every manifest holds; the evaluator refuses a run without them.
MANIFEST_KEYS = ("trainer", "status", "config", "weights", "split", "data", "versions",
                 "devices", "params", "epochs", "peak_host_rss_mb",
                 "peak_accelerator_mem_mb", "started_at", "finished_at")


class RunDirError(ValueError):
    """A run directory that does not hold what the contract promises."""


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def peak_host_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def library_versions(*names: str) -> dict:
    versions = {"python": platform.python_version()}
    for name in ("numpy", "pandas") + names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of [n, classes] logits, in float64 (both trainers' outputs)."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predictions_frame(val: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """predictions.csv rows from the validation frame and [n, 3] class probabilities."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(val), len(LABEL_NAMES)):
        raise ValueError(f"probabilities of shape {probs.shape}; expected ({len(val)}, 3)")
    frame = pd.DataFrame({"id": val["id"].to_numpy(), "language": val["language"].to_numpy(),
                          "label": val["label"].to_numpy().astype(int),
                          "pred": probs.argmax(axis=1).astype(int)})
    for column, values in zip(PROB_COLUMNS, probs.T):
        frame[column] = values
    return frame


def submission_frame(test: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"id": test["id"].to_numpy(),
                         "prediction": np.asarray(probs).argmax(axis=1).astype(int)})


class RunWriter:
    """Writes one run directory. Usage: start(...), write_* ..., add_epoch(...), finish()."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.manifest: dict = {}

    def start(self, *, trainer: str, config: dict, weights: dict, split: dict, data: dict,
              versions: dict, devices: dict, params: dict, code: dict | None = None) -> None:
        previous = self._previous_manifest()
        self.manifest = {
            "trainer": trainer, "status": "running", "config": config, "weights": weights,
            "code": code,
            "split": split, "data": data, "versions": versions, "devices": devices,
            "params": params, "epochs": previous.get("epochs", []),
            "peak_host_rss_mb": None, "peak_accelerator_mem_mb": None,
            "started_at": previous.get("started_at", now()), "finished_at": None,
        }
        if previous:
            self.manifest["resumed_at"] = previous.get("resumed_at", []) + [now()]
        self._save()

    def add_epoch(self, epoch: int, seconds: float, examples: int, **extra) -> None:
        """Record one epoch's wall time (re-recording an epoch replaces it, for resumes).

        `seconds` is the whole epoch as a Keras epoch counts it: the training steps with any
        compiling, then the validation pass; both trainers record it so, so that epoch times
        and examples/s compare like with like. Trainers add `train_seconds` (steps only)."""
        record = {"epoch": int(epoch), "seconds": float(seconds),
                  "examples_per_s": float(examples / seconds) if seconds > 0 else None, **extra}
        epochs = [e for e in self.manifest["epochs"] if e["epoch"] != record["epoch"]]
        self.manifest["epochs"] = sorted(epochs + [record], key=lambda e: e["epoch"])
        self._save()

    def update(self, **fields) -> None:
        self.manifest.update(fields)
        self._save()

    def write_predictions(self, frame: pd.DataFrame) -> None:
        _require_columns(frame, PREDICTION_COLUMNS, PREDICTIONS)
        atomic_write_csv(self.run_dir / PREDICTIONS, frame[list(PREDICTION_COLUMNS)])

    def write_history(self, frame: pd.DataFrame) -> None:
        _require_columns(frame, HISTORY_COLUMNS, HISTORY)
        atomic_write_csv(self.run_dir / HISTORY, frame)

    def write_evals(self, frame: pd.DataFrame) -> None:
        _require_columns(frame, EVAL_COLUMNS, EVALS)
        atomic_write_csv(self.run_dir / EVALS, frame[list(EVAL_COLUMNS)])

    def write_submission(self, frame: pd.DataFrame) -> None:
        _require_columns(frame, SUBMISSION_COLUMNS, SUBMISSION)
        atomic_write_csv(self.run_dir / SUBMISSION, frame[list(SUBMISSION_COLUMNS)])

    def write_embeddings(self, embeddings: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(embeddings, dtype=np.float32))
        atomic_write_bytes(self.run_dir / EMBEDDINGS, buffer.getvalue())

    def finish(self, status: str = "finished", **fields) -> None:
        self.manifest.update(fields, status=status, finished_at=now(),
                             peak_host_rss_mb=max(self.manifest.get("peak_host_rss_mb") or 0.0,
                                                  peak_host_rss_mb()))
        self._save()

    def _previous_manifest(self) -> dict:
        path = self.run_dir / MANIFEST
        return json.loads(path.read_text()) if path.exists() else {}

    def _save(self) -> None:
        atomic_write_text(self.run_dir / MANIFEST,
                          json.dumps(self.manifest, indent=2, sort_keys=True, default=str) + "\n")


@dataclass(frozen=True)
class Run:
    """A finished run directory, read and checked against the contract."""
    run_dir: Path
    manifest: dict
    predictions: pd.DataFrame
    history: pd.DataFrame | None
    embeddings: np.ndarray | None
    evals: pd.DataFrame | None = None  # evals.csv, when the run had a dev part

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def split_fingerprint(self) -> str:
        return self.manifest["split"]["fingerprint"]


def read_run(run_dir: Path) -> Run:
    run_dir = Path(run_dir)
    path = run_dir / MANIFEST
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {MANIFEST}; is this a run directory?")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from None
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise RunDirError(f"{path}: missing key(s) {', '.join(missing)}")
    if manifest["status"] != "finished":
        raise RunDirError(f"{path}: status is {manifest['status']!r}, not 'finished'; rerun "
                          f"the trainer with the same command to resume it")
    predictions = _read_csv(run_dir / PREDICTIONS, PREDICTION_COLUMNS)
    history = _read_csv(run_dir / HISTORY, HISTORY_COLUMNS) if (run_dir / HISTORY).exists() else None
    embeddings = np.load(run_dir / EMBEDDINGS) if (run_dir / EMBEDDINGS).exists() else None
    if embeddings is not None and len(embeddings) != len(predictions):
        raise RunDirError(f"{run_dir / EMBEDDINGS}: {len(embeddings)} rows but "
                          f"{len(predictions)} predictions")
    evals = _read_csv(run_dir / EVALS, EVAL_COLUMNS) if (run_dir / EVALS).exists() else None
    return Run(run_dir, manifest, predictions, history, embeddings, evals)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise RunDirError(f"{path}: missing; the run did not write it")
    frame = pd.read_csv(path, dtype={"id": str}, keep_default_na=False)
    _require_columns(frame, columns, str(path))
    return frame


def _require_columns(frame: pd.DataFrame, columns, where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RunDirError(f"{where}: missing column(s) {', '.join(missing)}")


def rebuild_data(runs: list[Run], data_dir=None) -> tuple[Data | None, str]:
    """The data the runs trained on (training part, validation rows with their texts), rebuilt
    from a run's recorded data spec (manifest `data.spec`; `data_dir` overrides its folder) and
    accepted only if its split fingerprint equals the recorded one: (data, "") or (None, why
    not). Run directories hold ids and labels, not the texts."""
    recorded = runs[0].manifest["split"]
    reasons, tried = [], []
    for run in runs:
        recorded_spec = (run.manifest.get("data") or {}).get("spec")
        if not isinstance(recorded_spec, dict):
            reasons.append(f"{run.name}: its manifest records no data spec (an older run)")
            continue
        try:
            spec = DataSpec.from_dict(recorded_spec)
            if data_dir is not None:
                spec = dataclasses.replace(spec, data_dir=Path(data_dir))
        except (TypeError, ValueError) as err:
            reasons.append(f"{run.name}: recorded data spec unusable ({err})")
            continue
        if spec in tried:
            continue
        tried.append(spec)
        try:
            data = load(spec)
        except (DataError, ValueError, FileNotFoundError) as err:
            reasons.append(f"cannot rebuild the split ({err}; pass --data-dir)")
            continue
        if data.split.fingerprint != recorded["fingerprint"]:
            reasons.append(f"the split rebuilt from {data.data_dir / 'train.csv'} has a different "
                           f"fingerprint (train.csv changed since the run)")
            continue
        return data, ""
    return None, "; ".join(reasons)
