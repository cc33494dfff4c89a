"""Bottleneck adapters (jax_lora/tuners/bottleneck.py), Houlsby and Pfeiffer. The count
against the formula, the frozen base, step 0 = the base model, the placement against a
transcription of the `adapters` library's (AdapterHub) code (it does not install here without
downgrading transformers), the refusals (merge, PEFT export) and a run of train.py."""

import jax
import numpy as np
import pytest
from flax import nnx

from jax_lora.models import BertConfig
from jax_lora.peft_format import save_peft
from jax_lora.tuners import TunerConfig, Tuning, merge_model
from jax_lora.weights import load_pretrained
from tests.jax_lora.helpers import assert_reloads_to_its_predictions, logits
from tests.jax_lora.trainer_process import train
from tests.jax_lora.tuners.tuner_helpers import (PROBE, abstract_counts,
                                                 assert_only_trainable_leaves_move, randomize,
                                                 sample_batch, train_steps)

MINILM = BertConfig(vocab_size=30522, hidden_dim=384, num_layers=6, num_heads=12,
                    intermediate_dim=1536)
SETUPS = {name: Tuning("bottleneck", TunerConfig(bottleneck_config=name, reduction_factor=4))
          for name in ("houlsby", "pfeiffer")}

# ---------------------------------------------------------------- AdapterHub, transcribed
# The fields of adapters' DoubleSeqBnConfig (houlsby) and SeqBnConfig (pfeiffer) that decide
# where the adapter sits (adapters/configuration/adapter_config.py); both keep BnConfig's
# ln_before=ln_after=False, adapter_residual_before_ln=False, scaling 1.0, dropout 0.
ADAPTERHUB = {"houlsby": {"mh_adapter": True, "output_adapter": True,
                          "original_ln_before": False, "original_ln_after": True,
                          "residual_before_ln": True, "non_linearity": jax.nn.silu},  # swish
              "pfeiffer": {"mh_adapter": False, "output_adapter": True,
                           "original_ln_before": True, "original_ln_after": True,
                           "residual_before_ln": True, "non_linearity": jax.nn.relu}}


def bottleneck_layer_forward(config, adapter, hidden_states, input_tensor, layer_norm):
    """adapters' BottleneckLayer.bottleneck_layer_forward with one adapter: Adapter.pre_forward,
    Adapter.forward, Adapter.post_forward (adapters/methods/modeling.py), line by line."""
    if config["residual_before_ln"] is True:
        residual = hidden_states
    if config["original_ln_before"]:
        hidden_states = layer_norm(hidden_states + input_tensor)
    if not config["residual_before_ln"]:
        residual = hidden_states
    down = config["non_linearity"](hidden_states @ adapter.down_kernel[...]
                                   + adapter.down_bias[...])
    output = down @ adapter.up_kernel[...] + adapter.up_bias[...]
    output = output + residual  # adapter_residual_before_ln=False and no ln_after
    if config["original_ln_after"]:
        output = layer_norm(output + input_tensor)
    return output


def adapterhub_layer(layer, x, mask, config):
    """BertLayer as the adapters library runs it (BertSelfOutputWithAdapters and
    BertOutputWithAdapters: dense, dropout (none here), bottleneck_layer_forward), built
    from our layer's own base modules."""
    attended = layer.attention(x, mask, None)
    if config["mh_adapter"]:
        x = bottleneck_layer_forward(config, layer.attention_adapter, attended, x,
                                     layer.attention_layer_norm)
    else:
        x = layer.attention_layer_norm(attended + x)
    out = layer.ffn_out(jax.nn.gelu(layer.ffn_in(x), approximate=layer.approximate_gelu))
    return bottleneck_layer_forward(config, layer.ffn_adapter, out, x, layer.ffn_layer_norm)


# ---------------------------------------------------------------- tests

@pytest.fixture(scope="module")
def batch(tiny_hf_preset):
    return sample_batch(tiny_hf_preset)


def adapter_model(preset, name, seed=0):
    model = load_pretrained(str(preset), PROBE, tuning=SETUPS[name]).model
    randomize(model, seed)
    return model


def test_count_is_the_formula(tiny_config):
    """Per adapter 2·H·m + m + H, m = H // reduction_factor (at least 1); two per layer
    (houlsby) or one (pfeiffer)."""
    family = SETUPS["houlsby"].family
    assert family.count(MINILM, TunerConfig(), "mean") == 226_080
    assert family.count(MINILM, TunerConfig(bottleneck_config="pfeiffer"), "mean") == 113_040
    h, layers = tiny_config.hidden_dim, tiny_config.num_layers
    for name, per_layer in (("houlsby", 2), ("pfeiffer", 1)):
        m = h // 4
        formula = layers * per_layer * (2 * h * m + m + h)
        assert family.count(tiny_config, SETUPS[name].config, "cls") == formula
        assert abstract_counts(tiny_config, SETUPS[name], "cls")["trainable"] == \
            formula + h * 3 + 3
    wide = TunerConfig(reduction_factor=1000.0)  # AdapterHub's floor of one unit
    assert family.count(tiny_config, wide, "cls") == layers * 2 * (2 * h + 1 + h)


@pytest.mark.parametrize("name", list(SETUPS))
def test_steps_move_only_the_adapters_and_head(tiny_hf_preset, name):
    model = load_pretrained(str(tiny_hf_preset), PROBE, tuning=SETUPS[name]).model
    result = train_steps(model, "bottleneck")
    assert_only_trainable_leaves_move(result)
    places = ("attention_adapter", "ffn_adapter") if name == "houlsby" else ("ffn_adapter",)
    expected = {f"layers.{i}.{place}.{leaf}" for i in range(2) for place in places
                for leaf in ("down_kernel", "down_bias", "up_kernel", "up_bias")}
    assert {n for n, t in result.trains.items() if t} == expected | {"head.kernel", "head.bias"}


@pytest.mark.parametrize("name", list(SETUPS))
def test_step_0_is_the_base_model(tiny_hf_preset, batch, name):
    """The up-projection starts at zero: the adapters are the identity."""
    model = load_pretrained(str(tiny_hf_preset), PROBE, tuning=SETUPS[name]).model
    base = load_pretrained(str(tiny_hf_preset), PROBE).model
    nnx.update(base, nnx.state(model, nnx.PathContains("head")))
    assert not np.any(model.layers[0].ffn_adapter.up_kernel[...])
    assert np.any(model.layers[0].ffn_adapter.down_kernel[...])
    np.testing.assert_allclose(logits(model, batch), logits(base, batch), atol=1e-6)


@pytest.mark.parametrize("name", list(SETUPS))
def test_placement_is_adapterhubs(tiny_hf_preset, batch, name):
    """Every layer's output, and the logits, equal the transcription of AdapterHub's forward
    on the same (trained-like) adapters; and the adapters do change them."""
    model = adapter_model(tiny_hf_preset, name)
    mask = batch["padding_mask"].astype(bool)
    out = model.encode(batch["token_ids"], batch["segment_ids"], mask)
    x = model.embeddings(batch["token_ids"], batch["segment_ids"], None)
    for layer, ours in zip(model.layers, out["hidden_states"]):
        x = adapterhub_layer(layer, x, mask, ADAPTERHUB[name])
        difference = np.abs(np.asarray(ours) - np.asarray(x))[mask].max()
        assert difference <= 1e-5, f"{name}: layer output off by {difference:.1e}"
    pooled = np.tanh(np.asarray(model.pooler(x[:, 0])))
    expected = np.asarray(model.head(pooled))
    difference = np.abs(logits(model, batch) - expected).max()
    print(f"bottleneck ({name}) against AdapterHub's placement: max |Δlogit| {difference:.1e}")
    assert difference <= 1e-5
    base = load_pretrained(str(tiny_hf_preset), PROBE).model
    nnx.update(base, nnx.state(model, nnx.PathContains("head")))
    assert np.abs(logits(base, batch) - expected).max() > 1e-3


def test_merge_and_peft_export_are_refused(tiny_hf_preset, tmp_path):
    model = adapter_model(tiny_hf_preset, "houlsby")
    with pytest.raises(ValueError, match="--method bottleneck: .*nonlinear"):
        merge_model(model)
    with pytest.raises(ValueError, match="--method bottleneck: PEFT has no such adapter type"):
        save_peft(model, tmp_path / "pt", base_model_name_or_path=str(tiny_hf_preset),
                  method="bottleneck")
    assert not (tmp_path / "pt").exists()


def test_a_run_records_its_count_and_reloads(tiny_hf_preset, tmp_path, run_env):
    run_dir = tmp_path / "run"
    train(tiny_hf_preset, run_dir, "--method", "bottleneck", "--lr", "1e-2", env=run_env)
    manifest = assert_reloads_to_its_predictions(run_dir, 1e-5)
    h, m = 32, 32 // 16
    assert manifest["params"]["trainable"] == 2 * 2 * (2 * h * m + m + h) + h * 3 + 3
    assert manifest["config"]["tuner"]["bottleneck_config"] == "houlsby"
