"""The learning rate of a run: the notebook's constant rate, or jax_lora's warm-up and decay.

jax_lora.optim.learning_rate builds its schedule with optax: a linear warm-up from 0 to the
peak over `warmup_steps` (optax.linear_schedule(0, peak, warmup_steps), joined at warmup_steps
by optax.join_schedules), then the peak (constant) or a linear decay from the peak to 0 over
the remaining steps (optax.linear_schedule(peak, 0, max(total_steps - warmup_steps, 1))).
Both count updates alike: optax's update k (k = 0 for the first) reads the schedule at its
state's count k and then adds one; Keras' k-th apply_gradients reads it at
`optimizer.iterations` = k and then adds one. WarmupSchedule evaluates optax's float32
expressions in optax's order ((init - end) * (1 - count / steps) + end), so both give the same
rate at every update (tests/tf_baseline/test_tf_schedule.py).
"""

from __future__ import annotations

import keras
from keras import ops

from tf_baseline.hf_json_tokenizer import SERIALIZATION_PACKAGE


@keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps` updates, then `peak` (schedule
    "constant") or linear decay to 0 at update `total_steps` (schedule "linear"): jax_lora's
    --schedule and --warmup-steps."""

    def __init__(self, peak: float, schedule: str, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = ops.cast(step, "int64")
        if self.schedule == "constant":
            after = ops.full((), self.peak, "float32")
        else:
            after = _linear(step - self.warmup_steps, self.peak, 0.0,
                            max(self.total_steps - self.warmup_steps, 1))
        if not self.warmup_steps:
            return after
        warmup = _linear(step, 0.0, self.peak, self.warmup_steps)
        return ops.where(step < self.warmup_steps, warmup, after)

    def get_config(self) -> dict:
        return {"peak": self.peak, "schedule": self.schedule,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def _linear(step, init: float, end: float, steps: int):
    """optax.linear_schedule(init, end, steps) at `step` (steps > 0), in its float32 order."""
    count = ops.cast(ops.clip(step, 0, steps), "float32")
    fraction = 1.0 - count / ops.cast(steps, "float32")
    return (init - end) * fraction + end


def learning_rate(peak: float, schedule: str, warmup_steps: int,
                  total_steps: int) -> float | WarmupSchedule:
    """Adam's `learning_rate`: the notebook's float itself when the rate is constant without
    warm-up, so that run builds the very optimizer it always did (a float rate is one of the
    optimizer's variables, in its weights and backups); else the schedule."""
    if schedule == "constant" and not warmup_steps:
        return peak
    return WarmupSchedule(peak, schedule, warmup_steps, total_steps)


def check_warmup(warmup_steps: int, steps_per_epoch: int, epochs: int) -> None:
    """Refuse a warm-up longer than the run, as jax_lora does (one-line ValueError)."""
    total = steps_per_epoch * epochs
    if warmup_steps > total:
        raise ValueError(f"--warmup-steps {warmup_steps}: longer than the whole run ({total} "
                         f"optimizer steps: {steps_per_epoch} per epoch x {epochs} epochs)")
