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
by all processes (orbax coordinates them); the run files by process 0 alone, which also holds
the run directory's lock. At start the processes compare their configs through JAX's
coordination service and stop in one line naming the fields that differ, instead of waiting
for a collective that never comes. With one process nothing here changes what the trainer
computes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import jax
import numpy as np
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils

from shared.cli import check_fields
from shared.runs.lock import RunLockError
from shared.runs.reuse import flatten

# JAX's own variable: set, it makes jax.distributed.initialize() read the coordinator from it.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
# How long a process waits for another's config or lock outcome once all have joined: they
# publish it right after joining (the lock after loading and checking the data and weights).
EXCHANGE_TIMEOUT_MS = 30 * 60 * 1000
# Config fields the processes of one run may differ in (--process-id is not a config field).
PER_PROCESS_FIELDS = ("quiet",)


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


def initialize(processes: ProcessConfig, config: dict) -> None:
    """Join the run's other processes when `processes` says there are any; before any other
    JAX call, since the backend then sees every process's devices. Then check that all were
    given the same `config` (a config's to_dict())."""
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
    check_same_config(config)


def check_same_config(config: dict) -> None:
    """ValueError, in every process, naming each field whose value differs between this
    process and another (flags given differently on two hosts), before any collective."""
    if jax.process_count() == 1:
        return
    client, me = jax_distributed.global_state.client, jax.process_index()
    mine = {k: v for k, v in flatten(config).items() if k not in PER_PROCESS_FIELDS}
    client.key_value_set(f"watson_peft/config/{me}", json.dumps(mine, sort_keys=True))
    differences = []
    for other in range(jax.process_count()):
        if other == me:
            continue
        theirs = json.loads(client.blocking_key_value_get(f"watson_peft/config/{other}",
                                                          EXCHANGE_TIMEOUT_MS))
        differences += [f"{key} {mine.get(key, '(none)')!r} here, "
                        f"{theirs.get(key, '(none)')!r} in process {other}"
                        for key in sorted(set(mine) | set(theirs))
                        if mine.get(key) != theirs.get(key)]
    if differences:
        raise ValueError(f"process {me} of {jax.process_count()} was given other flags than the "
                         f"others: {'; '.join(differences)}; start every process with the same "
                         f"flags (only --process-id differs)")


def on_main_process(name: str, action) -> None:
    """`action()` on process 0 alone (taking the run directory's lock); a RunLockError it
    raises is raised in every process, so that none waits for process 0 until JAX's
    timeouts."""
    if jax.process_count() == 1:
        action()
        return
    client, key = jax_distributed.global_state.client, f"watson_peft/{name}"
    if is_main():
        try:
            action()
        except RunLockError as err:
            client.key_value_set(key, str(err))
            raise
        client.key_value_set(key, "")
    else:
        refusal = client.blocking_key_value_get(key, EXCHANGE_TIMEOUT_MS)
        if refusal:
            raise RunLockError(refusal)


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
