"""Flax BERT vs keras-hub (TensorFlow) on the same token ids, fp32: logits, pooled output and
every layer's hidden states within 1e-5. The reason jax_lora can be compared with tf_baseline."""

import numpy as np
import pytest
from flax import nnx

from jax_lora.lora import LoraConfig
from jax_lora.weights import load_pretrained

TOLERANCE = 1e-5


@pytest.mark.parametrize("name", ["tiny_keras", "tiny_hf", "minilm"])
def test_flax_matches_keras_hub(keras_hub_reference, name):
    if name not in keras_hub_reference["presets"]:
        pytest.skip("all-MiniLM-L6-v2 package not installed")
    preset, _ = keras_hub_reference["presets"][name]
    reference = dict(np.load(keras_hub_reference["root"] / f"{name}_outputs.npz"))
    pretrained = load_pretrained(str(preset), LoraConfig(rank=4, targets=("query", "value")))
    if name == "minilm":
        config = pretrained.config
        assert (config.num_layers, config.hidden_dim, config.num_heads) == (6, 384, 12)
    model = pretrained.model
    model.head.kernel[...] = reference["head_kernel"]
    model.head.bias[...] = reference["head_bias"]
    mask = reference["padding_mask"]
    assert len(set(mask.sum(axis=1))) > 3  # rows of different lengths: padding is exercised
    out = nnx.jit(lambda m: m.encode(reference["token_ids"], reference["segment_ids"], mask))(model)
    errors = {field: np.abs(out[field] - reference[field]).max()
              for field in ("logits", "pooled_output", "sequence_output")}
    for layer, hidden in enumerate(out["hidden_states"]):
        errors[f"hidden_{layer}"] = np.abs(hidden - reference["hidden_states"][layer]).max()
    print(name, {k: f"{v:.2e}" for k, v in errors.items()})
    assert np.abs(reference["logits"]).max() > 0.5  # not trivially small
    assert max(errors.values()) <= TOLERANCE, errors
