"""What jax_lora/train.py's epoch loop keeps besides the train state, one part each, each
tested on its own (tests/jax_lora/test_loop.py):

    Clock        training seconds: wall time minus dev evaluations and checkpoint saves
                 (big_vision's Chrono pauses for the same)
    Window       running sums of the step metrics since the last dev evaluation
    Progress     what a checkpoint records besides the arrays, so a resumed run goes on as an
                 uninterrupted one would
    Schedule     at which optimizer steps the loop evaluates the dev part and saves
    EvalAndSave  the dev evaluations and checkpoint saves themselves, after a step and at an
                 epoch's end
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable

import jax.numpy as jnp
import pandas as pd
from flax import nnx

from jax_lora.checkpoint import Checkpoints
from jax_lora.dev_eval import BestCheckpoint, DevTracker
from jax_lora.input_pipeline import Encoded
from jax_lora.optim import split_trainable
from jax_lora.steps import METRICS, TrainState, compile_clock, val_metrics
from shared.runs.run_dir import EVAL_COLUMNS, RunWriter

ASIDE = ("evals", "eval_compile", "checkpoints")  # what an epoch's Clock.aside sums


class Clock:
    """The run's training seconds: the wall time since `mark` counts as training when the
    clock ticks, except what is set aside (dev evaluations, checkpoint saves) or skipped (an
    epoch's end). `aside` sums, per epoch, the seconds set aside by kind, and the seconds the
    dev evaluations spent compiling, which the epoch's compile clock hears too."""

    def __init__(self, train_seconds: float = 0.0, now: Callable[[], float] = time.perf_counter):
        self.now = now
        self.train = train_seconds  # over the whole run, resumes included
        self.mark = now()
        self.aside = dict.fromkeys(ASIDE, 0.0)

    def tick(self) -> None:
        """Count the time since the mark as training."""
        now = self.now()
        self.train, self.mark = self.train + now - self.mark, now

    def skip(self) -> None:
        """The time since the mark was not training."""
        self.mark = self.now()

    def new_epoch(self) -> None:
        self.skip()
        self.aside = dict.fromkeys(ASIDE, 0.0)

    @contextlib.contextmanager
    def set_aside(self, what: str):
        """Training up to here counts; the block's seconds go to aside[what] instead."""
        self.tick()
        yield
        now = self.now()
        self.aside[what] += now - self.mark
        self.mark = now

    def add_eval_compile(self, seconds: float) -> None:
        self.aside["eval_compile"] += seconds


class Window:
    """Sums of the step metrics (steps.METRICS) since the last dev evaluation: the train_loss
    of evals.csv. Kept on the device (float32, as the steps return them) until read."""

    def __init__(self, sums: dict[str, float]):
        self.sums = {k: jnp.float32(v) for k, v in sums.items()}

    def add(self, metrics: dict) -> None:
        self.sums = {k: self.sums[k] + metrics[k] for k in METRICS}

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.sums.items()}

    def take_loss(self) -> float | None:
        """The window's mean training loss (None for an empty window); the next window
        starts empty."""
        sums = self.to_dict()
        self.sums = {k: jnp.float32(0.0) for k in METRICS}
        return sums["loss_sum"] / sums["count"] if sums["count"] else None


def zero_sums() -> dict[str, float]:
    return dict.fromkeys(METRICS, 0.0)


@dataclass
class Progress:
    """What a checkpoint records besides the trainable arrays and Adam's moments (its JSON
    item), so that a resumed run writes what an uninterrupted one would: every count here is
    what the loop held at the save."""
    config: dict  # TrainConfig.to_dict() of the run that saved first
    history: list[dict] = field(default_factory=list)  # history.csv's rows, one per epoch
    evals: list[dict] = field(default_factory=list)  # evals.csv's rows (DevTracker.evals)
    train_seconds: float = 0.0  # Clock.train
    # The running sums of the epoch (train.train_epoch's totals); zeros once it has ended.
    epoch_totals: dict = field(default_factory=zero_sums)
    window: dict = field(default_factory=zero_sums)  # Window.to_dict()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def resumed(cls, config: dict, saved: dict) -> "Progress":
        """A checkpoint's record; its own config, when it has one, wins over `config` (the
        same run's, which --max-steps may have extended)."""
        return cls(**{"config": config, **saved})


@dataclass(frozen=True)
class Schedule:
    """At which optimizer steps the loop evaluates the dev part and saves a checkpoint,
    besides each epoch's end (where the epoch loop does both)."""
    total_steps: int  # the run's last step
    steps_per_epoch: int
    eval_every: int  # 0: epoch ends only
    checkpoint_every: int  # 0: epoch ends only
    has_dev: bool  # a dev part to evaluate (--dev-fraction)

    def last(self, step: int) -> bool:
        return step >= self.total_steps

    def eval_due(self, step: int) -> bool:
        return bool(self.eval_every) and step % self.eval_every == 0

    def evaluates(self, step: int) -> bool:
        return self.has_dev and (self.last(step) or self.eval_due(step))

    def saves(self, step: int, stop: bool) -> bool:
        """A checkpoint when the run stops, after each dev evaluation that --eval-every asked
        for (so a resume need not redo it), and every --checkpoint-every steps."""
        return stop or (self.has_dev and self.eval_due(step)) or (
            bool(self.checkpoint_every) and step % self.checkpoint_every == 0)


@dataclass
class EvalAndSave:
    """The dev evaluations (a row of evals.csv; the best step's parameters kept) and the
    checkpoint saves of a run, each set aside from its training seconds on `clock`."""
    progress: Progress
    clock: Clock
    window: Window
    tracker: DevTracker
    schedule: Schedule
    checkpoints: Checkpoints
    trainable: nnx.filterlib.Filter  # what a checkpoint and the best step keep of the params
    writer: RunWriter  # distributed.Silent off process 0
    predict: Callable  # (params, Encoded) -> (logits, cls), steps.evaluate bound
    examples_at: Callable[[int], int]  # training rows seen after a step (Setup.examples_at)
    dev: Encoded | None = None
    best: BestCheckpoint | None = None  # with a dev part

    def after_step(self, state: TrainState, totals: dict, metrics: dict, step: int,
                   epoch_end: bool) -> bool:
        """train.train_epoch's after_step: evaluates and saves when the schedule says so;
        True stops the run (its last step, or --patience evaluations brought nothing better)."""
        self.window.add(metrics)
        if epoch_end:  # evaluated and saved by the epoch loop
            return False
        if self.schedule.evaluates(step):
            self.evaluate_dev(state, step)
        stop = self.schedule.last(step) or self.tracker.exhausted()
        if self.schedule.saves(step, stop):
            self.save_checkpoint(state, totals)
        return stop

    def evaluate_dev(self, state: TrainState, step: int) -> None:
        with self.clock.set_aside("evals"):
            train_loss = self.window.take_loss()
            with compile_clock() as compiled:
                metrics = val_metrics(self.predict(state.params, self.dev)[0], self.dev.labels)
            self.clock.add_eval_compile(compiled["seconds"])
            row = {"step": step, "epoch": step / self.schedule.steps_per_epoch,
                   "examples": self.examples_at(step), "train_loss": train_loss,
                   "dev_loss": metrics["val_loss"], "dev_accuracy": metrics["val_accuracy"],
                   "train_seconds": self.clock.train}
            if self.tracker.record(row):  # saved before the checkpoint that records it
                self.best.save(step, split_trainable(state.params, self.trainable)[0])
            self.writer.write_evals(pd.DataFrame(self.tracker.evals, columns=list(EVAL_COLUMNS)))

    def save_checkpoint(self, state: TrainState, totals: dict) -> None:
        """The trainable parameters, Adam's moments and the Progress at `state`'s step, with
        the epoch's running sums `totals`."""
        with self.clock.set_aside("checkpoints"):
            self.progress.epoch_totals = {k: float(v) for k, v in totals.items()}
            self.progress.window = self.window.to_dict()
            self.progress.evals = self.tracker.evals
            self.progress.train_seconds = self.clock.train
            self.checkpoints.save(int(state.step),
                                  split_trainable(state.params, self.trainable)[0],
                                  state.opt_state, self.progress.to_dict())
