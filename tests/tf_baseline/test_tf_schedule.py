"""--schedule and --warmup-steps (tf_baseline/schedule.py): jax_lora's learning rate at every
update, in a real run, recorded and held to on resume; the notebook's constant rate unchanged."""

import json
import shutil
import types

import keras
import numpy as np
import pytest

from shared.runs.run_dir import LOCK, MANIFEST, PREDICTIONS, read_run
from tests.tf_baseline.conftest import TINY_FLAGS
from tf_baseline.config import parse_config
from tf_baseline.schedule import WarmupSchedule
from tf_baseline.train import main, train

# 112 training rows in batches of 16 on one device: 7 steps per epoch, 14 over 2 epochs.
FLAGS = [*TINY_FLAGS, "--batch-per-replica", "16"]
STEPS_PER_EPOCH, EPOCHS = 7, 2


def jax_rates(peak: float, schedule: str, warmup_steps: int, total_steps: int,
              steps) -> np.ndarray:
    """jax_lora.optim.learning_rate's optax schedule at each optimizer count in `steps`."""
    import jax.numpy as jnp

    from jax_lora.optim import learning_rate
    config = types.SimpleNamespace(lr=peak, schedule=schedule, warmup_steps=warmup_steps)
    rate = learning_rate(config, total_steps)
    return np.array([float(rate(jnp.int32(step))) for step in steps])


@pytest.mark.parametrize("peak, warmup_steps, total_steps, schedule", [
    (1e-5, 0, 10, "linear"),      # decay alone
    (2e-5, 3, 10, "constant"),    # warm-up, then the peak
    (3e-5, 30, 300, "linear"),    # the e5 design's 10 % at its 300-step rung
    (5e-4, 90, 900, "linear"),    # ... and at its 900-step rung
    (1e-3, 7, 7, "linear"),       # warm-up as long as the run
    (2e-3, 1, 5, "linear"),
])
def test_the_keras_schedule_is_jax_loras_at_every_step(peak, warmup_steps, total_steps,
                                                       schedule):
    keras_schedule = WarmupSchedule(peak, schedule, warmup_steps, total_steps)
    steps = range(total_steps + 3)  # past the end too: the decay stays at 0
    ours = np.array([float(keras_schedule(step)) for step in steps])
    np.testing.assert_allclose(ours, jax_rates(peak, schedule, warmup_steps, total_steps, steps),
                               rtol=1e-7, atol=0)
    assert ours[0] == (0.0 if warmup_steps else np.float32(peak))
    if warmup_steps:
        assert ours[warmup_steps] == np.float32(peak)  # the peak, reached at the warm-up's end


def test_the_schedule_survives_keras_serialization():
    """An optimizer's config through JSON and back (as a saved .keras model holds it) brings
    back the registered schedule, reading the rate at its `iterations`."""
    schedule = WarmupSchedule(3e-5, "linear", 30, 300)
    config = json.loads(json.dumps(keras.optimizers.Adam(schedule).get_config()))
    assert config["learning_rate"]["config"] == {"peak": 3e-5, "schedule": "linear",
                                                 "warmup_steps": 30, "total_steps": 300}
    reloaded = keras.optimizers.Adam.from_config(config)
    for step in (0, 17, 30, 299):
        reloaded.iterations.assign(step)
        assert float(reloaded.learning_rate) == float(schedule(step))


def value(tensor):
    """A scalar tensor or (mirrored) variable as a Python number."""
    return keras.ops.convert_to_numpy(tensor).item()


class RateRecorder(keras.callbacks.Callback):
    """The rate each update is about to use, and the optimizer as the run leaves it."""

    def __init__(self):
        super().__init__()
        self.rates, self.iterations = [], []

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = self.model.optimizer
        self.rates.append(value(optimizer.learning_rate))
        self.iterations.append(value(optimizer.iterations))

    def on_train_end(self, logs=None):
        self.optimizer = self.model.optimizer


class SnapshotAfterEpoch1(keras.callbacks.Callback):
    """Copies the run directory once epoch 1 is backed up: what a kill then leaves behind
    (less the lock, which names this live process; tests/tf_baseline/test_tf_train.py kills
    for real)."""

    def __init__(self, run_dir, snapshot):
        super().__init__()
        self.run_dir, self.snapshot = run_dir, snapshot

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            shutil.copytree(self.run_dir, self.snapshot, ignore=shutil.ignore_patterns(LOCK))


@pytest.fixture(scope="module")
def linear_run(tiny_preset, tmp_path_factory) -> types.SimpleNamespace:
    """A real run with --schedule linear --warmup-steps 2, its rates recorded, and its run
    directory as epoch 1 left it."""
    root = tmp_path_factory.mktemp("schedule")
    run_dir, snapshot = root / "linear", root / "after-epoch-1"
    base = ["--preset", str(tiny_preset), *FLAGS]
    schedule = ["--schedule", "linear", "--warmup-steps", "2"]
    recorder = RateRecorder()
    train(parse_config(base + schedule + ["--run-dir", str(run_dir)]),
          callbacks=[recorder, SnapshotAfterEpoch1(run_dir, snapshot)])
    return types.SimpleNamespace(run_dir=run_dir, snapshot=snapshot, base=base,
                                 schedule=schedule, recorder=recorder)


def test_a_linear_run_records_its_schedule_and_trains_at_jax_loras_rates(linear_run):
    manifest = read_run(linear_run.run_dir).manifest
    assert manifest["status"] == "finished"
    assert (manifest["config"]["schedule"], manifest["config"]["warmup_steps"]) == ("linear", 2)
    assert manifest["training"]["learning_rate"] == 1e-3  # the peak
    assert manifest["training"]["steps_per_epoch"] == STEPS_PER_EPOCH
    total = STEPS_PER_EPOCH * EPOCHS
    recorder = linear_run.recorder
    # Update k (k = 0 first) reads the schedule at iterations k, as optax at count k.
    assert recorder.iterations == list(range(total))
    np.testing.assert_allclose(recorder.rates, jax_rates(1e-3, "linear", 2, total, range(total)),
                               rtol=1e-7, atol=0)
    assert recorder.rates[:3] == [0.0, pytest.approx(5e-4), pytest.approx(1e-3)]
    optimizer = recorder.optimizer
    assert value(optimizer.iterations) == total
    assert optimizer.get_config()["learning_rate"]["config"] == {
        "peak": 1e-3, "schedule": "linear", "warmup_steps": 2, "total_steps": total}
    assert value(optimizer.learning_rate) == jax_rates(1e-3, "linear", 2, total, [total])[0] == 0


def test_a_resumed_run_goes_on_at_the_schedules_step(linear_run):
    """BackupAndRestore brings back `iterations`, so epoch 2 resumes at update 7 of the same
    schedule and ends where the uninterrupted run did, to the bit."""
    recorder = RateRecorder()
    train(parse_config(linear_run.base + linear_run.schedule
                       + ["--run-dir", str(linear_run.snapshot)]), callbacks=[recorder])
    assert recorder.iterations == list(range(STEPS_PER_EPOCH, STEPS_PER_EPOCH * EPOCHS))
    assert recorder.rates == linear_run.recorder.rates[STEPS_PER_EPOCH:]
    assert (linear_run.snapshot / PREDICTIONS).read_text() == \
        (linear_run.run_dir / PREDICTIONS).read_text()


def test_the_default_run_keeps_the_starters_constant_rate(tiny_preset, tmp_path):
    recorder = RateRecorder()
    run_dir = tmp_path / "constant"
    train(parse_config(["--preset", str(tiny_preset), *FLAGS, "--epochs", "1",
                        "--run-dir", str(run_dir)]), callbacks=[recorder])
    optimizer = recorder.optimizer
    # The notebook's Adam(1e-3): a float rate, held in the optimizer's learning_rate variable.
    def config(optimizer):
        return {k: v for k, v in optimizer.get_config().items() if k != "name"}  # adam_<n>
    assert type(optimizer) is keras.optimizers.Adam
    assert config(optimizer) == config(keras.optimizers.Adam(1e-3))
    assert "learning_rate" in [variable.name for variable in optimizer.variables]
    assert recorder.rates == [float(np.float32(1e-3))] * STEPS_PER_EPOCH
    manifest = read_run(run_dir).manifest
    assert (manifest["config"]["schedule"], manifest["config"]["warmup_steps"]) == ("constant", 0)
    assert manifest["training"]["learning_rate"] == 1e-3


def _refusal(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_run_with_another_schedule_is_refused(linear_run, tmp_path, capsys):
    finished = linear_run.run_dir
    before = {p: p.stat().st_mtime_ns for p in finished.rglob("*")}
    base = linear_run.base
    message = _refusal(base + ["--schedule", "linear", "--warmup-steps", "3", "--run-dir",
                               finished], capsys)
    assert "holds a finished run with other inputs (warmup_steps 2 -> 3)" in message
    # Killed mid-run: the resume is refused alike.
    manifest = json.loads((finished / MANIFEST).read_text())
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / MANIFEST).write_text(json.dumps({**manifest, "status": "running"}))
    message = _refusal(base + ["--run-dir", killed], capsys)
    assert ("holds an unfinished run with other inputs (schedule 'linear' -> 'constant'; "
            "warmup_steps 2 -> 0)") in message and "--restart" in message
    # A manifest from before the flags existed: a field it lacks counts as different
    # (shared/runs/reuse.py), though those runs all trained at a constant rate.
    older = tmp_path / "older"
    older.mkdir()
    config = {k: v for k, v in manifest["config"].items() if k not in ("schedule", "warmup_steps")}
    (older / MANIFEST).write_text(json.dumps({**manifest, "config": config}))
    message = _refusal(base + ["--run-dir", older], capsys)
    assert ("(schedule (not recorded) -> 'constant'; warmup_steps (not recorded) -> 0)"
            in message)
    assert {p: p.stat().st_mtime_ns for p in finished.rglob("*")} == before


@pytest.mark.parametrize("flags, message", [
    (["--schedule", "cosine"], "--schedule cosine: choose one of constant, linear"),
    (["--warmup-steps", "-1"], "--warmup-steps -1: must be >= 0"),
    (["--warmup-steps", "15"], "--warmup-steps 15: longer than the whole run (14 optimizer "
                               "steps: 7 per epoch x 2 epochs)"),
])
def test_bad_schedule_flags_exit_2_with_one_line_and_write_nothing(tiny_preset, tmp_path, capsys,
                                                                   flags, message):
    run_dir = tmp_path / "run"
    assert message in _refusal(["--preset", tiny_preset, *FLAGS, *flags, "--run-dir", run_dir],
                               capsys)
    assert not run_dir.exists()
