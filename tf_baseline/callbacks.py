"""Callbacks that make a run's record and its resume exact across process deaths."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import tensorflow as tf

from shared.runs.checksums import mismatches, read_record, write_record
from shared.runs.reuse import RunStateError
from shared.runs.run_dir import RunWriter, atomic_write_bytes, peak_host_rss_mb


class EpochRecorder(keras.callbacks.Callback):
    """Writes each epoch's time, metrics and memory peaks into the manifest as it ends.

    The manifest survives a resume (Keras' History does not), so history.csv is built from
    these records. Keep this callback before BackupAndRestore: an epoch is then recorded
    before it is backed up, and a death in between only makes the resumed run redo it.
    """

    def __init__(self, writer: RunWriter, examples_per_epoch: int):
        super().__init__()
        self.writer = writer
        self.examples_per_epoch = examples_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_seconds = None

    def on_test_begin(self, logs=None):
        self._train_seconds = time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        # `seconds` spans the whole Keras epoch, validation included, like the notebook's
        # "39 s per epoch"; `train_seconds` only the training steps.
        self.writer.add_epoch(
            epoch + 1, time.perf_counter() - self._start, self.examples_per_epoch,
            train_seconds=self._train_seconds, train_loss=logs["loss"],
            train_accuracy=logs["accuracy"], val_loss=logs["val_loss"],
            val_accuracy=logs["val_accuracy"], peak_host_rss_mb=peak_host_rss_mb(),
            peak_accelerator_mem_mb=peak_gpu_memory_mb())


def peak_gpu_memory_mb() -> float | None:
    """Peak TensorFlow allocation on the busiest GPU so far; None without GPUs."""
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        return None
    return max(tf.config.experimental.get_memory_info(f"GPU:{index}")["peak"]
               for index in range(len(gpus))) / 2**20


class ExactResume(keras.callbacks.Callback):
    """Saves and restores the state BackupAndRestore's weight file leaves out.

    - Dropout seed generators: Keras does not save them, so a resumed run would replay
      epoch 1's dropout masks in epoch 2. Restored, a resumed run computes what an
      uninterrupted one computes.
    - LoRA layers: Keras saves the merged kernel W + BA and, on loading into a LoRA layer,
      zeroes both factors; with A = B = 0 neither gets a gradient and training stalls. The
      raw kernel and factors are restored instead.

    One small .npz per finished epoch in `state_dir` (the last two kept). Keep this callback
    before BackupAndRestore so that the file for an epoch exists before its backup does.
    """

    def __init__(self, state_dir: Path):
        super().__init__()
        self.state_dir = Path(state_dir)

    def _variables(self) -> list:
        lora_layers = {_layer_path(v) for v in self.model.variables
                       if v.path.endswith("/lora_kernel_a")}
        return [v for v in self.model.variables
                if v.path.endswith("/seed_generator_state") or _layer_path(v) in lora_layers]

    def _path(self, epoch: int) -> Path:
        return self.state_dir / f"epoch_{epoch}.npz"

    def on_train_begin(self, logs=None):
        self._epoch_began = False

    def on_epoch_begin(self, epoch, logs=None):
        # Keras numbers epochs from 0 and starts a resumed fit at the backed-up epoch.
        if not self._epoch_began and epoch > 0:
            self._restore(epoch)
        self._epoch_began = True

    def on_train_end(self, logs=None):
        # All epochs were done before the restart: only the weights matter from here on.
        if not self._epoch_began:
            self._restore(self.params["epochs"])

    def on_epoch_end(self, epoch, logs=None):
        variables = self._variables()
        arrays = {f"v{i}": keras.ops.convert_to_numpy(v.value) for i, v in enumerate(variables)}
        arrays["paths"] = np.array([v.path for v in variables])
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self._path(epoch + 1), buffer.getvalue())  # makes state_dir
        self._path(epoch - 1).unlink(missing_ok=True)

    def _restore(self, epoch: int) -> None:
        path = self._path(epoch)
        if not path.is_file():
            raise RuntimeError(f"{path}: missing, so the backup cannot be resumed exactly; "
                               f"delete {self.state_dir.parent} to restart the run")
        variables = self._variables()
        with np.load(path) as saved:
            if saved["paths"].tolist() != [v.path for v in variables]:
                raise RuntimeError(f"{path}: saved for a different model; delete "
                                   f"{self.state_dir.parent} to restart the run")
            for i, variable in enumerate(variables):
                variable.assign(saved[f"v{i}"])


def _layer_path(variable) -> str:
    return variable.path.rsplit("/", 1)[0]


# keras.callbacks.BackupAndRestore's files (Keras 3.15) and the .bkp suffix of its previous pair
# (double_checkpoint=True).
KERAS_WEIGHTS, KERAS_METADATA = "latest.weights.h5", "training_metadata.json"
KERAS_PREVIOUS = ".bkp"
# The optimizer's step count in Keras' weight file (its first variable, `iterations`).
KERAS_ITERATIONS = "optimizer/vars/0"
CHECKSUM_DIR = "checksums"  # BackupChecksums' records: epoch_<N>.json
# What a cut, garbled or missing file raises when read (found by damaging each kind): h5py
# OSError ('truncated file', 'file signature not found'), RuntimeError or KeyError from a
# damaged object header; np.load zipfile.BadZipFile (cut, bad CRC-32), EOFError (empty),
# ValueError (not an .npy), KeyError (a missing array); json JSONDecodeError/UnicodeDecodeError.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)
_NPZ_ERRORS = (OSError, zipfile.BadZipFile, EOFError, ValueError, KeyError)


def backup_callbacks(backup_dir: Path) -> list[keras.callbacks.Callback]:
    """The callbacks that write the resume state in backup_dir, in their order: ExactResume's
    state of an epoch exists before Keras' backup of it, and BackupChecksums records both."""
    backup_dir = Path(backup_dir)
    return [ExactResume(backup_dir / "exact"),
            keras.callbacks.BackupAndRestore(str(backup_dir / "keras"), double_checkpoint=True,
                                             delete_checkpoint=False),
            BackupChecksums(backup_dir)]


class BackupChecksums(keras.callbacks.Callback):
    """After Keras has backed up epoch N: checksums/epoch_N.json, the sha256 of its weights,
    its metadata and ExactResume's state (shared/runs/checksums.py), the last two epochs kept
    (Keras keeps two pairs). check_backup compares a pair with the record of the epoch its
    metadata names, so a garbled byte in a weight array (which HDF5 reads without complaint)
    is found, as is a kill between Keras' weight and metadata writes."""

    def __init__(self, backup_dir: Path):
        super().__init__()
        self.backup_dir = Path(backup_dir)

    def on_epoch_end(self, epoch, logs=None):
        record_backup(self.backup_dir, epoch + 1)


def record_backup(backup_dir: Path, epoch: int) -> None:
    """BackupChecksums' record of Keras' newest pair, backed up after `epoch`."""
    keras_dir = backup_dir / "keras"
    write_record(_record_path(backup_dir, epoch), _pair_files(
        backup_dir, keras_dir / KERAS_WEIGHTS, keras_dir / KERAS_METADATA, epoch))
    _record_path(backup_dir, epoch - 2).unlink(missing_ok=True)


def _record_path(backup_dir: Path, epoch: int) -> Path:
    return backup_dir / CHECKSUM_DIR / f"epoch_{epoch}.json"


def _pair_files(backup_dir: Path, weights: Path, metadata: Path, epoch: int) -> dict:
    """A backed-up epoch's files by their part: Keras' pair and ExactResume's state."""
    return {"weights": weights, "metadata": metadata,
            "exact": backup_dir / "exact" / f"epoch_{epoch}.npz"}  # ExactResume._path


def check_backup(backup_dir: Path, steps_per_epoch: int) -> None:
    """Make sure a resume from `backup_dir` can load, repairing it if Keras keeps a good
    previous backup; RunStateError (one line, says --restart) when it cannot.

    `backup_dir` holds keras/ (BackupAndRestore with double_checkpoint=True), exact/
    (ExactResume) and checksums/ (BackupChecksums). Keras resumes from keras/latest.weights.h5
    + training_metadata.json and falls back to its .bkp pair only when opening the weights
    raises OSError; a cut metadata file, or a missing or cut exact/epoch_<N>.npz for the epoch
    N to resume, stops every later fit with a traceback; weights saved after epoch N+1 under
    metadata still naming N (a kill between Keras' two writes) silently train epoch N+1 twice.
    Here each file of the newest pair and its .npz is compared with the checksums recorded for
    that epoch (read whole when there is no record), and the optimizer's step count in the
    weights with the epoch the metadata names (`steps_per_epoch` steps each). Weights one
    epoch ahead of their metadata that read whole, with ExactResume's state of that epoch,
    are the two-write window: the metadata is rewritten to name their epoch (resuming at the
    right step), with one warning line. Otherwise, if a file is wrong and the previous pair
    (one epoch older; ExactResume keeps that epoch's .npz too) is right, it is copied over the
    newest with one warning line on stderr."""
    keras_dir = Path(backup_dir) / "keras"
    latest = (keras_dir / KERAS_WEIGHTS, keras_dir / KERAS_METADATA)
    previous = tuple(path.with_name(path.name + KERAS_PREVIOUS) for path in latest)
    if not any(path.exists() for path in latest + previous):
        return  # killed before the first backup: the run starts from epoch 1
    problems, _ = _backup_problems(Path(backup_dir), *latest, steps_per_epoch)
    if not problems:
        return
    unfinished = _finish_interrupted_backup(Path(backup_dir), steps_per_epoch)
    if unfinished == []:
        return
    problems += [problem for problem in unfinished or [] if problem not in problems]
    if any(path.exists() for path in previous):
        previous_problems, epoch = _backup_problems(Path(backup_dir), *previous, steps_per_epoch)
        if not previous_problems:
            # Metadata first out, last in: a kill during the repair leaves no metadata, which
            # counts as damaged, so the next attempt repairs again.
            latest[1].unlink(missing_ok=True)
            for source, target in zip(previous, latest):
                _copy_atomically(source, target)
            print(f"warning: resume state damaged: {'; '.join(problems)}; resuming from "
                  f"Keras' previous backup (after epoch {epoch}) instead", file=sys.stderr,
                  flush=True)
            return
        problems += previous_problems
    raise RunStateError(f"the resume state in {backup_dir} is damaged: {'; '.join(problems)}; "
                        f"rerun with --restart to train from scratch (discards the resume "
                        f"state)")


def _backup_problems(backup_dir: Path, weights: Path, metadata: Path,
                     steps_per_epoch: int) -> tuple[list[str], int | None]:
    """('path: what is wrong' for each damaged file of a backup pair, the epoch it resumes)."""
    problems, epoch = [], None
    try:
        epoch = json.loads(metadata.read_bytes())["epoch"]
        if type(epoch) is not int or epoch < 0:
            raise ValueError(f"epoch {epoch!r} is not a count of epochs")
    except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        problems.append(_problem(metadata, err))
        epoch = None
    files = _pair_files(backup_dir, weights, metadata, epoch or 0)
    if not epoch:  # nothing of ExactResume's to restore
        del files["exact"]
    recorded, record = None, _record_path(backup_dir, epoch or 0)
    if epoch is not None:
        try:
            recorded = read_record(record)
        except ValueError as err:
            problems.append(str(err))
    if recorded is not None:
        problems += mismatches(record, recorded, files)
    else:  # older backups, or a kill before the record: read every file whole
        problems += _read_problems(files)
    # Keras reads a missing metadata file as epoch 0.
    named = epoch if epoch is not None else None if metadata.exists() else 0
    steps = _optimizer_steps(weights)
    if named is not None and steps is not None and steps != named * steps_per_epoch:
        if steps == (named + 1) * steps_per_epoch:
            problems.append(f"{weights} holds the weights after epoch {named + 1} ({steps} "
                            f"optimizer steps) but {metadata} names epoch {named}: killed "
                            f"between Keras' two writes, which would train epoch {named + 1} "
                            f"twice")
        else:
            problems.append(f"{weights} holds {steps} optimizer steps, not the "
                            f"{named * steps_per_epoch} of epoch {named} that {metadata} names")
    return problems, epoch


def _finish_interrupted_backup(backup_dir: Path, steps_per_epoch: int) -> list[str] | None:
    """Complete Keras' newest backup if a kill came between its weights and its metadata
    (see check_backup): [] when it did so, the files that keep it from doing so, or None when
    the backup is not one interrupted there."""
    weights, metadata = backup_dir / "keras" / KERAS_WEIGHTS, backup_dir / "keras" / KERAS_METADATA
    try:  # Keras reads a missing metadata file as epoch 0
        named = json.loads(metadata.read_bytes())["epoch"] if metadata.exists() else 0
    except (OSError, ValueError, KeyError, TypeError):
        return None
    epoch = named + 1 if type(named) is int else None
    if epoch is None or _optimizer_steps(weights) != epoch * steps_per_epoch:
        return None
    files = _pair_files(backup_dir, weights, metadata, epoch)
    del files["metadata"]
    unreadable = _read_problems(files)
    if unreadable:
        return unreadable
    # Keras' own form; then the record BackupChecksums would have written.
    atomic_write_bytes(metadata, json.dumps({"epoch": epoch, "batch": 0}).encode())
    record_backup(backup_dir, epoch)
    print(f"warning: resume state: {weights} holds the weights after epoch {epoch} but "
          f"{metadata} named epoch {named} (killed between Keras' two writes); it now names "
          f"epoch {epoch}, so that epoch is not trained twice", file=sys.stderr, flush=True)
    return []


def _read_problems(files: dict) -> list[str]:
    """The files of a backup pair that cannot be read whole, or whose weights hold other
    arrays (names, shapes) than Keras' other pair (one model, one layout: a garbled name)."""
    problems = []
    weights = files["weights"]
    try:
        arrays = _arrays(weights)
        other = (weights.with_name(weights.name.removesuffix(KERAS_PREVIOUS))
                 if weights.name.endswith(KERAS_PREVIOUS)
                 else weights.with_name(weights.name + KERAS_PREVIOUS))
        try:
            reference = _arrays(other) if other.is_file() else arrays
        except _H5_ERRORS:
            reference = arrays  # that pair's own check reports it
        if arrays != reference:
            changed = sorted(set(arrays.items()) ^ set(reference.items()))[:2]
            raise KeyError(f"its arrays differ from those of {other.name}: {changed}")
    except _H5_ERRORS as err:
        problems.append(_problem(weights, err))
    if "exact" in files:
        try:
            with np.load(files["exact"]) as saved:
                for name in ("paths", *saved.files):
                    saved[name]
        except _NPZ_ERRORS as err:
            problems.append(_problem(files["exact"], err))
    return problems


def _arrays(weights: Path) -> dict[str, tuple]:
    """{path: shape} of every array in a Keras weight file, each read whole."""
    with h5py.File(weights, "r") as handle:
        return _read_group(handle)


def _read_group(group: h5py.Group) -> dict[str, tuple]:
    """Every array under `group`, each found by name as Keras finds it when loading (a garbled
    group index that h5py's visititems walks past fails Keras' lookups, so it must fail here);
    a `vars` group holds arrays named 0, 1, ... as Keras names them."""
    names = list(group.keys())
    if group.name.endswith("/vars") and sorted(names) != sorted(map(str, range(len(names)))):
        raise KeyError(f"{group.name} holds {names}, not Keras' 0..{len(names) - 1}")
    arrays = {}
    for name in names:
        if name not in group:
            raise KeyError(f"{group.name}/{name} is listed but cannot be found")
        item = group[name]
        if isinstance(item, h5py.Group):
            arrays.update(_read_group(item))
        else:
            item[()]
            arrays[item.name] = item.shape
    return arrays


def _optimizer_steps(weights: Path) -> int | None:
    """The optimizer's step count saved in Keras' weight file; None when it cannot be read
    (the file's other checks report why)."""
    try:
        with h5py.File(weights, "r") as handle:
            steps = handle[KERAS_ITERATIONS][()]
        return int(steps) if np.ndim(steps) == 0 else None
    except (*_H5_ERRORS, TypeError):
        return None


def _problem(path: Path, err: BaseException) -> str:
    if isinstance(err, FileNotFoundError) or (isinstance(err, OSError) and not path.exists()):
        return f"{path} is missing"
    what = " ".join(str(err).split())  # h5py's messages can hold newlines
    return f"{path} cannot be read ({type(err).__name__}: {what[:160]})"


def _copy_atomically(source: Path, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
