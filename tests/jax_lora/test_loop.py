"""jax_lora/loop.py's parts on their own, on a fake clock: the training seconds, the window of
running sums, the checkpoint's record, the schedule, and the dev evaluations and checkpoint
saves after a step (with stand-ins that record what they were given). The whole loop runs in
test_jax_train.py and test_dev_eval.py."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_lora.checkpoint import flat_arrays
from jax_lora.dev_eval import DevTracker
from jax_lora.loop import Clock, EvalAndSave, Progress, Schedule, Window
from jax_lora.steps import METRICS, TrainState


class FakeTime:
    """A perf_counter that moves only when told."""

    def __init__(self):
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds


def test_the_clock_counts_training_and_sets_evaluations_and_saves_aside():
    time = FakeTime()
    clock = Clock(train_seconds=100.0, now=time)  # resumed after 100 s of training
    time.advance(5)
    clock.tick()
    assert clock.train == 105
    with clock.set_aside("evals"):
        time.advance(7)  # a dev evaluation
        clock.add_eval_compile(2)
    assert clock.train == 105
    time.advance(3)  # training: entering a block set aside counts it first
    with clock.set_aside("checkpoints"):
        assert clock.train == 108
        time.advance(11)
    assert clock.aside == {"evals": 7, "eval_compile": 2, "checkpoints": 11}
    time.advance(4)
    clock.skip()  # an epoch's end: not training
    time.advance(1)
    clock.tick()
    assert clock.train == 109
    time.advance(6)
    clock.new_epoch()  # skips too, and starts the epoch's sums afresh
    time.advance(2)
    clock.tick()
    assert clock.train == 111 and clock.aside == {"evals": 0, "eval_compile": 0,
                                                  "checkpoints": 0}


def metrics(loss: float, correct: float = 0.0, count: float = 1.0) -> dict:
    return {"loss_sum": jnp.float32(loss), "correct": jnp.float32(correct),
            "count": jnp.float32(count)}


def test_the_window_sums_the_steps_since_the_last_evaluation():
    window = Window({"loss_sum": 3.0, "correct": 1.0, "count": 4.0})  # from a checkpoint
    window.add(metrics(5.0, correct=2.0, count=4.0))
    assert window.to_dict() == {"loss_sum": 8.0, "correct": 3.0, "count": 8.0}
    assert window.take_loss() == 1.0
    assert window.to_dict() == dict.fromkeys(METRICS, 0.0)
    assert window.take_loss() is None  # nothing trained since: no loss, not 0/0


def test_progress_keeps_its_fields_and_a_checkpoint_s_own_config():
    progress = Progress({"max_steps": 16})
    # The JSON item every checkpoint has held, in this order.
    assert list(progress.to_dict()) == ["config", "history", "evals", "train_seconds",
                                        "epoch_totals", "window"]
    assert progress.epoch_totals == progress.window == dict.fromkeys(METRICS, 0.0)
    saved = {**progress.to_dict(), "config": {"max_steps": 7}, "history": [{"epoch": 1}],
             "train_seconds": 12.5}
    resumed = Progress.resumed({"max_steps": 16}, saved)  # --max-steps extends the run
    assert resumed.config == {"max_steps": 7} and resumed.history == [{"epoch": 1}]
    assert resumed.to_dict() == saved
    assert Progress.resumed({"max_steps": 16}, {}).config == {"max_steps": 16}


def test_the_schedule_evaluates_and_saves_on_its_steps():
    schedule = Schedule(total_steps=10, steps_per_epoch=4, eval_every=3, checkpoint_every=4,
                        has_dev=True)
    assert [s for s in range(1, 11) if schedule.evaluates(s)] == [3, 6, 9, 10]
    assert [s for s in range(1, 11) if schedule.saves(s, stop=schedule.last(s))] == [
        3, 4, 6, 8, 9, 10]
    assert schedule.saves(5, stop=True)  # --patience ran out
    plain = Schedule(total_steps=10, steps_per_epoch=4, eval_every=0, checkpoint_every=0,
                     has_dev=False)
    assert not any(plain.evaluates(s) for s in range(1, 11))
    assert [s for s in range(1, 11) if plain.saves(s, stop=plain.last(s))] == [10]


# ---------------------------------------------------------------- EvalAndSave

class Model(nnx.Module):
    def __init__(self):
        self.kernel = nnx.Param(jnp.ones(2))  # trains
        self.stats = nnx.BatchStat(jnp.zeros(2))  # does not


class Recorder:
    """Stands in for Checkpoints, BestCheckpoint and RunWriter: records each call's
    arguments, and spends `seconds` of the fake time on it."""

    def __init__(self, time: FakeTime, seconds: float = 0.0):
        self.time, self.seconds, self.calls = time, seconds, []

    def record(self, *args):
        self.time.advance(self.seconds)
        self.calls.append(args)

    save = write_evals = record


DEV_LABELS = np.array([0, 1])


def dev_logits(accuracy: float) -> np.ndarray:
    """Logits for DEV_LABELS: both right (1.0), the first right (0.5) or none (0.0)."""
    right = [0, 1] if accuracy == 1.0 else [0, 0] if accuracy == 0.5 else [1, 0]
    return np.eye(3, dtype=np.float32)[right] * 5


def eval_and_save(time, schedule, accuracies, patience=0):
    """An EvalAndSave whose dev evaluations take 30 s and give `accuracies` in turn, whose
    checkpoint saves take 50 s."""
    answers = iter(accuracies)

    def predict(params, data):
        time.advance(30)
        return dev_logits(next(answers)), None

    dev = type("Dev", (), {"labels": DEV_LABELS})() if schedule.has_dev else None
    return EvalAndSave(Progress({"lr": 1e-3}), Clock(now=time),
                       Window(dict.fromkeys(METRICS, 0.0)), DevTracker(patience), schedule,
                       checkpoints=Recorder(time, 50), trainable=nnx.Param,
                       writer=Recorder(time), predict=predict,
                       examples_at=lambda step: 8 * step, dev=dev, best=Recorder(time))


def train(actions, time, steps, totals=None):
    """Steps 1..`steps`, one second each, with loss = step; what after_step returned."""
    params, stopped = nnx.state(Model()), []
    for step in steps:
        time.advance(1)
        state = TrainState(jnp.int32(step), params, ("adam",))
        stopped.append(actions.after_step(state, totals or {"loss_sum": 0.0}, metrics(step),
                                          step, epoch_end=False))
    return stopped


def test_dev_evaluations_and_saves_come_when_due_and_are_not_training():
    time = FakeTime()
    schedule = Schedule(total_steps=7, steps_per_epoch=10, eval_every=3, checkpoint_every=0,
                        has_dev=True)
    actions = eval_and_save(time, schedule, accuracies=[0.5, 1.0, 0.5])
    stopped = train(actions, time, range(1, 8), totals={"loss_sum": jnp.float32(2.5)})
    assert stopped == [False] * 6 + [True]  # the run's last step
    evals = actions.tracker.evals
    assert [row["step"] for row in evals] == [3, 6, 7]  # every 3 steps and the last
    assert [row["train_loss"] for row in evals] == [2.0, 5.0, 7.0]  # mean of steps since
    assert [row["train_seconds"] for row in evals] == [3, 6, 7]  # 1 s a step, nothing else
    assert evals[1] == {"step": 6, "epoch": 0.6, "examples": 48, "train_loss": 5.0,
                        "dev_loss": pytest.approx(0.0134, abs=1e-4), "dev_accuracy": 1.0,
                        "train_seconds": 6}
    assert [call[0] for call in actions.best.calls] == [3, 6]  # each new best
    assert [len(call[0]) for call in actions.writer.calls] == [1, 2, 3]  # evals.csv rewritten
    assert actions.clock.aside == {"evals": 90, "eval_compile": 0, "checkpoints": 150}

    saves = actions.checkpoints.calls
    assert [step for step, *_ in saves] == [3, 6, 7]  # after each evaluation
    step, trainable, opt_state, meta = saves[1]
    assert set(flat_arrays(trainable)) == {"kernel"}  # the trainable leaves alone
    assert opt_state == ("adam",)
    assert meta["evals"] == evals[:2] and meta["train_seconds"] == 6
    assert meta["window"] == dict.fromkeys(METRICS, 0.0)  # just evaluated
    assert meta["epoch_totals"] == {"loss_sum": 2.5} and meta["config"] == {"lr": 1e-3}


def test_patience_stops_the_run_with_a_checkpoint():
    time = FakeTime()
    schedule = Schedule(total_steps=100, steps_per_epoch=10, eval_every=2, checkpoint_every=0,
                        has_dev=True)
    actions = eval_and_save(time, schedule, accuracies=[1.0, 0.5], patience=1)
    assert train(actions, time, range(1, 5)) == [False, False, False, True]
    assert [step for step, *_ in actions.checkpoints.calls] == [2, 4]
    assert actions.tracker.exhausted() and actions.tracker.best["step"] == 2


def test_without_a_dev_part_it_saves_on_its_own_schedule():
    time = FakeTime()
    schedule = Schedule(total_steps=5, steps_per_epoch=10, eval_every=0, checkpoint_every=2,
                        has_dev=False)
    actions = eval_and_save(time, schedule, accuracies=[])  # predict would run out: never called
    assert train(actions, time, range(1, 6)) == [False] * 4 + [True]
    saves = actions.checkpoints.calls
    assert [step for step, *_ in saves] == [2, 4, 5]
    # The window is never emptied: the sums since the run (re)started.
    assert saves[1][3]["window"] == {"loss_sum": 10.0, "correct": 0.0, "count": 4.0}
    assert [meta["train_seconds"] for *_, meta in saves] == [2, 4, 5]
    assert actions.tracker.evals == [] and actions.writer.calls == []


def test_an_epoch_end_step_only_adds_to_the_window():
    time = FakeTime()
    schedule = Schedule(total_steps=10, steps_per_epoch=5, eval_every=5, checkpoint_every=5,
                        has_dev=True)
    actions = eval_and_save(time, schedule, accuracies=[])
    state = TrainState(jnp.int32(5), nnx.state(Model()), ())
    assert actions.after_step(state, {}, metrics(4.0), 5, epoch_end=True) is False
    assert actions.checkpoints.calls == [] and actions.window.to_dict()["loss_sum"] == 4.0
