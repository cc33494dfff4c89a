"""A resume survives a damaged checkpoint: restore_latest falls back to the newest one that
restores, with one warning line, or says to --restart when none does; never a traceback.
The fuzz over every file of a checkpoint is test_checkpoint_fuzz.py."""

import gc
import logging
import shutil
import time

import jax
import jax.numpy as jnp
import pytest

from jax_lora.checkpoint import (CHECKPOINTS, CHECKSUMS, DAMAGED_SUFFIX, Checkpoints,
                                 _damage, _UnretrievedReadFilter, flat_arrays)
from jax_lora.dev_eval import BEST, BestCheckpoint
from shared.runs.reuse import RunStateError
from tests.jax_lora.helpers import leaves_equal, trained_like_state

# tensorstore's leftover reads must not leak "Event loop is closed" tracebacks.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


def data_files(folder):
    """The OCDBT data files of a checkpoint (state/d/..., state/ocdbt.process_0/d/...)."""
    files = [p for p in (folder / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no data files under {folder}/state: orbax's layout changed"
    return files


def truncate_data(folder):
    for path in data_files(folder):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble_data(folder):
    for path in data_files(folder):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


def empty_data(folder):
    for path in data_files(folder):
        path.write_bytes(b"")


def truncate_meta(folder):
    path = folder / "meta" / "metadata"
    path.write_bytes(path.read_bytes()[:5])


def truncate_array_metadata(folder):
    path = folder / "state" / "_METADATA"
    path.write_bytes(path.read_bytes()[:100])


DAMAGE = [truncate_data, garble_data, empty_data, truncate_meta, truncate_array_metadata]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A run directory with checkpoints at steps 1, 2, 3, each with its own arrays."""
    run_dir = tmp_path_factory.mktemp("run")
    trainable, opt_state = trained_like_state()
    states = {step: jax.tree.map(lambda x, s=step: x + s, (trainable, opt_state))
              for step in (1, 2, 3)}
    checkpoints = Checkpoints(run_dir)
    for step, (t, o) in states.items():
        checkpoints.save(step, t, o, {"step": step, "history": [{"epoch": step}]})
    checkpoints.close()
    return run_dir, states


@pytest.fixture
def run_dir(saved, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(saved[0], copy)
    return copy


def restore_latest(run_dir, states, checkpoints=None):
    trainable, opt_state = jax.tree.map(jnp.zeros_like, states[1])
    own = checkpoints is None
    checkpoints = Checkpoints(run_dir) if own else checkpoints
    try:
        return checkpoints.restore_latest(trainable, opt_state)
    finally:
        if own:
            checkpoints.close()
        # Let the failed restores' leftover reads finish and their futures be collected, so
        # that any noise they make lands in this test's captured stderr.
        time.sleep(0.2)
        gc.collect()


def test_no_checkpoint_is_none(saved, tmp_path):
    assert restore_latest(tmp_path, saved[1]) is None


def test_intact_checkpoints_restore_the_newest(saved, run_dir, capfd):
    step, trainable, opt_state, meta = restore_latest(run_dir, saved[1])
    assert step == 3 and meta == {"step": 3, "history": [{"epoch": 3}]}
    assert leaves_equal((trainable, opt_state), saved[1][3])
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_newest_falls_back_to_the_previous(saved, run_dir, damage, capfd):
    states = saved[1]
    newest = run_dir / CHECKPOINTS / "3"
    damage(newest)
    capfd.readouterr()
    checkpoints = Checkpoints(run_dir)  # the trainer's: it resumes, then saves with it
    step, trainable, opt_state, meta = restore_latest(run_dir, states, checkpoints)

    assert step == 2 and meta == {"step": 2, "history": [{"epoch": 2}]}
    assert leaves_equal((trainable, opt_state), states[2])  # exactly step 2's arrays
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no tracebacks of tensorstore's leftover reads either
    assert lines[0].startswith(f"warning: checkpoint {newest} is damaged (")
    assert lines[0].endswith(f"moved it to 3{DAMAGED_SUFFIX} and resuming from step 2")
    # Moved aside: the resumed run saves step 3 again, and the next resume restores it.
    assert not newest.exists() and (run_dir / CHECKPOINTS / f"3{DAMAGED_SUFFIX}").is_dir()
    assert checkpoints.latest_step() == 2
    checkpoints.save(3, *states[3], {"step": 3})
    checkpoints.close()
    assert (newest / "state").is_dir()  # a save orbax skipped would leave no folder
    step, trainable, opt_state, meta = restore_latest(run_dir, states)
    assert step == 3 and meta == {"step": 3} and leaves_equal((trainable, opt_state), states[3])
    assert capfd.readouterr().err == ""


def test_two_damaged_fall_back_two_steps_with_a_line_each(saved, run_dir, capfd):
    # Without checksum records (an older run): what orbax raises is classified.
    for record in (run_dir / CHECKPOINTS).glob(f"*/{CHECKSUMS}"):
        record.unlink()
    truncate_data(run_dir / CHECKPOINTS / "3")
    truncate_meta(run_dir / CHECKPOINTS / "2")
    capfd.readouterr()
    step, trainable, _, _ = restore_latest(run_dir, saved[1])
    assert step == 1 and leaves_equal(trainable, saved[1][1][0])
    lines = capfd.readouterr().err.strip().splitlines()
    assert [line.split(" is damaged")[0] for line in lines] == [
        f"warning: checkpoint {run_dir / CHECKPOINTS / s}" for s in ("3", "2")]
    assert "OUT_OF_RANGE" in lines[0] and "JSON" in lines[1]


def test_all_damaged_says_restart_and_changes_nothing(saved, run_dir, capfd):
    folders = [run_dir / CHECKPOINTS / str(step) for step in (3, 2, 1)]
    for folder, damage in zip(folders, (truncate_data, truncate_meta, garble_data)):
        damage(folder)
    capfd.readouterr()
    with pytest.raises(RunStateError) as info:
        restore_latest(run_dir, saved[1])
    message = str(info.value)
    assert "\n" not in message and "--restart" in message
    # Each checkpoint with its damaged files, in the one line.
    assert (f"{folders[1]} (meta/metadata (5 bytes) differs from its checksum in {CHECKSUMS})"
            in message)
    assert all(f"{folder} (state/" in message for folder in (folders[0], folders[2]))
    assert all(folder.is_dir() for folder in folders)  # nothing moved: --restart clears them
    assert capfd.readouterr().err == ""


def test_an_error_raised_from_a_read_error_is_damage(tmp_path):
    """Orbax raises a bare Exception from tensorstore's error when an array's data file is cut
    (the issue-31 traceback); the cause chain says what happened."""
    folder = tmp_path / CHECKPOINTS / "20"
    read = ValueError(f'OUT_OF_RANGE: Error reading "trainable.kernel/0.0" in OCDBT database at '
                      f'local file "{folder}/state/": Requested byte range [0, 331489) is not '
                      f'valid for value of size 100 [tensorstore_spec=...]')
    try:
        try:
            raise read
        except ValueError as err:
            raise Exception("Encountered error while reading array index: ...") from err
    except Exception as err:  # noqa: BLE001
        wrapped = err
    assert _damage(wrapped, folder) == (
        "OUT_OF_RANGE: Requested byte range [0, 331489) is not valid for value of size 100 "
        "(file state/)")
    node = ValueError(f'Error opening "cast" driver: Error opening "zarr" driver: Error reading '
                      f'"opt_state.0/.zarray" in OCDBT database at local file "{folder}/state/": '
                      f'Error reading Byte range [0, 1213) of local file "{folder}/state/d/6ce8": '
                      f'Error decoding b-tree node: ZSTD_decompressStream() failed: Data '
                      f'corruption detected [tensorstore_spec[1]=...]')  # a garbled node: no code
    assert _damage(node, folder) == ("Error decoding b-tree node: ZSTD_decompressStream() "
                                     "failed: Data corruption detected (file state/d/6ce8)")
    assert _damage(ValueError('Error reading local file "/elsewhere/x": y'), folder) is None
    assert _damage(Exception("a bug"), folder) is None
    assert _damage(RuntimeError("x"), folder) is None


def test_a_tree_mismatch_is_not_damage(saved, run_dir):
    # Intact files of another tree (another jax_lora's optimizer layout; another config the
    # manifest check catches first) are not damage: no fallback, nothing moved, one line
    # naming the way out (tests/jax_lora/test_checkpoint.py has the layout case itself).
    trainable, opt_state = saved[1][1]
    fewer = jax.tree.leaves(opt_state)[:-1]
    checkpoints = Checkpoints(run_dir)
    with pytest.raises(RunStateError, match="holds arrays in another layout") as info:
        checkpoints.restore_latest(trainable, fewer)
    checkpoints.close()
    assert "damaged" not in str(info.value) and "\n" not in str(info.value)
    assert sorted(p.name for p in (run_dir / CHECKPOINTS).iterdir()) == ["1", "2", "3"]
    assert flat_arrays(trainable)  # the caller's state is untouched


@pytest.mark.parametrize("kind", ["Future", "Task"])
def test_asyncio_never_retrieved_reads_of_the_run_are_dropped_others_kept(kind, tmp_path):
    """asyncio logs a failed read it was never asked about as '<kind> exception was never
    retrieved' with a traceback (the Task form came up in CI); only those naming this run's
    checkpoints are dropped."""
    def record(message):
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)

    keep = _UnretrievedReadFilter(str(tmp_path / CHECKPOINTS))
    ours = (f"{kind} exception was never retrieved\nfuture: <Task finished "
            f"exception=ValueError('OUT_OF_RANGE: ... local file \"{tmp_path / CHECKPOINTS}/20/"
            f"state/d/9e\"')>")
    assert not keep.filter(record(ours))
    assert keep.filter(record(ours.replace(str(tmp_path), "/elsewhere")))
    assert keep.filter(record(f"Unclosed client session: {tmp_path / CHECKPOINTS}"))


def test_a_damaged_best_step_stops_the_resume_in_one_line(tmp_path, capfd):
    """run_dir/best keeps one step, so there is nothing to fall back to: the resume stops at
    its start (train.py calls check), not after training, when the outputs are made from it."""
    trainable, _ = trained_like_state()
    best = BestCheckpoint(tmp_path)
    best.save(4, trainable)
    best.check(trainable)  # intact: nothing to say
    manifest = tmp_path / BEST / "4" / "state" / "manifest.ocdbt"
    manifest.write_bytes(manifest.read_bytes()[:10])
    with pytest.raises(RunStateError) as info:
        best.check(trainable)
    best.close()
    message = str(info.value)
    assert message.startswith(f"checkpoint {tmp_path / BEST / '4'} is damaged (state/"
                              f"manifest.ocdbt (10 bytes) differs from its checksum in "
                              f"{CHECKSUMS}); "
                              f"rerun with --restart")
    assert "\n" not in message and capfd.readouterr().err == ""
