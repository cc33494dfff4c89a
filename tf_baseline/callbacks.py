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
# What a cut, garbled or missing file raises when read (found by damaging each kind): h5py
# OSError ('truncated file', 'file signature not found'), RuntimeError or KeyError from a
# damaged object header; np.load zipfile.BadZipFile (cut, bad CRC-32), EOFError (empty),
# ValueError (not an .npy), KeyError (a missing array); json JSONDecodeError/UnicodeDecodeError.
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)
_NPZ_ERRORS = (OSError, zipfile.BadZipFile, EOFError, ValueError, KeyError)


def check_backup(backup_dir: Path) -> None:
    """Make sure a resume from `backup_dir` can load, repairing it if Keras keeps a good
    previous backup; RunStateError (one line, says --restart) when it cannot.

    `backup_dir` holds keras/ (BackupAndRestore with double_checkpoint=True) and exact/
    (ExactResume). Keras resumes from keras/latest.weights.h5 + training_metadata.json and
    falls back to its .bkp pair only when opening the weights raises OSError; a cut metadata
    file, or a missing or cut exact/epoch_<N>.npz for the epoch N to resume, stops every later
    fit with a traceback. Here each file of the newest pair and its .npz is read; if one is
    damaged and the previous pair (one epoch older; ExactResume keeps that epoch's .npz too)
    reads, it is copied over the newest with one warning line on stderr. Garbled weight
    values are not detected (HDF5 keeps no checksums)."""
    keras_dir, exact_dir = Path(backup_dir) / "keras", Path(backup_dir) / "exact"
    latest = (keras_dir / KERAS_WEIGHTS, keras_dir / KERAS_METADATA)
    previous = tuple(path.with_name(path.name + KERAS_PREVIOUS) for path in latest)
    if not any(path.exists() for path in latest + previous):
        return  # killed before the first backup: the run starts from epoch 1
    problems, _ = _backup_problems(*latest, exact_dir)
    if not problems:
        return
    if any(path.exists() for path in previous):
        previous_problems, epoch = _backup_problems(*previous, exact_dir)
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


def _backup_problems(weights: Path, metadata: Path,
                     exact_dir: Path) -> tuple[list[str], int | None]:
    """('path: what is wrong' for each damaged file of a backup pair, the epoch it resumes)."""
    problems, epoch = [], None
    try:
        with h5py.File(weights, "r") as handle:  # every array, not only the header
            handle.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset)
                              else None)
    except _H5_ERRORS as err:
        problems.append(_problem(weights, err))
    try:
        epoch = json.loads(metadata.read_bytes())["epoch"]
        if type(epoch) is not int or epoch < 0:
            raise ValueError(f"epoch {epoch!r} is not a count of epochs")
    except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        problems.append(_problem(metadata, err))
        epoch = None
    if epoch:  # ExactResume restores the state saved at the end of that epoch
        state = exact_dir / f"epoch_{epoch}.npz"  # ExactResume._path
        try:
            with np.load(state) as saved:
                for name in ("paths", *saved.files):
                    saved[name]
        except _NPZ_ERRORS as err:
            problems.append(_problem(state, err))
    return problems, epoch


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
