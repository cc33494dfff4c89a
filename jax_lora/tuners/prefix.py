"""Prefix tuning, P-tuning v2 style (Li & Liang, 2021; Liu et al., 2022, "P-Tuning v2"): P
trainable keys and values put before the text's own in every layer's attention; the encoder,
the pooler and the head are frozen (the head trains, as in every method here).

Exactly as PEFT 0.21.2 feeds PREFIX_TUNING to BertForSequenceClassification
(PeftModelForSequenceClassification._prefix_tuning_forward): the prefixes are
past_key_values, a DynamicCache holding per layer keys and values [B, heads, P, head_dim],
which BertSelfAttention concatenates before the text's projected keys and values (they skip
the key and value projections); the attention mask gets P ones in front (every row attends to
every prefix); queries and hidden states are the text's T rows only, so [CLS] is row 0 and
mean pooling averages the text's tokens as without a prefix. Positions: BertEmbeddings counts
the cached prefix (past_key_values_length = P), so the text takes positions P..P+T-1, not
0..T-1, as in P-tuning v2's own code; --sequence-length + P must fit the position table.

The prefixes are one table [P, L·2·H] (PEFT's PrefixEncoder.embedding, laid out as PEFT
views it: layer, key/value, head, head_dim), P·L·2·H parameters: 92,160 for 20 tokens on
all-MiniLM-L6-v2. --prefix-projection trains them through PEFT's reparameterisation MLP
instead: embedding [P, H] -> Linear(H, E) -> tanh -> Linear(E, L·2·H), E = --prefix-hidden-size
(default H): P·H + H·E + E + E·L·2·H + L·2·H parameters (1,929,600 on MiniLM). Both start as
PEFT's (init_weights None): the embedding N(0, 1), the Linears torch's U(±1/√fan_in).

PEFT's format: peft_type PREFIX_TUNING, the table as `prompt_embeddings` [P, L·2·H] (with the
MLP, its output: PEFT saves get_prompt_embedding_to_save, never the MLP), the head under
base_model.classifier.* as prompt tuning's. A PEFT adapter read back is therefore always the
plain table. It cannot merge: a plain BERT has no place for the prefixes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jax_lora.tuners import prompt
from jax_lora.tuners.base import PeftFormat, Tuner, TunerParam
from jax_lora.tuners.config import TunerConfig


def _torch_linear(rngs: nnx.Rngs, d_in: int, d_out: int) -> tuple[TunerParam, TunerParam]:
    """torch.nn.Linear's start (kaiming_uniform a=√5 and its bias rule): U(±1/√d_in), as
    kernel [d_in, d_out] and bias [d_out]."""
    bound = 1.0 / d_in ** 0.5
    return (TunerParam(jax.random.uniform(rngs.params(), (d_in, d_out), minval=-bound,
                                          maxval=bound)),
            TunerParam(jax.random.uniform(rngs.params(), (d_out,), minval=-bound, maxval=bound)))


class PrefixEncoder(nnx.Module):
    """PEFT's PrefixEncoder: the prefixes of every layer, directly or through the MLP."""

    def __init__(self, config, tuner: TunerConfig, *, rngs: nnx.Rngs):
        width = config.num_layers * 2 * config.hidden_dim
        self.shape = (tuner.virtual_tokens, config.num_layers, 2, config.num_heads,
                      config.hidden_dim // config.num_heads)
        self.projection = tuner.prefix_projection
        # torch.nn.Embedding's N(0, 1), PEFT's start.
        table = (tuner.virtual_tokens, config.hidden_dim if self.projection else width)
        self.embedding = TunerParam(jax.random.normal(rngs.params(), table))
        if self.projection:
            hidden = tuner.prefix_hidden_size or config.hidden_dim
            self.hidden_kernel, self.hidden_bias = _torch_linear(rngs, config.hidden_dim, hidden)
            self.out_kernel, self.out_bias = _torch_linear(rngs, hidden, width)

    def table(self) -> jax.Array:
        """[P, L·2·H]: PEFT's past_key_values before its view (prompt_embeddings)."""
        if not self.projection:
            return self.embedding[...]
        hidden = jnp.tanh(self.embedding[...] @ self.hidden_kernel[...] + self.hidden_bias[...])
        return hidden @ self.out_kernel[...] + self.out_bias[...]

    def __call__(self) -> jax.Array:
        """Per layer keys and values: [L, 2, P, heads, head_dim]."""
        return self.table().reshape(self.shape).transpose(1, 2, 0, 3, 4)


def inject(model, tuner: TunerConfig, rngs: nnx.Rngs) -> None:
    model.prefix = PrefixEncoder(model.config, tuner, rngs=rngs)


def count(config, tuner: TunerConfig, pooling: str) -> int:
    tokens, h = tuner.virtual_tokens, config.hidden_dim
    width = config.num_layers * 2 * h
    if not tuner.prefix_projection:
        return tokens * width
    hidden = tuner.prefix_hidden_size or h
    return tokens * h + h * hidden + hidden + hidden * width + width


# ---------------------------------------------------------------- PEFT's PREFIX_TUNING format

# Prompt tuning's PromptTuningConfig fields that PrefixTuningConfig does not have; the rest of
# both are PromptLearningConfig's, written by prompt.peft_config.
PROMPT_TUNING_ONLY = ("prompt_tuning_init", "prompt_tuning_init_text", "tokenizer_kwargs",
                      "tokenizer_name_or_path")


def peft_config(model, hf, base_model_name_or_path: str, pooler: bool) -> dict:
    """adapter_config.json as PEFT 0.21.2's PrefixTuningConfig writes it."""
    tuner = model.tuning.config
    shared = {key: value for key, value in prompt.peft_config(
        model, hf, base_model_name_or_path, pooler).items() if key not in PROMPT_TUNING_ONLY}
    return {**shared, "peft_type": "PREFIX_TUNING", "init_weights": None,
            "encoder_hidden_size": tuner.prefix_hidden_size or model.config.hidden_dim,
            "prefix_projection": tuner.prefix_projection}


def peft_arrays(model, arrays: dict) -> dict:
    """The adapter's arrays as PEFT saves them: with the MLP, its output as the table."""
    kept = {name: array for name, array in arrays.items() if not name.startswith("prefix.")}
    return {**kept, "prefix.embedding": model.prefix.table()}


def read_peft(config: dict, hf, source: str) -> tuple:
    """(LoraConfig, TunerConfig) of a PEFT PREFIX_TUNING adapter_config.json: the plain table
    whatever prefix_projection says (the file holds the MLP's output, not the MLP)."""
    lora, tuner = prompt.read_peft(config, hf, source)
    return lora, TunerConfig(virtual_tokens=tuner.virtual_tokens)


def peft_key(hf, name: str) -> str:
    return "prompt_embeddings" if name == "prefix.embedding" else prompt.peft_key(hf, name)


TUNER = Tuner(name="prefix", summary="key/value prefixes in every layer (prefix tuning) + head",
              # P-tuning v2 trains BERT-size prefixes at 5e-3 to 1e-2, PEFT's prefix-tuning
              # sequence-classification example at 1e-2: the prefixes start at N(0, 1).
              defaults={"lr": 1e-2, "adam_epsilon": 1e-8, "keras_epsilon": False},
              inject=inject, count=count, check=prompt.check,
              no_merge="prefix tuning adds keys and values to every layer's attention, for "
                       "which a plain BERT has no place; export it in PEFT's format (python -m "
                       "jax_lora.peft_format)",
              peft=PeftFormat(peft_type="PREFIX_TUNING", config=peft_config, read=read_peft,
                              key=peft_key, arrays=peft_arrays))
