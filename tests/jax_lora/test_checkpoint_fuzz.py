"""Damage anywhere in a checkpoint, as a fuzz over the real file tree orbax writes: every file
of the newest checkpoint (sampled when long) cut to 0 bytes, to half, to 100 bytes, or with
one garbled byte. A resume either falls back to the older checkpoint (one warning line,
exactly its arrays: training on from them is what an uninterrupted run does, as the kill -9
tests show) or stops with one line naming the damage and --restart; never a traceback.

In-process, at the checkpoint manager (Checkpoints.save, as the trainer saves), in three modes:
- `recorded`: the checksum record the trainer writes (sha256.json) is there;
- `unrecorded`: it is not (a run from before it, or a kill between the save and the record):
  what orbax raises decides (three garbled positions per file here), and a garbled byte
  inside an array may go unnoticed;
- `alone`: the damaged checkpoint is the only one (as run_dir/best always is), so the
  resume stops.
The command-line cases are in test_jax_train.py (test_damaged_checkpoint_...).
"""

import gc
import itertools
import logging
import random
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_lora.checkpoint import CHECKPOINTS, CHECKSUMS, Checkpoints
from shared.runs.reuse import RunStateError
from tests.jax_lora.helpers import leaves_equal

pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
SEED = 31
# Garbled bytes per file without a record, where what orbax raises must be classified (each
# at its own seeded position); one elsewhere.
UNRECORDED_GARBLES = 3
# Files fuzzed per mode: every one when the checkpoint has no more, else a seeded sample
# (random.Random(SEED).sample of the sorted relative paths): CI time.
MAX_FILES = 20


def cut_to_empty(data: bytes, rng) -> bytes:
    return b""


def cut_to_half(data: bytes, rng) -> bytes:
    return data[: len(data) // 2]


def cut_to_100_bytes(data: bytes, rng) -> bytes:
    return data[:100]


def garble_one_byte(data: bytes, rng) -> bytes:
    if not data:
        return data
    garbled = bytearray(data)
    garbled[rng.randrange(len(data))] ^= 1 + rng.randrange(255)
    return bytes(garbled)


DAMAGES = (cut_to_empty, cut_to_half, cut_to_100_bytes, garble_one_byte)


class Head(nnx.Module):
    """Trainable leaves of two kinds: a 64x64 kernel (stored out of line in orbax's data
    files, where a cut read fails inside tensorstore) and small ones (inline)."""

    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(64, 64, rngs=rngs)
        self.out = nnx.Linear(64, 3, rngs=rngs)


def states():
    """{step: (trainable, opt_state)} for steps 1 and 2, all values distinct."""
    trainable = nnx.state(Head(nnx.Rngs(0)))
    opt_state = optax.adam(1e-2).init(trainable)
    return {step: jax.tree.map(lambda x, s=step: x + s * jnp.ones_like(x) if
                               jnp.issubdtype(x.dtype, jnp.floating) else x + s,
                               (trainable, opt_state))
            for step in (1, 2)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run directory with checkpoints 1 and 2, and the states they hold."""
    run_dir = tmp_path_factory.mktemp("run")
    by_step = states()
    checkpoints = Checkpoints(run_dir)
    for step, (trainable, opt_state) in by_step.items():
        checkpoints.save(step, trainable, opt_state, {"step": step})
    checkpoints.close()
    return run_dir, by_step


def seed_name(name: str) -> str:
    """The file's name without orbax's random data-file name (d/<hash>), so that a file's
    garbled positions do not change from run to run."""
    return re.sub(r"/d/[0-9a-f]{32}$", "/d/file", name)


def sample(files: list[str]) -> list[str]:
    files = sorted(files)
    return files if len(files) <= MAX_FILES else sorted(random.Random(SEED).sample(files,
                                                                                   MAX_FILES))


def resume(run_dir, by_step, capfd, caplog, orbax_reads: bool):
    """(step restored, whether it holds exactly that step's arrays, stderr lines) or
    ('stopped', message, stderr lines); any other exception propagates (a traceback). Log
    records of warnings (orbax's own complaints) count as stderr lines."""
    caplog.clear()
    trainable, opt_state = jax.tree.map(jnp.zeros_like, by_step[1])
    checkpoints = Checkpoints(run_dir)
    try:
        step, trainable, opt_state, meta = checkpoints.restore_latest(trainable, opt_state)
        outcome = (step, meta == {"step": step}
                   and leaves_equal((trainable, opt_state), by_step[step]))
    except RunStateError as err:
        outcome = ("stopped", str(err))
    except Exception:
        gc.collect()
        raise
    finally:
        checkpoints.close()
    if orbax_reads and outcome[0] != 2:  # orbax failed: its leftover reads report now (0.2 s)
        gc.collect()
    logged = [f"log {r.name}: {r.getMessage()[:200]}" for r in caplog.records
              if r.levelno >= logging.WARNING]
    return (*outcome, capfd.readouterr().err.splitlines() + logged)


@pytest.mark.parametrize("mode", ["recorded", "unrecorded", "alone"])
def test_damage_anywhere_falls_back_or_stops_in_one_line(saved, mode, tmp_path, capfd,
                                                         caplog):
    pristine, by_step = saved
    newest = pristine / CHECKPOINTS / "2"
    files = [str(p.relative_to(newest)) for p in newest.rglob("*") if p.is_file()]
    if mode == "unrecorded":
        files.remove(CHECKSUMS)
    assert CHECKSUMS in files or mode == "unrecorded"
    assert any("/d/" in name for name in files), "no orbax data files: its layout changed"
    # unaffected: the damaged file is not needed (step 2 reads back exactly); undetected: step
    # 2 reads back with other values (a garbled array byte with no record to compare with).
    counts = dict.fromkeys(("cases", "fallbacks", "stops", "unaffected", "undetected",
                            "unchanged"), 0)
    failures = []
    cases = [(name, damage, k) for name, damage in itertools.product(sample(files), DAMAGES)
             for k in range(UNRECORDED_GARBLES if mode == "unrecorded"
                            and damage is garble_one_byte else 1)]
    for index, (name, damage, k) in enumerate(cases):
        run_dir = tmp_path / str(index)
        shutil.copytree(pristine, run_dir)
        checkpoints = run_dir / CHECKPOINTS
        if mode == "unrecorded":
            for record in checkpoints.glob(f"*/{CHECKSUMS}"):
                record.unlink()
        if mode == "alone":
            shutil.rmtree(checkpoints / "1")
        target = checkpoints / "2" / name
        before = target.read_bytes()
        target.write_bytes(damage(before, random.Random(f"{SEED}:{seed_name(name)}:{k}")))
        case = f"{mode} {name} {damage.__name__}{f' #{k}' if k else ''}"
        if target.read_bytes() == before:  # e.g. a 60-byte file cut to 100 bytes
            counts["unchanged"] += 1
            continue
        counts["cases"] += 1
        try:
            # With a record, damage is found before orbax reads a file.
            outcome, what, lines = resume(run_dir, by_step, capfd, caplog,
                                          orbax_reads=mode == "unrecorded")
        except Exception as err:  # noqa: BLE001 -- a traceback is the failure fuzzed for
            failures.append(f"{case}: {type(err).__name__}: {str(err)[:300]}")
            continue
        if outcome == 1:
            counts["fallbacks"] += 1
            ok = what and len(lines) == 1 and lines[0].startswith(
                f"warning: checkpoint {checkpoints / '2'} is damaged (") and lines[0].endswith(
                "resuming from step 1")
        elif outcome == 2:  # only without a record: every recorded file is compared
            counts["unaffected" if what else "undetected"] += 1
            ok = mode == "unrecorded" and lines == [] and (
                what or damage is garble_one_byte)
        else:
            counts["stops"] += 1
            ok = (mode == "alone" and lines == [] and "\n" not in what
                  and "--restart" in what and f"{checkpoints / '2'} (" in what and name in what)
        if not ok:
            failures.append(f"{case}: {outcome} {what!r}, stderr {lines}")
    print(f"\nfuzz {mode}: {counts} over {len(sample(files))} of {len(files)} files")
    assert not failures, "\n".join(failures)
    assert counts["cases"] >= 3 * len(sample(files))
    if mode == "recorded":
        assert counts["fallbacks"] == counts["cases"]
    if mode == "alone":
        assert counts["stops"] == counts["cases"]
