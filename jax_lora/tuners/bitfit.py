"""BitFit (Ben Zaken et al., 2022): only the bias terms of the pretrained model train, with
the fresh head.

"Bias terms" as the paper's BERT equations and its code's `all` setting (every parameter whose
name holds "bias"): the biases of the query, key, value, attention-output and both FFN
projections, of both LayerNorms of every layer and of the embeddings' LayerNorm (LayerNorm's
additive beta), and of the pooler when the head reads it (--pooling cls). Per BERT layer
that is 4·H (attention projections) + I + H (FFN) + 2·H (LayerNorms) = 7·H + I; in all
L·(7·H + I) + H, + H for the pooler: 25,728 on all-MiniLM-L6-v2 (mean pooling), 26,112 with
cls pooling, besides the head. No parameter is added, so the trained model is a plain model
(it merges by being one). PEFT has no BitFit; its LoRA `bias="all"` trains the same leaves
(every parameter named "bias") beside the adapters.
"""

from __future__ import annotations

from flax import nnx

from jax_lora.lora import merge_lora
from jax_lora.tuners.base import Tuner


def trains(tuner, pooling: str) -> nnx.filterlib.Filter:
    """Every bias leaf; the pooler's only when cls pooling reads the pooler."""
    def is_bias(path, value) -> bool:
        return path[-1] == "bias" and (pooling == "cls" or "pooler" not in path)
    return nnx.All(nnx.Param, is_bias)


def count(config, tuner, pooling: str) -> int:
    pooler = config.hidden_dim if pooling == "cls" and config.architecture == "bert" else 0
    per_layer = 7 * config.hidden_dim + config.intermediate_dim
    return config.num_layers * per_layer + config.hidden_dim + pooler


TUNER = Tuner(name="bitfit", summary="the biases of the encoder (and pooler) + head",
              defaults={"lr": 1e-3, "adam_epsilon": 1e-8, "keras_epsilon": False},
              # Its biases are the base's own leaves: merge_lora only dequantizes a stored base.
              trains=trains, count=count, merge=merge_lora)
