"""The partitioned optimizer: frozen leaves get exactly zero update and no state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_lora.config import TrainConfig
from jax_lora.lora import LoraConfig, trainable_filter
from jax_lora.models import BertClassifier, BertConfig
from jax_lora.optim import (RunScheduleState, decay_steps, learning_rate, make_optimizer,
                            param_counts, schedule_value, split_trainable, trainable_mask,
                            with_frozen_zeros)

TINY = BertConfig(vocab_size=40, hidden_dim=16, num_layers=2, num_heads=4, intermediate_dim=32,
                  max_sequence_length=24)


def params_and_mask(lora):
    """Random numpy values in the model's tree (eager init would compile per shape)."""
    abstract = nnx.state(nnx.eval_shape(lambda: BertClassifier(TINY, lora=lora,
                                                               rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), abstract)
    return params, trainable_mask(params, trainable_filter(lora))


def named(tree):
    return {".".join(map(str, path)): v.get_value() for path, v in nnx.to_flat_state(tree)}


def test_mask_marks_exactly_adapters_and_head():
    params, mask = params_and_mask(LoraConfig(rank=2, targets=("query", "value")))
    trains = {name for name, value in named(mask).items() if value}
    expected = {f"layers.{i}.attention.{t}.lora_{ab}" for i in range(2)
                for t in ("query", "value") for ab in "ab"} | {"head.kernel", "head.bias"}
    assert trains == expected
    counts = param_counts(params, mask)
    assert counts["trainable"] == 2 * 2 * 2 * (16 + 16) + 16 * 3 + 3
    assert counts["total"] == sum(v.size for v in jax.tree.leaves(params))
    assert counts["trainable_pct"] == pytest.approx(100 * counts["trainable"] / counts["total"],
                                                    abs=1e-4)


@pytest.mark.parametrize("lora", [LoraConfig(rank=2), LoraConfig(targets=(), train_head=True)],
                         ids=["lora", "linear_probe"])
def test_frozen_leaves_get_zero_update_and_no_moments(lora):
    params, mask = params_and_mask(lora)
    tx = make_optimizer(TrainConfig(lora=lora, lr=1e-2, method="lora" if lora.targets else "probe"),
                        params, mask, total_steps=10)
    opt_state = jax.jit(tx.init)(params)
    # Adam keeps mu and nu for each trainable leaf and nothing for a frozen one.
    n_trainable = sum(jax.tree.leaves(mask))
    trainable_sizes = sorted(leaf.size for leaf, trains in
                             zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if trains)
    for moment in ("mu", "nu"):
        leaves = jax.tree.leaves(optax.tree_utils.tree_get(opt_state, moment))
        assert len(leaves) == n_trainable
        assert sorted(leaf.size for leaf in leaves) == trainable_sizes
    state_size = sum(leaf.size for leaf in jax.tree.leaves(opt_state))
    # + Adam's step count and the schedule's count, peak, warm-up and decay (RunScheduleState)
    assert state_size == 2 * sum(trainable_sizes) + 5
    # Non-zero gradients everywhere: a frozen leaf must still not move.
    grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)

    @jax.jit
    def three_steps(params, opt_state):
        for _ in range(3):
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        return params

    params_new = three_steps(params, opt_state)
    for (name, trains), old, new in zip(named(mask).items(), named(params).values(),
                                        named(params_new).values()):
        if trains:
            assert not np.array_equal(old, new), name
        else:
            assert np.array_equal(old, new), name


def test_masked_alone_would_leak_raw_gradients():
    """Why optim.py partitions: optax.masked passes unmasked gradients through unchanged."""
    params = {"frozen": jnp.ones(2), "lora": jnp.ones(2)}
    grads = {"frozen": jnp.full(2, 0.5), "lora": jnp.full(2, 0.5)}
    tx = optax.masked(optax.adam(1e-2), {"frozen": False, "lora": True})
    updates, _ = tx.update(grads, tx.init(params), params)
    assert np.array_equal(updates["frozen"], grads["frozen"])


def test_with_frozen_zeros_restores_the_full_tree():
    lora = LoraConfig(rank=2)
    params, mask = params_and_mask(lora)
    trainable, frozen = split_trainable(params, trainable_filter(lora))
    full = jax.jit(with_frozen_zeros)(jax.tree.map(np.ones_like, trainable), frozen)
    assert jax.tree.structure(full) == jax.tree.structure(params)
    for trains, leaf in zip(jax.tree.leaves(mask), jax.tree.leaves(full)):
        assert np.all(leaf == (1.0 if trains else 0.0))


def test_schedules():
    constant = learning_rate(TrainConfig(lr=1e-3), total_steps=100)
    assert float(constant(0)) == pytest.approx(1e-3) and float(constant(99)) == pytest.approx(1e-3)
    linear = learning_rate(TrainConfig(lr=1e-3, schedule="linear", warmup_steps=10), 110)
    assert [float(linear(s)) for s in (0, 5, 10, 60, 110)] == pytest.approx(
        [0.0, 5e-4, 1e-3, 5e-4, 0.0])
    warm_constant = learning_rate(TrainConfig(lr=1e-3, warmup_steps=4), 100)
    assert [float(warm_constant(s)) for s in (0, 2, 4, 50)] == pytest.approx(
        [0.0, 5e-4, 1e-3, 1e-3])


RECIPES = [dict(lr=1e-3), dict(lr=3e-5, schedule="linear", warmup_steps=7),
           dict(lr=2e-4, warmup_steps=4), dict(lr=5e-4, schedule="linear")]


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_schedule_read_from_the_state_is_optax_own(recipe):
    config, total = TrainConfig(**recipe), 60
    reference = learning_rate(config, total)
    state = RunScheduleState(jnp.int32(0), jnp.float32(config.lr),
                             jnp.int32(config.warmup_steps), jnp.int32(decay_steps(config, total)))
    value = jax.jit(lambda count, state: schedule_value(state._replace(count=count)))
    steps = np.arange(total + 3, dtype=np.int32)
    ours = np.array([value(jnp.int32(step), state) for step in steps])
    # optax multiplies by the rate cast to the gradients' dtype (float32), as
    # scale_by_run_schedule does; compiled, either may differ from eager by float rounding
    # (an ulp, or 4e-13 where the decay ends at 0).
    theirs = np.array([np.float32(reference(jnp.int32(step))) for step in steps])
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-12)
    assert ours[0] == theirs[0] and ours[config.warmup_steps] == np.float32(config.lr)


@pytest.mark.parametrize("recipe", RECIPES + [dict(method="full", lr=1e-4, warmup_steps=3)])
def test_the_optimizer_moves_as_optax_adamw_does(recipe):
    """make_optimizer's chain, its rate read from the state, against optax.adamw with the
    schedule as constants (and, for full, Keras' epsilon through inject_hyperparams): the same
    parameters after a few steps, to float rounding of the same operations."""
    from jax_lora.optim import keras_epsilon
    config = TrainConfig(**recipe)
    lora = config.lora
    params, mask = params_and_mask(lora)
    total = 12
    tx = make_optimizer(config, params, mask, total_steps=total)
    schedule = learning_rate(config, total)
    reference = (optax.adamw(schedule, eps=config.adam_epsilon, weight_decay=config.weight_decay)
                 if not config.keras_epsilon else
                 optax.inject_hyperparams(optax.adamw)(
                     learning_rate=schedule, eps=keras_epsilon(config.adam_epsilon),
                     weight_decay=config.weight_decay))
    reference = optax.partition({"trainable": reference, "frozen": optax.set_to_zero()},
                                jax.tree.map(lambda m: "trainable" if m else "frozen", mask))
    rng = np.random.default_rng(1)
    ours, theirs = params, params
    ours_state, theirs_state = tx.init(params), reference.init(params)
    step = jax.jit(lambda t, p, s, g: t.update(g, s, p), static_argnums=0)
    for _ in range(5):
        grads = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), params)
        updates, ours_state = step(tx, ours, ours_state, grads)
        ours = optax.apply_updates(ours, updates)
        updates, theirs_state = step(reference, theirs, theirs_state, grads)
        theirs = optax.apply_updates(theirs, updates)
    moved = False
    for a, b, before in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs),
                            jax.tree.leaves(params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
        moved |= not np.array_equal(a, before)
    assert moved
