"""LoRA: config validation, parameter count, step-0 identity, trainable rule, merge."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_lora.lora import (LORA_TARGETS, LoraConfig, LoRALinear, LoraParam, dropout, merge_lora,
                           trainable_filter)
from jax_lora.models import BertClassifier, BertConfig

MBERT = BertConfig(vocab_size=119547, hidden_dim=768, num_layers=12, num_heads=12,
                   intermediate_dim=3072)

def _paths(model, flt):
    return {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, flt))}


def _randomize_lora_b(model, seed):
    for index, (path, module) in enumerate(nnx.iter_modules(model)):
        if hasattr(module, "lora_b"):
            key = jax.random.fold_in(jax.random.key(seed), index)
            module.lora_b[...] = 0.3 * jax.random.normal(key, module.lora_b.shape)


@pytest.mark.parametrize("field, kwargs", [
    ("rank", {"rank": 0}), ("alpha", {"alpha": 0.0}), ("dropout", {"dropout": 1.0}),
    ("targets", {"targets": ("query", "dense")}), ("targets", {"targets": ("query", "query")})])
def test_config_rejects_bad_fields(field, kwargs):
    with pytest.raises(ValueError, match=field) as err:
        LoraConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_trainable_count_matches_formula_on_mbert_shapes():
    lora = LoraConfig(rank=16, targets=("query", "value"))
    model = nnx.eval_shape(lambda: BertClassifier(MBERT, lora=lora, rngs=nnx.Rngs(0)))
    counts = {path: int(np.prod(v.shape)) for path, v in
              nnx.to_flat_state(nnx.state(model, trainable_filter(lora)))}
    adapters = sum(n for path, n in counts.items() if path[-1] in ("lora_a", "lora_b"))
    head = sum(n for path, n in counts.items() if path[0] == "head")
    # Per layer, query and value each get A (768 x 16) and B (16 x 768); the head is 768 x 3 + 3.
    assert adapters == 12 * 2 * 16 * (768 + 768) == 589_824
    assert head == 768 * 3 + 3 == 2_307
    assert sum(counts.values()) == adapters + head  # nothing else trains


def test_trainable_filter_selects_adapters_head_and_pooler_as_configured(tiny_config):
    for train_head, train_pooler in [(True, False), (False, True), (False, False)]:
        lora = LoraConfig(rank=2, targets=("value", "ffn_in"), train_head=train_head,
                          train_pooler=train_pooler)
        model = BertClassifier(tiny_config, lora=lora, rngs=nnx.Rngs(0))
        expected = {f"layers/{i}/{name}/lora_{ab}" for i in range(2) for ab in "ab"
                    for name in ("attention/value", "ffn_in")}
        expected |= {"head/kernel", "head/bias"} if train_head else set()
        expected |= {"pooler/kernel", "pooler/bias"} if train_pooler else set()
        assert _paths(model, trainable_filter(lora)) == expected


def test_linear_probe_has_no_adapters(tiny_config):
    lora = LoraConfig(targets=())
    model = BertClassifier(tiny_config, lora=lora, rngs=nnx.Rngs(0))
    assert _paths(model, trainable_filter(lora)) == {"head/kernel", "head/bias"}


def test_adapter_shapes_and_init():
    lora = LoraConfig(rank=16, targets=LORA_TARGETS)
    layer = nnx.eval_shape(lambda: BertClassifier(MBERT, lora=lora, rngs=nnx.Rngs(0))).layers[0]
    assert layer.ffn_in.lora_a.shape == (768, 16) and layer.ffn_in.lora_b.shape == (16, 3072)
    assert layer.ffn_out.lora_a.shape == (3072, 16) and layer.ffn_out.lora_b.shape == (16, 768)
    projection = LoRALinear(256, 8, rank=16, scale=1.0, rngs=nnx.Rngs(0))
    a = np.asarray(projection.lora_a[...])
    # PEFT's kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(d_in), 1/sqrt(d_in)), std = bound/sqrt(3).
    bound = 1 / np.sqrt(256)
    assert np.abs(a).max() <= bound and a.std() == pytest.approx(bound / np.sqrt(3), rel=0.05)
    assert not np.asarray(projection.lora_b[...]).any()


def test_zero_b_equals_base_model_exactly(tiny_config, tiny_batch):
    adapted = BertClassifier(tiny_config, lora=LoraConfig(rank=4, targets=LORA_TARGETS),
                             rngs=nnx.Rngs(0))
    base = BertClassifier(tiny_config, lora=LoraConfig(targets=()), rngs=nnx.Rngs(1))
    nnx.update(base, nnx.state(adapted, nnx.Not(LoraParam)))
    np.testing.assert_array_equal(adapted(*tiny_batch), base(*tiny_batch))


def test_merge_equals_adapted_model(tiny_config, tiny_batch):
    lora = LoraConfig(rank=3, alpha=6.0, targets=LORA_TARGETS)
    model = BertClassifier(tiny_config, lora=lora, rngs=nnx.Rngs(0))
    _randomize_lora_b(model, seed=1)
    merged = merge_lora(model)
    assert not nnx.state(merged, LoraParam)
    assert merged.lora == dataclasses.replace(lora, targets=())
    adapted_logits = np.asarray(model(*tiny_batch))
    base = BertClassifier(tiny_config, lora=LoraConfig(targets=()), rngs=nnx.Rngs(1))
    nnx.update(base, nnx.state(model, nnx.Not(LoraParam)))
    assert np.abs(np.asarray(base(*tiny_batch)) - adapted_logits).max() > 1e-3  # adapters matter
    np.testing.assert_allclose(merged(*tiny_batch), adapted_logits, atol=1e-5, rtol=0)
    kernel = model.layers[1].ffn_out
    np.testing.assert_allclose(
        merged.layers[1].ffn_out.kernel[...],
        kernel.kernel[...] + 2.0 * kernel.lora_a[...] @ kernel.lora_b[...], atol=1e-7)


def test_lora_dropout_only_touches_the_adapter_path(tiny_config, tiny_batch):
    lora = LoraConfig(rank=2, dropout=0.5, targets=("query",))
    config = dataclasses.replace(tiny_config, dropout=0.0)
    model = BertClassifier(config, lora=lora, rngs=nnx.Rngs(0))
    key = jax.random.key(3)
    # B = 0: adapter dropout cannot change anything yet.
    np.testing.assert_array_equal(model(*tiny_batch, dropout_key=key), model(*tiny_batch))
    _randomize_lora_b(model, seed=2)
    assert not np.allclose(model(*tiny_batch, dropout_key=key), model(*tiny_batch))


def test_dropout_drops_at_the_rate_keeps_the_mean_and_is_deterministic():
    x = jnp.ones((64, 128, 128), jnp.float32)
    key = jax.random.key(3)
    out = np.asarray(dropout(x, 0.1, key))
    dropped = (out == 0).mean()
    # 1,048,576 draws: the standard error of the dropped fraction is 0.0003.
    assert abs(dropped - 6554 / 65536) < 0.0015
    np.testing.assert_allclose(out[out != 0], 65536 / (65536 - 6554), rtol=1e-6)
    assert abs(out.mean() - 1.0) < 0.005
    # The mask is threefry's non-partitionable 16-bit draw (not the default layout), under jit
    # too; the same key gives the same mask, another key another.
    with jax.threefry_partitionable(False):
        bits = np.asarray(jax.random.bits(key, x.shape, jnp.uint16))
    np.testing.assert_array_equal(out != 0, bits >= 6554)
    assert not np.array_equal(np.asarray(jax.random.bits(key, x.shape, jnp.uint16)), bits)
    np.testing.assert_array_equal(jax.jit(dropout, static_argnums=1)(x, 0.1, key), out)
    np.testing.assert_array_equal(dropout(x, 0.1, key), out)
    assert not np.array_equal(dropout(x, 0.1, jax.random.key(4)), out)
    assert dropout(x, 0.1, None) is x and dropout(x, 0.0, key) is x
