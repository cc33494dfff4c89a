"""The Flax BERT on a tiny random config: shapes, padding, dropout. Parity with keras-hub is
test_parity.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_lora.lora import LoraConfig, LoraParam
from jax_lora.models import BertClassifier, BertConfig


@pytest.fixture(scope="module")
def model(tiny_config):
    return BertClassifier(tiny_config, lora=LoraConfig(rank=2, dropout=0.1), rngs=nnx.Rngs(0))


def test_output_shapes(model, tiny_batch):
    out = model.encode(*tiny_batch)
    assert out["sequence_output"].shape == (2, 8, 16)
    assert out["pooled_output"].shape == (2, 16)
    assert out["logits"].shape == (2, 3) and out["logits"].dtype == jnp.float32
    assert len(out["hidden_states"]) == 2
    np.testing.assert_array_equal(out["cls"], out["sequence_output"][:, 0])
    np.testing.assert_array_equal(out["hidden_states"][-1], out["sequence_output"])


def test_padding_does_not_change_real_positions(model, tiny_batch):
    """Extra padded columns are masked out of every softmax, as in keras-hub."""
    short = model.encode(*tiny_batch)
    long = model.encode(*[np.pad(x, ((0, 0), (0, 6))) for x in tiny_batch])
    np.testing.assert_allclose(long["logits"], short["logits"], atol=1e-6)
    np.testing.assert_allclose(long["sequence_output"][:, :7], short["sequence_output"][:, :7],
                               atol=1e-6)


def test_dropout_is_keyed_and_jittable(model, tiny_batch):
    forward = nnx.jit(lambda m, key: m(*tiny_batch, dropout_key=key))
    eval_logits = model(*tiny_batch)
    first = forward(model, jax.random.key(1))
    assert not np.allclose(first, eval_logits)
    np.testing.assert_array_equal(first, forward(model, jax.random.key(1)))
    assert not np.allclose(first, forward(model, jax.random.key(2)))
    np.testing.assert_array_equal(eval_logits, model(*tiny_batch))


def test_heads_must_divide_hidden_dim():
    with pytest.raises(ValueError, match="num_heads=4"):
        BertConfig(vocab_size=10, hidden_dim=10, num_layers=1, num_heads=4, intermediate_dim=8)


def test_cls_only_last_layer_gives_the_full_models_logits_and_gradients(model, tiny_batch):
    """The classifier reads the [CLS] row alone, so running the last layer for that row only
    changes nothing it computes, forward or backward, while XLA does fewer FLOPs."""
    full, short = model.encode(*tiny_batch), model.encode(*tiny_batch, cls_only=True)
    for name in ("logits", "pooled_output", "cls"):
        np.testing.assert_allclose(short[name], full[name], atol=1e-6)
    assert short["sequence_output"].shape == (2, 1, 16)
    np.testing.assert_array_equal(short["hidden_states"][0], full["hidden_states"][0])

    graphdef, params = nnx.split(model)

    def loss(params, cls_only):
        out = nnx.merge(graphdef, params).encode(*tiny_batch, cls_only=cls_only)
        return (out["logits"] ** 2).sum()

    grads = [jax.grad(loss)(params, flag) for flag in (False, True)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(b, a, atol=1e-6)
    flops = [jax.jit(loss, static_argnums=1).lower(params, flag).compile().cost_analysis()["flops"]
             for flag in (False, True)]
    assert flops[1] < flops[0]
    # __call__ (training and evaluation) takes the short path.
    np.testing.assert_array_equal(model(*tiny_batch), short["logits"])


@pytest.mark.parametrize("remat", ["dots", "layers"])
def test_rematerialised_layers_give_the_same_loss_and_gradients(tiny_config, tiny_batch, remat):
    """--remat only changes what the backward pass recomputes: same dropout masks (same
    keys), same loss, same LoRA gradients."""
    def loss_and_grads(policy):
        model = BertClassifier(tiny_config, lora=LoraConfig(rank=2), remat=policy,
                               rngs=nnx.Rngs(0))
        graphdef, lora_params, rest = nnx.split(model, LoraParam, ...)

        def loss(lora_params):
            logits = nnx.merge(graphdef, lora_params, rest)(*tiny_batch,
                                                            dropout_key=jax.random.key(3))
            return (logits ** 2).sum()
        return jax.jit(jax.value_and_grad(loss))(lora_params)

    (base_loss, base_grads), (loss, grads) = loss_and_grads("none"), loss_and_grads(remat)
    np.testing.assert_allclose(loss, base_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(base_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(b, a, atol=1e-6)


def test_remat_with_the_memory_scheduler_needs_less_activation_memory():
    """XLA's temporary memory of a LoRA training step (compile only) on a small BERT: --remat
    layers, compiled as train.py compiles it (steps.compiler_options), needs less than none."""
    from jax_lora.steps import compiler_options

    config = BertConfig(vocab_size=64, hidden_dim=64, num_layers=4, num_heads=4,
                        intermediate_dim=256)
    ids = jnp.ones((8, 64), jnp.int32)

    def temp_bytes(remat):
        model = BertClassifier(config, lora=LoraConfig(rank=4), remat=remat, rngs=nnx.Rngs(0))
        graphdef, lora_params, rest = nnx.split(model, LoraParam, ...)

        def grads(lora_params):
            return jax.grad(lambda p: nnx.merge(graphdef, p, rest)(
                ids, ids * 0, ids, dropout_key=jax.random.key(0)).sum())(lora_params)
        compiled = jax.jit(grads, compiler_options=compiler_options(remat) or None).lower(
            lora_params).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes("layers") < 0.6 * temp_bytes("none")


def test_unknown_remat_policy_is_refused(tiny_config):
    with pytest.raises(ValueError, match="remat='all'"):
        BertClassifier(tiny_config, remat="all", rngs=nnx.Rngs(0))
