"""A resume survives a damaged Keras backup: check_backup falls back to Keras' previous backup
with one warning line, or stops with a one-line RunStateError saying --restart; never a
traceback. The backups are made by train.py's backup callbacks (BackupAndRestore, ExactResume,
BackupChecksums) on a tiny model. The fuzz over every file of a backup is at the end; the
command-line cases are in test_tf_train.py."""

import hashlib
import itertools
import json
import random
import shutil

import h5py
import keras
import numpy as np
import pytest

from shared.runs.reuse import RunStateError
from tf_baseline.callbacks import (CHECKSUM_DIR, KERAS_ITERATIONS, KERAS_METADATA,
                                   KERAS_PREVIOUS, KERAS_WEIGHTS, backup_callbacks, check_backup)

X = np.random.default_rng(0).random((32, 4), dtype=np.float32)
Y = np.arange(32) % 3
STEPS = 4  # per epoch: 32 rows in batches of 8
EPOCHS = 4  # of the run the backups were stopped in


def fit(backup, epochs, weights=False):
    """train.py's backup callbacks around a tiny model with dropout (ExactResume saves its
    seed generator); returns how many epochs this fit ran (or the trained weights)."""
    keras.backend.clear_session()  # the same variable paths each time: ExactResume checks them
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    history = model.fit(X, Y, epochs=epochs, batch_size=8, verbose=0,
                        callbacks=backup_callbacks(backup))
    return model.get_weights() if weights else len(history.history["loss"])


@pytest.fixture(scope="module")
def backups(tmp_path_factory):
    """Backup folders after 1 and after 2 finished epochs (of 4: the run was stopped)."""
    made = {}
    for epochs in (1, 2):
        made[epochs] = tmp_path_factory.mktemp(f"after{epochs}") / "backup"
        assert fit(made[epochs], epochs) == epochs
    return made


@pytest.fixture
def backup(backups, tmp_path):
    copy = tmp_path / "backup"
    shutil.copytree(backups[2], copy)
    return copy


def keras_file(backup, name, previous=False):
    return backup / "keras" / (name + (KERAS_PREVIOUS if previous else ""))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def epoch_of(backup):
    return json.loads(keras_file(backup, KERAS_METADATA).read_text())["epoch"]


def test_layout_is_what_check_backup_reads(backups):
    # If Keras renames its files, check_backup would check nothing: fail here instead.
    names = sorted(p.name for p in (backups[2] / "keras").iterdir())
    assert names == sorted([KERAS_WEIGHTS, KERAS_METADATA, KERAS_WEIGHTS + KERAS_PREVIOUS,
                            KERAS_METADATA + KERAS_PREVIOUS])
    for folder in ("exact", CHECKSUM_DIR):
        assert sorted(p.stem for p in (backups[2] / folder).iterdir()) == ["epoch_1", "epoch_2"]
    assert sorted(p.name for p in (backups[1] / "keras").iterdir()) == [KERAS_WEIGHTS,
                                                                         KERAS_METADATA]
    with h5py.File(backups[2] / "keras" / KERAS_WEIGHTS) as weights:  # the step count
        assert weights[KERAS_ITERATIONS][()] == 2 * STEPS


def test_intact_or_absent_backup_passes_silently(backup, tmp_path, capfd):
    before = {p: p.read_bytes() for p in backup.rglob("*") if p.is_file()}
    check_backup(backup, STEPS)
    check_backup(tmp_path / "none", STEPS)  # killed before the first backup
    assert capfd.readouterr().err == ""
    assert {p: p.read_bytes() for p in backup.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("damage", [
    lambda b: truncate(keras_file(b, KERAS_WEIGHTS)),
    lambda b: keras_file(b, KERAS_WEIGHTS).write_bytes(b""),
    lambda b: truncate(keras_file(b, KERAS_METADATA)),
    lambda b: keras_file(b, KERAS_METADATA).unlink(),  # a kill during an earlier repair
    lambda b: truncate(b / "exact" / "epoch_2.npz"),
    lambda b: (b / "exact" / "epoch_2.npz").unlink(),
], ids=["weights cut", "weights empty", "metadata cut", "metadata missing", "npz cut",
        "npz missing"])
def test_damaged_newest_falls_back_to_keras_previous_backup(backup, damage, capfd):
    damage(backup)
    damaged = {p for p in backup.rglob("*") if p.is_file()}
    previous_weights = keras_file(backup, KERAS_WEIGHTS, previous=True).read_bytes()
    check_backup(backup, STEPS)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: resume state damaged: "), err
    assert "resuming from Keras' previous backup (after epoch 1)" in err
    # The line names the damaged (or missing) file.
    assert any(str(path) in err for path in
               [keras_file(backup, KERAS_WEIGHTS), keras_file(backup, KERAS_METADATA),
                backup / "exact" / "epoch_2.npz"])
    assert keras_file(backup, KERAS_WEIGHTS).read_bytes() == previous_weights
    assert epoch_of(backup) == 1
    assert {p for p in backup.rglob("*") if p.is_file()} >= damaged - {backup / "exact" /
                                                                       "epoch_2.npz"}
    check_backup(backup, STEPS)  # repaired for good
    assert capfd.readouterr().err == ""
    assert fit(backup, 3) == 2  # and Keras + ExactResume resume from it: epochs 2 and 3


def test_damaged_newest_and_previous_say_restart(backup, capfd):
    truncate(keras_file(backup, KERAS_WEIGHTS))
    truncate(keras_file(backup, KERAS_METADATA, previous=True))
    with pytest.raises(RunStateError) as info:
        check_backup(backup, STEPS)
    message = str(info.value)
    assert "\n" not in message and "--restart" in message
    assert str(keras_file(backup, KERAS_WEIGHTS)) in message
    assert str(keras_file(backup, KERAS_METADATA, previous=True)) in message
    assert capfd.readouterr().err == ""


def test_damage_after_the_first_epoch_says_restart(backups, tmp_path):
    # One epoch done: Keras has no previous backup to fall back to. No checksum record (an
    # older backup): the file is read.
    backup = tmp_path / "backup"
    shutil.copytree(backups[1], backup)
    shutil.rmtree(backup / CHECKSUM_DIR)
    weights = keras_file(backup, KERAS_WEIGHTS)
    truncate(weights)
    with pytest.raises(RunStateError, match="truncated file.*--restart") as info:
        check_backup(backup, STEPS)
    assert f"{weights} cannot be read (OSError: " in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_exact_state_of_both_epochs_says_restart(backup):
    shutil.rmtree(backup / "exact")
    with pytest.raises(RunStateError, match=r"epoch_2.npz is missing; .*epoch_1.npz is missing"):
        check_backup(backup, STEPS)


# ---------------------------------------------------------------- Keras' two-write window

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The weights of the whole run, never stopped."""
    return fit(tmp_path_factory.mktemp("whole") / "backup", EPOCHS, weights=True)


def weights_equal(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("recorded", [True, False], ids=["recorded", "older backup"])
def test_kill_between_keras_two_writes_resumes_at_the_right_epoch(backups, tmp_path, capfd,
                                                                  uninterrupted, recorded):
    """Keras writes the weights after epoch 2, then its metadata; killed in between, the
    metadata still names epoch 1 (the .bkp copy of it), and BackupChecksums has not run.
    Keras alone would train epoch 2 again on epoch 2's weights."""
    backup = tmp_path / "backup"
    shutil.copytree(backups[2], backup)
    shutil.copy(keras_file(backup, KERAS_METADATA, previous=True),
                keras_file(backup, KERAS_METADATA))
    (backup / CHECKSUM_DIR / "epoch_2.json").unlink()
    if not recorded:
        shutil.rmtree(backup / CHECKSUM_DIR)
    check_backup(backup, STEPS)
    err = capfd.readouterr().err
    assert err == (f"warning: resume state: {keras_file(backup, KERAS_WEIGHTS)} holds the "
                   f"weights after epoch 2 but {keras_file(backup, KERAS_METADATA)} named "
                   f"epoch 1 (killed between Keras' two writes); it now names epoch 2, so that "
                   f"epoch is not trained twice\n")
    assert epoch_of(backup) == 2
    check_backup(backup, STEPS)  # repaired for good, and recorded
    assert capfd.readouterr().err == ""
    assert (backup / CHECKSUM_DIR / "epoch_2.json").is_file()
    assert weights_equal(fit(backup, EPOCHS, weights=True), uninterrupted)


def test_kill_between_the_first_epochs_two_writes_resumes_after_it(backups, tmp_path, capfd):
    # After epoch 1 there is no metadata yet at all (Keras reads that as epoch 0).
    backup = tmp_path / "backup"
    shutil.copytree(backups[1], backup)
    keras_file(backup, KERAS_METADATA).unlink()
    shutil.rmtree(backup / CHECKSUM_DIR)
    check_backup(backup, STEPS)
    assert "named epoch 0 (killed between Keras' two writes)" in capfd.readouterr().err
    assert epoch_of(backup) == 1 and fit(backup, 2) == 1


def test_a_window_whose_state_is_damaged_falls_back_and_says_what_happened(backups, tmp_path,
                                                                          capfd):
    backup = tmp_path / "backup"
    shutil.copytree(backups[2], backup)
    shutil.copy(keras_file(backup, KERAS_METADATA, previous=True),
                keras_file(backup, KERAS_METADATA))
    (backup / CHECKSUM_DIR / "epoch_2.json").unlink()
    truncate(backup / "exact" / "epoch_2.npz")
    check_backup(backup, STEPS)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "killed between Keras' two writes, which would train " \
        "epoch 2 twice" in err and err.rstrip().endswith("(after epoch 1) instead")
    assert epoch_of(backup) == 1


# ---------------------------------------------------------------- the fuzz

SEED = 31
MAX_FILES = 12  # per mode; a backup has 8 files at most, so none is left out today
UNRECORDED_GARBLES = 3  # garbled positions per file without records, where reading decides


def cut_to_empty(data, rng):
    return b""


def cut_to_half(data, rng):
    return data[: len(data) // 2]


def cut_to_100_bytes(data, rng):
    return data[:100]


def garble_one_byte(data, rng):
    if not data:
        return data
    garbled = bytearray(data)
    garbled[rng.randrange(len(data))] ^= 1 + rng.randrange(255)
    return bytes(garbled)


DAMAGES = (cut_to_empty, cut_to_half, cut_to_100_bytes, garble_one_byte)


def resumed_state(backup) -> str:
    """A digest of what a resume reads: Keras' newest pair and ExactResume's state for it."""
    epoch = epoch_of(backup)
    files = [keras_file(backup, KERAS_WEIGHTS), keras_file(backup, KERAS_METADATA),
             backup / "exact" / f"epoch_{epoch}.npz"]
    return hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()


@pytest.mark.parametrize("mode", ["recorded", "unrecorded", "alone"])
def test_damage_anywhere_falls_back_or_stops_in_one_line(backups, mode, tmp_path, capfd,
                                                         uninterrupted):
    """Every file of a backup after 2 epochs of 4 (`alone`: after 1, so no previous pair;
    `unrecorded`: without BackupChecksums' records) cut to 0 bytes, to half, to 100 bytes, or
    with one garbled byte (three seeded positions without records). check_backup falls back (one warning line) or stops (one line naming
    the file and --restart); every backup it lets through is fitted to the end (once per
    distinct state) and must equal the uninterrupted run, unless it is a garbled byte without
    a record (`undetected`: HDF5 keeps no checksums)."""
    pristine = backups[1 if mode == "alone" else 2]
    files = sorted(str(p.relative_to(pristine)) for p in pristine.rglob("*") if p.is_file()
                   and (mode != "unrecorded" or p.parent.name != CHECKSUM_DIR))
    if len(files) > MAX_FILES:
        files = sorted(random.Random(SEED).sample(files, MAX_FILES))
    counts = dict.fromkeys(("cases", "fallbacks", "stops", "unaffected", "undetected",
                            "unchanged"), 0)
    failures, passed = [], {}  # passed: resumed state -> [(case, backup, warned)]
    cases = [(name, damage, k) for name, damage in itertools.product(files, DAMAGES)
             for k in range(UNRECORDED_GARBLES if mode == "unrecorded"
                            and damage is garble_one_byte else 1)]
    for index, (name, damage, k) in enumerate(cases):
        backup = tmp_path / str(index)
        shutil.copytree(pristine, backup)
        if mode == "unrecorded":
            shutil.rmtree(backup / CHECKSUM_DIR)
        target = backup / name
        before = target.read_bytes()
        target.write_bytes(damage(before, random.Random(f"{SEED}:{name}:{k}")))
        case = f"{mode} {name} {damage.__name__}{f' #{k}' if k else ''}"
        if target.read_bytes() == before:
            counts["unchanged"] += 1
            continue
        counts["cases"] += 1
        try:
            check_backup(backup, STEPS)
        except RunStateError as err:
            counts["stops"] += 1
            message, err_lines = str(err), capfd.readouterr().err
            if not ("\n" not in message and "--restart" in message and str(target) in message
                    and err_lines == "" and mode == "alone"):
                failures.append(f"{case}: stopped: {message} / {err_lines}")
            continue
        except Exception as err:  # noqa: BLE001 -- a traceback is the failure fuzzed for
            failures.append(f"{case}: {type(err).__name__}: {str(err)[:300]}")
            continue
        lines = capfd.readouterr().err.splitlines()
        warned = len(lines) == 1 and lines[0].startswith("warning: resume state damaged: ") \
            and str(target) in lines[0] and lines[0].endswith("(after epoch 1) instead")
        if lines and not warned:
            failures.append(f"{case}: stderr {lines}")
            continue
        passed.setdefault(resumed_state(backup), []).append((case, backup, warned, damage))
    for cases in passed.values():  # each state a resume can start from, fitted to the end
        same = weights_equal(fit(cases[0][1], EPOCHS, weights=True), uninterrupted)
        for case, _, warned, damage in cases:
            if not same and not (mode == "unrecorded" and damage is garble_one_byte
                                 and not warned):
                failures.append(f"{case}: the resumed run ends elsewhere")
            counts["fallbacks" if warned else "unaffected" if same else "undetected"] += 1
    print(f"\nfuzz {mode}: {counts} over {len(files)} files, {len(passed)} distinct resumes")
    assert not failures, "\n".join(failures)
    assert counts["cases"] >= 3 * len(files) and counts["undetected"] <= counts["cases"] // 4
    if mode == "recorded":
        assert counts["undetected"] == 0 and counts["fallbacks"] >= 4 * 3
