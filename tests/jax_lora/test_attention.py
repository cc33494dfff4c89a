"""Attention maps of the Flax BERT (encode(attention_maps=True)), which the app draws as
heat-maps: keras-hub's attention scores on a tiny random preset, with padding in the batch,
and what a map has to be whatever adapters, stored base and compute dtype a run used."""

import jax
import numpy as np
import pytest
from flax import nnx

from jax_lora.lora import LORA_TARGETS, LoraConfig, merge_lora
from jax_lora.models import set_compute_dtype
from jax_lora.weights import load_pretrained

TOLERANCE = 1e-5
PLAIN = LoraConfig(targets=())


@pytest.fixture(scope="module")
def keras_attention(keras_reference, make_vocabulary, tmp_path_factory):
    """(tiny keras preset, its attention.npz: inputs and keras-hub's scores per layer)."""
    root = tmp_path_factory.mktemp("attention")
    keras_reference("attention", root, make_vocabulary(root / "vocabulary.txt", lowercase=False))
    return str(root / "tiny_keras"), dict(np.load(root / "attention.npz"))


@pytest.fixture(scope="module")
def inputs(keras_attention):
    return {name: keras_attention[1][name] for name in ("token_ids", "segment_ids",
                                                        "padding_mask")}


@nnx.jit(static_argnames="cls_only")
def encode_with_maps(model, inputs, cls_only=False):
    return model.encode(inputs["token_ids"], inputs["segment_ids"], inputs["padding_mask"],
                        cls_only=cls_only, attention_maps=True)


def maps_of(model, inputs) -> np.ndarray:
    """[layers, B, heads, T, T]."""
    return np.stack(encode_with_maps(model, inputs)["attention_maps"])


def real_queries(inputs) -> np.ndarray:
    """[1, B, 1, T, 1]: which query rows are real tokens, to broadcast over maps_of."""
    return inputs["padding_mask"].astype(bool)[None, :, None, :, None]


def real_keys(inputs) -> np.ndarray:
    """[1, B, 1, 1, T]: which key columns are real tokens."""
    return inputs["padding_mask"].astype(bool)[None, :, None, None, :]


def assert_probabilities(maps, inputs):
    """Finite everywhere, real rows sum to 1, padded key columns exactly 0 (in every row)."""
    assert np.isfinite(maps).all()
    row_error = np.abs(maps.sum(axis=-1, keepdims=True) - 1.0)
    assert row_error[np.broadcast_to(real_queries(inputs), row_error.shape)].max() <= 1e-6
    assert (maps[np.broadcast_to(~real_keys(inputs), maps.shape)] == 0).all()


def test_maps_equal_keras_hub_attention_scores(keras_attention, inputs):
    preset, reference = keras_attention
    lengths = inputs["padding_mask"].sum(axis=1)
    assert len(set(lengths)) == 4 and lengths.max() == 16  # padding of several widths, one full
    out = encode_with_maps(load_pretrained(preset, PLAIN).model, inputs)
    assert [m.shape for m in out["attention_maps"]] == [(4, 2, 16, 16)] * 2
    assert {m.dtype for m in out["attention_maps"]} == {np.dtype("float32")}
    maps, scores = np.stack(out["attention_maps"]), reference["scores"]
    rows = np.broadcast_to(real_queries(inputs), maps.shape)
    # Far from uniform over the real keys, so a 1e-5 match says something.
    uniform = 1.0 / lengths[None, :, None, None, None]
    assert np.abs(scores - uniform)[rows & real_keys(inputs)].max() > 0.1
    assert np.abs(maps - scores)[rows].max() <= TOLERANCE
    assert_probabilities(maps, inputs)


def test_attention_path_gives_the_training_paths_logits(keras_attention, inputs):
    """The maps come beside the forward pass, not instead of it; cls_only (the last layer for
    [CLS] alone) does not cut them."""
    model = load_pretrained(keras_attention[0], PLAIN).model
    # A unit-scale head: BERT's 0.02 init gives ~0.05 logits, where 1e-5 would bound little.
    model.head.kernel[...] = jax.random.normal(jax.random.key(0), model.head.kernel.shape)
    full, short = encode_with_maps(model, inputs), encode_with_maps(model, inputs, cls_only=True)
    training_logits = nnx.jit(lambda m: m(inputs["token_ids"], inputs["segment_ids"],
                                          inputs["padding_mask"]))(model)
    assert np.abs(training_logits).max() > 1.0
    np.testing.assert_allclose(full["logits"], training_logits, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(short["logits"], training_logits, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.stack(short["attention_maps"]),
                               np.stack(full["attention_maps"]), atol=TOLERANCE, rtol=0)


def set_random_b(model, seed: int) -> None:
    """Trained-looking adapters: every lora_b nonzero."""
    for index, (_, module) in enumerate(nnx.iter_modules(model)):
        if hasattr(module, "lora_b"):
            key = jax.random.fold_in(jax.random.key(seed), index)
            module.lora_b[...] = 0.2 * jax.random.normal(key, module.lora_b.shape)


@pytest.mark.parametrize("dora,base_dtype", [(False, "float32"), (True, "nf4")])
def test_maps_follow_adapters_and_stored_base(keras_attention, inputs, dora, base_dtype):
    """At B = 0 the adapted model's maps are its base's; with B nonzero they are those of the
    plain model the adapters merge into (merge_lora, which also dequantizes the base)."""
    preset = keras_attention[0]
    lora = LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS, dora=dora)
    base = maps_of(load_pretrained(preset, PLAIN, base_dtype=base_dtype).model, inputs)
    model = load_pretrained(preset, lora, base_dtype=base_dtype).model
    np.testing.assert_allclose(maps_of(model, inputs), base, atol=TOLERANCE, rtol=0)
    set_random_b(model, seed=7)
    adapted = maps_of(model, inputs)
    assert np.abs(adapted - base).max() > 0.01
    np.testing.assert_allclose(adapted, maps_of(merge_lora(model), inputs), atol=TOLERANCE,
                               rtol=0)
    assert_probabilities(adapted, inputs)


def test_bfloat16_compute_gives_float32_probabilities(keras_attention, inputs):
    """The products round to bfloat16, the softmax stays float32: rows still sum to 1 and
    padded keys are still exactly 0, the maps within bfloat16 rounding of float32's."""
    model = load_pretrained(keras_attention[0], PLAIN).model
    float32 = maps_of(model, inputs)
    set_compute_dtype(model, "bfloat16")
    bfloat16 = maps_of(model, inputs)
    assert bfloat16.dtype == np.float32
    difference = np.abs(bfloat16 - float32).max()
    assert 1e-4 < difference < 0.02, difference
    assert_probabilities(bfloat16, inputs)


def test_maps_refuse_a_dropout_key(keras_attention, inputs):
    model = load_pretrained(keras_attention[0], PLAIN).model
    with pytest.raises(ValueError, match="attention_maps=True.*no dropout_key"):
        model.encode(inputs["token_ids"], inputs["segment_ids"], inputs["padding_mask"],
                     dropout_key=jax.random.key(0), attention_maps=True)
