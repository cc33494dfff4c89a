"""A resume survives a damaged Keras backup: check_backup falls back to Keras' previous backup
with one warning line, or stops with a one-line RunStateError saying --restart; never a
traceback. The backups are made by BackupAndRestore + ExactResume on a tiny model."""

import json
import shutil

import keras
import numpy as np
import pytest

from shared.runs.reuse import RunStateError
from tf_baseline.callbacks import (KERAS_METADATA, KERAS_PREVIOUS, KERAS_WEIGHTS, ExactResume,
                                   check_backup)

X = np.random.default_rng(0).random((32, 4), dtype=np.float32)
Y = np.arange(32) % 3


def fit(backup, epochs):
    """train.py's backup callbacks around a tiny model with dropout (ExactResume saves its
    seed generator); returns how many epochs this fit ran."""
    keras.backend.clear_session()  # the same variable paths each time: ExactResume checks them
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8),
                              keras.layers.Dropout(0.5), keras.layers.Dense(3)])
    model.compile(keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    history = model.fit(X, Y, epochs=epochs, batch_size=8, verbose=0, callbacks=[
        ExactResume(backup / "exact"),
        keras.callbacks.BackupAndRestore(str(backup / "keras"), double_checkpoint=True,
                                         delete_checkpoint=False)])
    return len(history.history["loss"])


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
    assert sorted(p.name for p in (backups[2] / "exact").iterdir()) == ["epoch_1.npz",
                                                                         "epoch_2.npz"]
    assert sorted(p.name for p in (backups[1] / "keras").iterdir()) == [KERAS_WEIGHTS,
                                                                         KERAS_METADATA]


def test_intact_or_absent_backup_passes_silently(backup, tmp_path, capfd):
    before = {p: p.read_bytes() for p in backup.rglob("*") if p.is_file()}
    check_backup(backup)
    check_backup(tmp_path / "none")  # killed before the first backup
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
    check_backup(backup)
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
    check_backup(backup)  # repaired for good
    assert capfd.readouterr().err == ""
    assert fit(backup, 3) == 2  # and Keras + ExactResume resume from it: epochs 2 and 3


def test_damaged_newest_and_previous_say_restart(backup, capfd):
    truncate(keras_file(backup, KERAS_WEIGHTS))
    truncate(keras_file(backup, KERAS_METADATA, previous=True))
    with pytest.raises(RunStateError) as info:
        check_backup(backup)
    message = str(info.value)
    assert "\n" not in message and "--restart" in message
    assert str(keras_file(backup, KERAS_WEIGHTS)) in message
    assert str(keras_file(backup, KERAS_METADATA, previous=True)) in message
    assert capfd.readouterr().err == ""


def test_damage_after_the_first_epoch_says_restart(backups, tmp_path):
    # One epoch done: Keras has no previous backup to fall back to.
    backup = tmp_path / "backup"
    shutil.copytree(backups[1], backup)
    weights = keras_file(backup, KERAS_WEIGHTS)
    truncate(weights)
    with pytest.raises(RunStateError, match="truncated file.*--restart") as info:
        check_backup(backup)
    assert f"{weights} cannot be read (OSError: " in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_exact_state_of_both_epochs_says_restart(backup):
    shutil.rmtree(backup / "exact")
    with pytest.raises(RunStateError, match=r"epoch_2.npz is missing; .*epoch_1.npz is missing"):
        check_backup(backup)
