"""Training checkpoints (orbax) and the stand-alone adapter artifact.

run_dir/checkpoints/<step>/  trainable parameters + optimizer state + JSON progress. The base
    weights are not in it: they are reloaded from the preset; the run manifest records their
    checksum and a resume with other weights is refused (shared/runs/reuse.py).
    Orbax writes into a temporary folder and renames it when complete, so a run killed
    mid-save leaves no checkpoint that looks whole; only the newest `keep` are kept. A
    checkpoint damaged later (a file cut short or garbled: a full disk, a broken copy) is
    moved aside to <step>.damaged by restore_latest, which resumes from the one before it.
The run's trained weights as an artifact (run_dir/adapter/) are jax_lora/adapter.py's.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jax_lora import distributed
from shared.runs.reuse import RunStateError

CHECKPOINTS = "checkpoints"
DAMAGED_SUFFIX = ".damaged"
# What orbax 0.12 / tensorstore 0.1 raise for a checkpoint whose files are cut short, garbled
# or missing (tests/jax_lora/test_checkpoint_damage.py makes each kind): a tensorstore read
# error is a plain ValueError whose message starts with its status code; a cut or garbled JSON
# file (state/_METADATA, state/array_metadatas/, meta/metadata) json.JSONDecodeError or
# UnicodeDecodeError; a missing file FileNotFoundError; a missing item folder (state/, meta/)
# KeyError. Other ValueErrors (a tree or shape that does not match) are not damage.
_TENSORSTORE_DAMAGE = re.compile(r"(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND): ")


def flat_arrays(state: nnx.State) -> dict[str, jax.Array]:
    """{'layers.0.attention.query.lora_a': array, ...}"""
    return {".".join(map(str, path)): variable.get_value()
            for path, variable in nnx.to_flat_state(state)}


def replace_arrays(state: nnx.State, arrays: dict, source: str) -> nnx.State:
    """A copy of `state` holding `arrays` (by flat_arrays names); every name must match."""
    names = set(flat_arrays(state))
    if names != set(arrays):
        missing, extra = sorted(names - set(arrays)), sorted(set(arrays) - names)
        raise ValueError(f"{source}: parameters do not match the model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); was it made with another LoRA config?")
    flat = []
    for path, variable in nnx.to_flat_state(state):
        name = ".".join(map(str, path))
        if tuple(arrays[name].shape) != tuple(variable.get_value().shape):
            raise ValueError(f"{source}: {name} has shape {tuple(arrays[name].shape)}, the "
                             f"model expects {tuple(variable.get_value().shape)}")
        flat.append((path, variable.replace(arrays[name])))
    return nnx.from_flat_state(flat)


class Checkpoints:
    """run_dir/<folder>, created on first use; `keep` newest are kept (None: all)."""

    def __init__(self, run_dir: Path, *, keep: int | None = None, folder: str = CHECKPOINTS):
        # Synchronous saves: a LoRA checkpoint is a few MB, and a save that has returned is
        # on disk, which is what a kill -9 test (and a preempted job) needs.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(Path(run_dir).resolve() / folder,
                                             options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, trainable: nnx.State, opt_state, meta: dict) -> None:
        arrays = {"trainable": flat_arrays(trainable), "opt_state": jax.tree.leaves(opt_state)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                        meta=ocp.args.JsonSave(meta)))

    def restore(self, trainable: nnx.State, opt_state):
        """(trainable, opt_state, meta) of the newest checkpoint; the arguments give the tree
        structure, shapes and shardings to restore into. Fails on a damaged checkpoint: a
        resume uses restore_latest."""
        arrays, meta = self._restore_arrays(self.latest_step(), trainable, opt_state)
        opt_state = jax.tree.unflatten(jax.tree.structure(opt_state), arrays["opt_state"])
        return (replace_arrays(trainable, arrays["trainable"], str(self.manager.directory)),
                opt_state, meta)

    def restore_latest(self, trainable: nnx.State, opt_state):
        """(step, trainable, opt_state, meta) of the newest checkpoint that restores, None when
        there is no checkpoint. A damaged checkpoint is moved aside to <step>.damaged (so that
        training saves that step afresh) with one warning line on stderr, and the one before it
        is tried. RunStateError, changing nothing, when checkpoints exist but none restores."""
        _drop_leftover_read_noise(self.manager.directory)
        damaged = []  # (folder, reason), newest first
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self._restore_arrays(step, trainable, opt_state)
            except (ValueError, OSError, KeyError) as err:
                folder = Path(self.manager.directory) / str(step)
                reason = _damage(err, folder)
                if reason is None:
                    raise
                damaged.append((folder, " ".join(reason.split())))  # one line
                continue
            for folder, reason in damaged:
                aside = folder.with_name(folder.name + DAMAGED_SUFFIX)
                if distributed.is_main():  # one process moves what every process found
                    if aside.exists():  # from an earlier damage at the same step
                        shutil.rmtree(aside)
                    folder.rename(aside)
                print(f"warning: checkpoint {folder} is damaged ({reason}); moved it to "
                      f"{aside.name} and resuming from step {step}", file=sys.stderr, flush=True)
            if damaged:
                distributed.sync("damaged checkpoints moved aside")
                self.manager.reload()  # forget the moved steps: their numbers are saved again
            arrays, meta = restored
            opt_state = jax.tree.unflatten(jax.tree.structure(opt_state), arrays["opt_state"])
            folder = str(Path(self.manager.directory) / str(step))
            return step, replace_arrays(trainable, arrays["trainable"], folder), opt_state, meta
        if not damaged:
            return None
        for folder, reason in damaged:
            print(f"warning: checkpoint {folder} is damaged ({reason})", file=sys.stderr,
                  flush=True)
        raise RunStateError(f"no checkpoint of the run can be restored, all are damaged: "
                            f"{', '.join(str(folder) for folder, _ in damaged)}; rerun with "
                            f"--restart to train from scratch (or delete the run directory)")

    def _restore_arrays(self, step: int, trainable: nnx.State, opt_state) -> tuple[dict, dict]:
        like = {"trainable": flat_arrays(trainable), "opt_state": jax.tree.leaves(opt_state)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                          meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def close(self) -> None:
        self.manager.close()


def _damage(err: BaseException, folder: Path) -> str | None:
    """A one-line account of `err` if it says checkpoint `folder`'s files are damaged, else
    None."""
    if isinstance(err, (json.JSONDecodeError, UnicodeDecodeError)):
        return f"a JSON file is cut short or garbled: {err}"
    if isinstance(err, OSError):
        return f"{type(err).__name__}: {err}"
    if isinstance(err, KeyError) and "not found in the checkpoint" in str(err):
        return str(err.args[0])  # 'Item "meta" was not found in the checkpoint. ...'
    text = str(err)
    if not (isinstance(err, ValueError) and _TENSORSTORE_DAMAGE.match(text)):
        return None
    # 'CODE: Error opening "cast" driver: ...: Error reading ... of local file "F": what went
    # wrong [tensorstore_spec=...]' -> 'CODE: what went wrong (file F)'
    code, text = text.split(" [tensorstore_spec", 1)[0].split(": ", 1)
    parts = text.split(": ")
    last = max((i for i, part in enumerate(parts) if "local file" in part), default=None)
    if last is None or last == len(parts) - 1:
        return f"{code}: {parts[-1]}".replace(f"{folder}/", "")
    path = re.findall(r'local file "([^"]+)"', parts[last])[-1]
    return f"{code}: {': '.join(parts[last + 1:])} (file {path.replace(f'{folder}/', '')})"


def _drop_leftover_read_noise(directory) -> None:
    """Keep a damaged checkpoint to one warning line. When one read fails, orbax closes its
    event loop while tensorstore's other reads are still in flight; as they finish they report
    RuntimeError('Event loop is closed') through sys.unraisablehook (a dozen tracebacks), and
    asyncio may log their futures' and tasks' errors as 'never retrieved' (with a traceback).
    Drops exactly those."""
    previous = sys.unraisablehook
    if not getattr(previous, "drops_closed_loop_noise", False):
        def hook(unraisable):
            if not (isinstance(unraisable.exc_value, RuntimeError)
                    and str(unraisable.exc_value) == "Event loop is closed"):
                previous(unraisable)
        hook.drops_closed_loop_noise = True
        sys.unraisablehook = hook
    logger = logging.getLogger("asyncio")
    if not any(getattr(f, "directory", None) == str(directory) for f in logger.filters):
        logger.addFilter(_UnretrievedReadFilter(str(directory)))


class _UnretrievedReadFilter(logging.Filter):
    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(("Future exception was never retrieved",
                                        "Task exception was never retrieved"))
                    and self.directory in message)


def latest_meta(run_dir: Path) -> dict | None:
    """The newest checkpoint's JSON progress, without loading arrays or writing anything;
    None when the run directory has no checkpoint."""
    if not (Path(run_dir) / CHECKPOINTS).is_dir():
        return None
    checkpoints = Checkpoints(run_dir)
    step = checkpoints.latest_step()
    meta = None if step is None else checkpoints.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    checkpoints.close()
    return meta
