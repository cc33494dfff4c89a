"""Callbacks that make a run's record and its resume exact across process deaths."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from shared.run_dir import RunWriter, peak_host_rss_mb


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
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, suffix=".npz")
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, self._path(epoch + 1))
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
