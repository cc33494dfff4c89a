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

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jax_lora.config import TrainConfig

TRAINABLE, FROZEN = "trainable", "frozen"


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


def learning_rate(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0, then constant or linear decay to 0 at `total_steps`."""
    after = (optax.constant_schedule(config.lr) if config.schedule == "constant" else
             optax.linear_schedule(config.lr, 0.0, max(total_steps - config.warmup_steps, 1)))
    if not config.warmup_steps:
        return after
    warmup = optax.linear_schedule(0.0, config.lr, config.warmup_steps)
    return optax.join_schedules([warmup, after], [config.warmup_steps])


def make_optimizer(config: TrainConfig, mask: nnx.State,
                   total_steps: int) -> optax.GradientTransformation:
    labels = jax.tree.map(lambda trains: TRAINABLE if trains else FROZEN, mask)
    adamw = optax.adamw(learning_rate(config, total_steps), weight_decay=config.weight_decay)
    return optax.partition({TRAINABLE: adamw, FROZEN: optax.set_to_zero()}, labels)


def param_counts(params: nnx.State, mask: nnx.State) -> dict:
    """The manifest's `params`: scalar counts over all leaves and over the trainable ones."""
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    trains = jax.tree.leaves(mask)
    total = int(sum(sizes))
    trainable = int(sum(size for size, t in zip(sizes, trains) if t))
    return {"total": total, "trainable": trainable,
            "trainable_pct": round(100.0 * trainable / total, 4)}
