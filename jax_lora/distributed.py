"""Several processes, one run: joining them (jax.distributed), feeding them, gathering from them.

    # host A (process 0)                        # host B (process 1)
    python jax_lora/train.py ... \\              python jax_lora/train.py ... \\
      --coordinator-address A:1234 \\              --coordinator-address A:1234 \\
      --num-processes 2 --process-id 0             --num-processes 2 --process-id 1

Each process runs the same command on the same run directory (a shared filesystem). The mesh
spans every process's devices; every process builds the same global batches (same seed and
order) and hands its own devices only their rows, so the batches and the global batch are
those of one process with all the devices. Evaluation outputs are gathered to every process,
so all of them take the same decisions (best step, early stop). Orbax checkpoints are written
by all processes (orbax coordinates them); the run files by process 0 alone. With one process
nothing here changes what the trainer computes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax
import numpy as np
from jax.experimental import multihost_utils

from shared.cli import check_fields

# JAX's own variable: set, it makes jax.distributed.initialize() read the coordinator from it.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"


@dataclass(frozen=True)
class ProcessConfig:
    coordinator_address: str | None = None  # HOST:PORT of process 0, where the processes of a multi-process run meet (or $JAX_COORDINATOR_ADDRESS) [default: none]
    num_processes: int = 1  # processes of the run, one per host, each with the same flags and its own --process-id; 0 = as the environment says (Cloud TPU pod slice, SLURM, Open MPI)
    process_id: int | None = None  # this process's index, 0 .. --num-processes - 1 (0 writes the run files) [default: none]

    def __post_init__(self):
        many = self.num_processes > 1
        check_fields(self, [
            ("num-processes", self.num_processes >= 0, "must be >= 0 (0 = from the environment)"),
            ("process-id", not many or self.process_id is not None,
             f"--num-processes {self.num_processes} needs each process's --process-id, "
             f"0 .. {self.num_processes - 1}"),
            ("process-id", not many or self.process_id is None
             or 0 <= self.process_id < self.num_processes,
             f"must lie in 0 .. {self.num_processes - 1} (--num-processes {self.num_processes})"),
            ("process-id", many or self.num_processes == 0 or self.process_id in (None, 0),
             "a single process is process 0; set --num-processes for more"),
        ])

    @property
    def joins(self) -> bool:
        """Whether this process is one of several: the flags or the environment say so."""
        return (self.num_processes != 1 or self.coordinator_address is not None
                or COORDINATOR_ENV in os.environ)


def initialize(processes: ProcessConfig) -> None:
    """Join the run's other processes when `processes` says there are any; before any other
    JAX call, since the backend then sees every process's devices."""
    if not processes.joins or jax.distributed.is_initialized():
        return
    if processes.num_processes > 1 and not (processes.coordinator_address
                                            or os.environ.get(COORDINATOR_ENV)):
        raise ValueError(f"--num-processes {processes.num_processes}: needs --coordinator-address "
                         f"HOST:PORT (process 0's host and a free port), the same in every process")
    # CPU processes exchange gradients through gloo: this JAX's default, said here because
    # without a cross-process implementation a CPU run fails at its first collective.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # What the flags leave unset (None) JAX reads from the environment.
    jax.distributed.initialize(
        processes.coordinator_address,
        processes.num_processes if processes.num_processes > 1 else None, processes.process_id)


def is_main() -> bool:
    """The process that writes the run files (process 0; the only one when there is one)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Wait until every process reaches the point called `name` (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def put(tree, sharding):
    """`tree` (the same host values on every process) as global arrays laid out by `sharding`;
    each process copies only the slices its own devices hold. jax.device_put on several
    processes would first gather every process's whole value to check that they agree."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def global_array(value):
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding,
                                            lambda index: value[index])
    return jax.tree.map(global_array, tree)


def gather(tree):
    """`tree` as numpy arrays on every process, whole: the rows of other processes' devices
    included."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


class Silent:
    """Stands in for the run writer on processes other than 0: every method does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
