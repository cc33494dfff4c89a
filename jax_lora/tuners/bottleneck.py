"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021): in every layer a small
MLP, down-projection H -> m, nonlinearity, up-projection m -> H, with a residual around it,
at the end of a sublayer; the encoder, the pooler and the head are frozen (the head trains,
as in every method here).

Placed as the `adapters` library (AdapterHub) places them in BERT: in BertSelfOutput and
BertOutput, after the sublayer's dense and dropout (h below) and before its residual +
LayerNorm with the sublayer's input x (Adapter.pre_forward / forward / post_forward, with
residual_before_ln=True, adapter_residual_before_ln=False, no adapter LayerNorms, scaling 1,
dropout 0, which both configs keep):

    houlsby (DoubleSeqBnConfig: mh_adapter and output_adapter, original_ln_before=False)
        after attention and after the FFN:   LN(x + h + f(h))
    pfeiffer (SeqBnConfig: output_adapter only, original_ln_before=True)
        after the FFN:   LN(x + h + f(LN(x + h)))   (the sublayer's own LayerNorm, twice)

with f(z) = up(act(down(z))), act swish for houlsby and relu for pfeiffer (the configs'
non_linearity), m = max(1, int(H // reduction_factor)) (BottleneckLayer.add_adapter). The
up-projection starts at zero, so step 0 is the base model exactly; the down-projection
starts as AdapterHub's "bert" init, N(0, 0.02) with zero bias. (AdapterHub's "bert" init also
draws the up-projection from N(0, 0.02), so its adapters start near, not at, the identity;
its "mam_adapter" init zeroes it as here.)

Per adapter 2·H·m + m + H parameters; L of them (pfeiffer) or 2·L (houlsby): 113,040 and
226,080 on all-MiniLM-L6-v2 (H 384, m 24). The `adapters` library would downgrade this
environment's transformers (it pins transformers~=4.57), so tests/jax_lora/tuners/
test_bottleneck.py checks the placement against a transcription of those three methods.
Neither merge (the nonlinearity has no place in a plain BERT) nor a PEFT form (PEFT has no
bottleneck adapters) exists; the run's own adapter folder is its export.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_lora.tuners.base import Tuner, TunerParam
from jax_lora.tuners.config import TunerConfig

# Per --bottleneck-config: its AdapterHub non_linearity, whether the adapter reads the
# sublayer's LayerNormed sum (original_ln_before), and the sublayers that get one
# (TransformerLayer.end_sublayer's attribute names: mh_adapter, output_adapter).
CONFIGS = {"houlsby": (jax.nn.silu, False, ("attention_adapter", "ffn_adapter")),
           "pfeiffer": (jax.nn.relu, True, ("ffn_adapter",))}


def width(config, tuner: TunerConfig) -> int:
    """m, the bottleneck width."""
    return max(1, int(config.hidden_dim // tuner.reduction_factor))


class Bottleneck(nnx.Module):
    """One adapter; called by models.TransformerLayer.end_sublayer at the end of its sublayer."""

    def __init__(self, hidden: int, bottleneck: int, setting: str, *, rngs: nnx.Rngs):
        self.setting = setting  # a key of CONFIGS
        self.down_kernel = TunerParam(0.02 * jax.random.normal(rngs.params(), (hidden, bottleneck)))
        self.down_bias = TunerParam(jnp.zeros((bottleneck,)))
        self.up_kernel = TunerParam(jnp.zeros((bottleneck, hidden)))
        self.up_bias = TunerParam(jnp.zeros((hidden,)))

    def __call__(self, output, residual, layer_norm):
        """The sublayer's end with the adapter: `output` the sublayer's (after its dropout),
        `residual` its input, `layer_norm` its LayerNorm."""
        activation, normed_input, _ = CONFIGS[self.setting]
        adapter_input = layer_norm(residual + output) if normed_input else output
        down = activation(adapter_input @ self.down_kernel[...] + self.down_bias[...])
        return layer_norm(residual + output + down @ self.up_kernel[...] + self.up_bias[...])


def inject(model, tuner: TunerConfig, rngs: nnx.Rngs) -> None:
    m = width(model.config, tuner)
    for layer in model.layers:
        for place in CONFIGS[tuner.bottleneck_config][2]:
            setattr(layer, place, Bottleneck(model.config.hidden_dim, m,
                                             tuner.bottleneck_config, rngs=rngs))


def count(config, tuner: TunerConfig, pooling: str) -> int:
    h, m = config.hidden_dim, width(config, tuner)
    return config.num_layers * len(CONFIGS[tuner.bottleneck_config][2]) * (2 * h * m + m + h)


TUNER = Tuner(name="bottleneck",
              summary="bottleneck adapters after attention and FFN (Houlsby) or FFN (Pfeiffer) "
                      "+ head",
              # Pfeiffer et al. (AdapterHub, AdapterFusion) train adapters at 1e-4, five times
              # full fine-tuning's rate here and half LoRA's.
              defaults={"lr": 1e-4, "adam_epsilon": 1e-8, "keras_epsilon": False},
              inject=inject, count=count,
              no_merge="bottleneck adapters add a nonlinear MLP to every layer, for which a plain "
                       "BERT has no place, and PEFT has no such adapter type; the run's adapter "
                       "folder (python -m jax_lora.inference) is its only form")
