"""Training checkpoints (orbax) and the stand-alone adapter artifact.

run_dir/checkpoints/<step>/  trainable parameters + optimizer state + JSON progress. The base
    weights are not in it: they are reloaded from the preset; the run manifest records their
    checksum and a resume with other weights is refused (shared/runs/reuse.py).
    Orbax writes into a temporary folder and renames it when complete, so a run killed
    mid-save leaves no checkpoint that looks whole; only the newest `keep` are kept. Then
    <step>/sha256.json records the checksum of each of its files (shared/runs/checksums.py).
    A checkpoint damaged later (a file cut short or garbled: a full disk, a broken copy, a
    flipped bit) no longer matches it and is moved aside to <step>.damaged by restore_latest,
    which resumes from the one before it. One without the record (a kill between the save and
    the record, or an older run) is judged by whether orbax can read it.
The run's trained weights as an artifact (run_dir/adapter/) are jax_lora/adapter.py's.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import warnings
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from jax_lora import distributed
from shared.runs.checksums import mismatches, read_record, write_record
from shared.runs.reuse import RunStateError

CHECKPOINTS = "checkpoints"
DAMAGED_SUFFIX = ".damaged"
CHECKSUMS = "sha256.json"  # in each checkpoint folder, written once orbax has finished it
# What orbax 0.12 / tensorstore 0.1 raise for a checkpoint whose files are cut short, garbled
# or missing (tests/jax_lora/test_checkpoint_fuzz.py makes each kind): a tensorstore read
# error is a plain ValueError whose message starts with its status code, or, for a garbled
# b-tree node, has none but names the checkpoint's file it read; a cut or garbled JSON
# file (state/_METADATA, state/array_metadatas/, meta/metadata) json.JSONDecodeError or
# UnicodeDecodeError; a missing file FileNotFoundError; a missing item folder (state/, meta/)
# KeyError. Orbax raises some of these from a bare Exception ("Encountered error while reading
# array index ..."), so the whole chain of causes is read. Other errors (a tree or shape that
# does not match) are not damage.
_TENSORSTORE_DAMAGE = re.compile(r"(DATA_LOSS|OUT_OF_RANGE|NOT_FOUND): ")


# What orbax says when the saved tree is not the one asked for (another optimizer layout).
LAYOUT_MISMATCH = "tree structures do not match"


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
        directory = Path(run_dir).resolve() / folder
        self._complaints = _MetadataComplaintFilter(str(directory))
        logging.getLogger("absl").addFilter(self._complaints)  # before orbax reads the steps
        self.manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def folder(self, step: int) -> Path:
        return Path(self.manager.directory) / str(step)

    def save(self, step: int, trainable: nnx.State, opt_state, meta: dict) -> None:
        arrays = {"trainable": flat_arrays(trainable), "opt_state": jax.tree.leaves(opt_state)}
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)))
        # Synchronous: every process's files are in place when save returns.
        if saved and distributed.is_main():
            folder = self.folder(step)
            write_record(folder / CHECKSUMS, {
                str(path.relative_to(folder)): path for path in sorted(folder.rglob("*"))
                if path.is_file() and path.name != CHECKSUMS})

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
        is tried. RunStateError (one line naming the damaged files), changing nothing, when
        checkpoints exist but none restores."""
        damaged = []  # (folder, reason), newest first
        for step in sorted(self.manager.all_steps(), reverse=True):
            folder = self.folder(step)
            reason, restored = self._try_restore(step, trainable, opt_state)
            if reason is not None:
                damaged.append((folder, reason))
                continue
            for bad, reason in damaged:
                aside = bad.with_name(bad.name + DAMAGED_SUFFIX)
                if distributed.is_main():  # one process moves what every process found
                    if aside.exists():  # from an earlier damage at the same step
                        shutil.rmtree(aside)
                    bad.rename(aside)
                print(f"warning: checkpoint {bad} is damaged ({reason}); moved it to "
                      f"{aside.name} and resuming from step {step}", file=sys.stderr, flush=True)
            if damaged:
                distributed.sync("damaged checkpoints moved aside")
                self.manager.reload()  # forget the moved steps: their numbers are saved again
            arrays, meta = restored
            opt_state = jax.tree.unflatten(jax.tree.structure(opt_state), arrays["opt_state"])
            trainable = replace_arrays(trainable, arrays["trainable"], str(folder))
            return step, trainable, opt_state, meta
        if not damaged:
            return None
        raise RunStateError(f"no checkpoint of the run can be restored, all are damaged: "
                            + "; ".join(f"{folder} ({reason})" for folder, reason in damaged)
                            + "; rerun with --restart to train from scratch (or delete the run "
                            "directory)")

    def check_latest(self, trainable: nnx.State, opt_state=()) -> None:
        """RunStateError (one line naming the damaged files and --restart) when the newest
        checkpoint is damaged; for a checkpoint with no older one to fall back to (run_dir/best
        keeps one step)."""
        step = self.latest_step()
        reason = None if step is None else self._try_restore(step, trainable, opt_state)[0]
        if reason is not None:
            raise RunStateError(f"checkpoint {self.folder(step)} is damaged ({reason}); rerun "
                                f"with --restart to train from scratch (or delete the run "
                                f"directory)")

    def _try_restore(self, step: int, trainable, opt_state) -> tuple[str | None, tuple | None]:
        """(None, (arrays, meta)), or (a one-line account of the damage, None). Files that
        differ from the checksums recorded at save are damage before anything is read; without
        a record, what orbax raises decides (_damage), and anything else propagates."""
        folder = self.folder(step)
        try:
            recorded = read_record(folder / CHECKSUMS)
        except ValueError as err:
            return str(err).replace(f"{folder}/", ""), None
        if recorded is not None:
            changed = mismatches(folder / CHECKSUMS, recorded,
                                 {name: folder / name for name in recorded}, folder)
            if changed:
                return "; ".join(changed), None
        _drop_leftover_read_noise(self.manager.directory)
        try:
            return None, self._restore_arrays(step, trainable, opt_state)
        except Exception as err:  # noqa: BLE001 -- classified, and raised again unless damage
            if recorded is not None and LAYOUT_MISMATCH in str(err):
                # The files are as saved, in another layout: another jax_lora wrote them.
                raise RunStateError(
                    f"checkpoint {folder} holds arrays in another layout than this jax_lora's "
                    f"({' '.join(str(err).split())[:160]}...): an older or newer jax_lora "
                    f"wrote it (the run's manifest names its code_version); finish the run "
                    f"with that version, or rerun with --restart to train from scratch") from None
            reason = _damage(err, folder)
            if reason is None and recorded is None:
                # Nothing shows the files are as saved, and a garbled JSON key can make orbax
                # fail in ways no rule can name (a KeyError, a tree "mismatch"): damage too.
                reason = f"cannot be read ({type(err).__name__}: {str(err)[:200]})"
            if reason is None:  # the files are as saved: a bug or another model, not damage
                raise
            return " ".join(reason.split()), None  # one line

    def _restore_arrays(self, step: int, trainable: nnx.State, opt_state) -> tuple[dict, dict]:
        like = {"trainable": flat_arrays(trainable), "opt_state": jax.tree.leaves(opt_state)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                          meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def close(self) -> None:
        self.manager.close()
        logging.getLogger("absl").removeFilter(self._complaints)


def _damage(err: BaseException, folder: Path) -> str | None:
    """An account of `err`, or of an error it was raised from, if it says checkpoint `folder`'s
    files are damaged, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        reason = _damage_of(err, folder)
        if reason is not None:
            return reason
        err = err.__cause__ or err.__context__
    return None


def _damage_of(err: BaseException, folder: Path) -> str | None:
    if isinstance(err, (json.JSONDecodeError, UnicodeDecodeError)):
        return f"a JSON file is cut short or garbled: {err}"
    if isinstance(err, OSError):
        return f"{type(err).__name__}: {err}"
    if isinstance(err, KeyError) and "not found in the checkpoint" in str(err):
        return str(err.args[0])  # 'Item "meta" was not found in the checkpoint. ...'
    text = str(err).split(" [tensorstore_spec", 1)[0]
    code = _TENSORSTORE_DAMAGE.match(text)
    # A status code, or (a garbled b-tree node: no code) a read of this checkpoint's files.
    if not (isinstance(err, ValueError) and (code or f'local file "{folder}/' in text)):
        return None
    # '[CODE: ]Error opening "cast" driver: ...: Error reading ... of local file "F": what went
    # wrong [tensorstore_spec=...]' -> '[CODE: ]what went wrong (file F)'
    prefix = code.group(0) if code else ""
    parts = text[len(prefix):].split(": ")
    last = max((i for i, part in enumerate(parts) if "local file" in part), default=None)
    if last is None or last == len(parts) - 1:
        return f"{prefix}{parts[-1]}".replace(f"{folder}/", "")
    path = re.findall(r'local file "([^"]+)"', parts[last])[-1]
    return f"{prefix}{': '.join(parts[last + 1:])} (file {path.replace(f'{folder}/', '')})"


def _drop_leftover_read_noise(directory) -> None:
    """Keep a damaged checkpoint to one warning line. When one read fails, orbax closes its
    event loop while tensorstore's other reads are still in flight or not yet started; as they
    finish or are collected they report RuntimeError('Event loop is closed') or their own read
    error through sys.unraisablehook (a dozen tracebacks), Python warns that orbax's read
    coroutine was never awaited, and asyncio may log their futures' and tasks' errors as
    'never retrieved' (with a traceback). Drops exactly those (the read errors and asyncio's
    records only when they name this run's checkpoints)."""
    _QUIET_DIRECTORIES.add(str(directory))
    previous = sys.unraisablehook
    if not getattr(previous, "drops_failed_read_noise", False):
        def hook(unraisable):
            if not _is_failed_read(unraisable.exc_value):
                previous(unraisable)
        hook.drops_failed_read_noise = True
        sys.unraisablehook = hook
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message=f"coroutine '{_ORBAX_READ}' was never awaited")
    logger = logging.getLogger("asyncio")
    if not any(getattr(f, "directory", None) == str(directory) for f in logger.filters):
        logger.addFilter(_UnretrievedReadFilter(str(directory)))


_QUIET_DIRECTORIES: set[str] = set()
_ORBAX_READ = "_read_array_index_and_device_put"  # orbax's coroutine that reads one array


def _is_failed_read(err: BaseException | None) -> bool:
    if isinstance(err, RuntimeError) and str(err) == "Event loop is closed":
        return True
    seen = set()
    while err is not None and id(err) not in seen:  # the chain of causes, as _damage reads it
        seen.add(id(err))
        if any(directory in str(err) for directory in _QUIET_DIRECTORIES):
            return True
        err = err.__cause__ or err.__context__
    return False


class _MetadataComplaintFilter(logging.Filter):
    """Orbax logs (absl, ERROR or WARNING) each step's _CHECKPOINT_METADATA it cannot read,
    parse or recognise, and goes on without it (a commit timestamp); the damage is
    restore_latest's to report, once."""

    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno >= logging.WARNING and (
            ("Metadata file" in message and self.directory in message)
            # a garbled key of a _CHECKPOINT_METADATA that still parses (no path given)
            or message.startswith("Provided metadata contains unknown key")))


class _UnretrievedReadFilter(logging.Filter):
    def __init__(self, directory: str):
        super().__init__()
        self.directory = directory

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith(("Future exception was never retrieved",
                                        "Task exception was never retrieved"))
                    and self.directory in message)
