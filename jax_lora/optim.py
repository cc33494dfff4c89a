"""Which parameters train, and an AdamW that moves only those.

The rule is lora.trainable_filter (parameter paths/types); from it we build one boolean
`trainable_mask` over the whole parameter tree. The optimizer partitions the tree by that
mask: trainable leaves go through AdamW, frozen leaves through `set_to_zero`, which has no
state, so the frozen base gets exactly zero update and no Adam moments. (`optax.masked(adamw,
mask)` alone would not do this: it passes the raw gradient through to unmasked leaves.)

Gradients are taken only with respect to the trainable part (`split_trainable`); the
optimizer still sees a full tree, with zeros standing in for the frozen gradients, which XLA
removes again because `set_to_zero` never reads them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_lora.config import TrainConfig
from jax_lora.quant import QuantCodes, QuantScales

TRAINABLE, FROZEN = "trainable", "frozen"
FAST = "trainable_fast"  # LoRA+'s group: lora_b and 1-D leaves at lora_plus_ratio x lr


def split_trainable(params: nnx.State, trainable: nnx.filterlib.Filter):
    """(trainable, frozen) parts of `params`; nnx.merge_state(*parts) gives it back."""
    return nnx.split_state(params, trainable, ...)


def trainable_mask(params: nnx.State, trainable: nnx.filterlib.Filter) -> nnx.State:
    """Same tree as `params`, True on every leaf the filter selects."""
    chosen, rest = split_trainable(params, trainable)
    return nnx.merge_state(jax.tree.map(lambda _: True, chosen),
                           jax.tree.map(lambda _: False, rest))


def with_frozen_zeros(trainable_grads: nnx.State, frozen: nnx.State) -> nnx.State:
    """Full-tree gradients for the partitioned optimizer: zeros where nothing trains."""
    return nnx.merge_state(trainable_grads, jax.tree.map(jnp.zeros_like, frozen))


def learning_rate(config: TrainConfig, total_steps: int,
                  peak: float | None = None) -> optax.Schedule:
    """Linear warm-up from 0 to `peak` (--lr), then constant or linear decay to 0 at
    `total_steps`: optax's own schedules, the reference scale_by_run_schedule equals."""
    peak = config.lr if peak is None else peak
    after = (optax.constant_schedule(peak) if config.schedule == "constant" else
             optax.linear_schedule(peak, 0.0, decay_steps(config, total_steps)))
    if not config.warmup_steps:
        return after
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def decay_steps(config: TrainConfig, total_steps: int) -> int:
    """Steps of linear decay after the warm-up; 0 for a constant rate."""
    return 0 if config.schedule == "constant" else max(total_steps - config.warmup_steps, 1)


class RunScheduleState(NamedTuple):
    """The step count and the schedule's numbers, as arrays: the compiled step reads them
    instead of holding them as constants, so runs that differ only in learning rate, warm-up or
    length run the same program (and find it in the persistent compilation cache)."""
    count: jax.Array  # int32, the update about to be made (0 first)
    peak: jax.Array  # float32
    warmup: jax.Array  # int32; 0 = none
    decay: jax.Array  # int32 steps of linear decay after the warm-up; 0 = constant


def schedule_value(state: RunScheduleState) -> jax.Array:
    """learning_rate's value at state.count, computed with optax's operations in optax's order
    (optax.linear_schedule, optax.join_schedules), so the rate is the same float."""
    count, peak = state.count, state.peak

    def linear(start, end, steps, at):  # optax.polynomial_schedule with power 1
        frac = 1 - jnp.clip(at, 0, steps) / jnp.maximum(steps, 1)
        return (start - end) * frac + end

    after = jnp.where(state.decay > 0, linear(peak, 0.0, state.decay, count - state.warmup),
                      peak)
    return jnp.where(count < state.warmup, linear(0.0, peak, state.warmup, count), after)


def scale_by_run_schedule(peak: float, warmup: int, decay: int) -> optax.GradientTransformation:
    """optax.scale_by_learning_rate(learning_rate(...)) with the schedule's numbers kept in
    the optimizer state (RunScheduleState)."""
    def init(params):
        del params
        return RunScheduleState(jnp.zeros([], jnp.int32), jnp.asarray(peak, jnp.float32),
                                jnp.asarray(warmup, jnp.int32), jnp.asarray(decay, jnp.int32))

    def update(updates, state, params=None):
        del params
        rate = -schedule_value(state)
        updates = jax.tree.map(lambda g: jnp.array(rate, dtype=g.dtype) * g, updates)
        return updates, state._replace(count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(init, update)


def keras_epsilon(epsilon: float, b2: float = 0.999) -> optax.Schedule:
    """Keras Adam divides by sqrt(v) + eps before the bias correction, optax by
    sqrt(v_hat) + eps after it: the same update when optax's epsilon at step t (count t - 1)
    is eps / sqrt(1 - b2^t). It matters while gradients are near eps (early steps, tiny
    gradients): tf_baseline's first steps are matched with it (tests/jax_lora/test_methods.py)."""
    return lambda count: epsilon / jnp.sqrt(1.0 - b2 ** (count + 1).astype(jnp.float32))


def group_labels(params: nnx.State, mask: nnx.State, *, lora_plus: bool) -> nnx.State:
    """The optimizer group of every leaf: FROZEN, TRAINABLE, or with LoRA+ FAST for lora_b and
    every 1-D trainable leaf (biases, DoRA magnitudes), as PEFT's create_loraplus_optimizer
    groups them."""
    shapes = {path: variable.get_value().shape for path, variable in nnx.to_flat_state(params)}
    labelled = []
    for path, variable in nnx.to_flat_state(mask):
        fast = lora_plus and (path[-1] == "lora_b" or len(shapes[path]) == 1)
        label = FROZEN if not variable.get_value() else FAST if fast else TRAINABLE
        labelled.append((path, variable.replace(label)))
    return nnx.from_flat_state(labelled)


def make_optimizer(config: TrainConfig, params: nnx.State, mask: nnx.State,
                   total_steps: int) -> optax.GradientTransformation:
    def adamw(peak):
        # optax.adamw's chain, its learning rate from the optimizer state (RunScheduleState).
        adam = (optax.scale_by_adam(eps=config.adam_epsilon) if not config.keras_epsilon else
                optax.inject_hyperparams(optax.scale_by_adam)(
                    eps=keras_epsilon(config.adam_epsilon)))
        return optax.chain(adam, optax.add_decayed_weights(config.weight_decay),
                           scale_by_run_schedule(peak, config.warmup_steps,
                                                 decay_steps(config, total_steps)))

    groups = {TRAINABLE: adamw(config.lr), FROZEN: optax.set_to_zero()}
    lora_plus = config.lora_plus_ratio != 1.0
    if lora_plus:
        groups[FAST] = adamw(config.lr * config.lora_plus_ratio)
    return optax.partition(groups, group_labels(params, mask, lora_plus=lora_plus))


def param_counts(params: nnx.State, mask: nnx.State) -> dict:
    """The manifest's `params`: the model's weights, all and trainable. A kernel stored in
    fewer bits (jax_lora.quant) counts as the weights it stands for, its scales not at all."""
    def size(variable) -> int:
        if isinstance(variable, QuantScales):
            return 0
        if isinstance(variable, QuantCodes):
            return math.prod(variable.kernel_shape)
        return variable.get_value().size
    sizes = {path: size(variable) for path, variable in nnx.to_flat_state(params)}
    trains = {path: variable.get_value() for path, variable in nnx.to_flat_state(mask)}
    total = int(sum(sizes.values()))
    trainable = int(sum(size for path, size in sizes.items() if trains[path]))
    return {"total": total, "trainable": trainable,
            "trainable_pct": round(100.0 * trainable / total, 4)}
