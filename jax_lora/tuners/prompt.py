"""Prompt tuning (Lester et al., 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning"): P trainable embeddings, "virtual tokens", put before every row's token embeddings;
the encoder, the pooler and the head are frozen (the head trains, as in every method here).

Exactly as PEFT's PromptEmbedding reaches BertForSequenceClassification
(PeftModelForSequenceClassification.forward): the virtual tokens replace word embeddings at
positions 0..P-1, so the text's tokens move to positions P..P+T-1; they get segment 0 and
attention mask 1; they pass through the embeddings' LayerNorm and dropout like any token
(models.Embeddings). The head reads row 0, which is now the first virtual token: that is what
BertModel's pooler (hidden_states[:, 0]) reads under PEFT, so cls pooling here means that row.
Mean pooling (no PEFT counterpart: BertForSequenceClassification has none) averages the
text's tokens only, as sentence-transformers defines it over the text. P·H parameters:
7,680 for 20 tokens on all-MiniLM-L6-v2. --sequence-length + P must fit the position table.

PEFT's format: peft_type PROMPT_TUNING, the table as `prompt_embeddings` [P, H], and the head
under base_model.classifier.* (no LoraModel between PeftModel and the classifier). It cannot
merge: a plain BERT has no place for the virtual tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_lora.lora import LoraConfig
from jax_lora.peft_names import (PEFT_FORMAT_VERSION, POOLER_MODULE, PREFIX, SEQ_CLS_MODULES,
                                 saves_pooler)
from jax_lora.tuners.base import PeftFormat, Tuner, TunerParam
from jax_lora.tuners.config import TunerConfig

PEFT_INITS = {"vocab": "SAMPLE_VOCAB", "random": "RANDOM"}


class PromptEmbedding(nnx.Module):
    """The virtual tokens' embeddings, [P, H] (PEFT's PromptEmbedding.embedding.weight)."""

    def __init__(self, length: int, hidden: int, *, rngs: nnx.Rngs):
        # PEFT's RANDOM start: torch.nn.Embedding's N(0, 1); "vocab" replaces it after loading.
        self.embedding = TunerParam(jax.random.normal(rngs.params(), (length, hidden)))

    def __call__(self) -> jax.Array:
        return self.embedding[...]


def inject(model, tuner: TunerConfig, rngs: nnx.Rngs) -> None:
    model.prompt = PromptEmbedding(tuner.virtual_tokens, model.config.hidden_dim, rngs=rngs)


def after_load(model, tuner: TunerConfig, seed: int) -> None:
    """--prompt-init vocab: rows of the pretrained word embedding at token ids drawn uniformly
    from the whole vocabulary (PEFT's SAMPLE_VOCAB draws them with torch's generator)."""
    if tuner.prompt_init != "vocab":
        return
    table = np.asarray(model.embeddings.token_embedding.embedding.get_value())
    ids = np.random.default_rng(seed).integers(0, table.shape[0], tuner.virtual_tokens)
    model.prompt.embedding.set_value(jnp.asarray(table[ids]))


def count(config, tuner: TunerConfig, pooling: str) -> int:
    return tuner.virtual_tokens * config.hidden_dim


def check(config, tuner: TunerConfig, sequence_length: int) -> None:
    if sequence_length + tuner.virtual_tokens > config.max_sequence_length:
        raise ValueError(f"--sequence-length {sequence_length}: with --virtual-tokens "
                         f"{tuner.virtual_tokens} the rows need {sequence_length + tuner.virtual_tokens}"
                         f" positions, the model has {config.max_sequence_length}; pass "
                         f"--sequence-length {config.max_sequence_length - tuner.virtual_tokens}"
                         f" or less")


# ---------------------------------------------------------------- PEFT's PROMPT_TUNING format

PEFT_PREFIX = "base_model."  # PeftModel > the ...ForSequenceClassification itself


def peft_key(hf, name: str) -> str:
    """Our flat name -> PEFT's: the table is `prompt_embeddings`; the head and pooler keep
    their module names under base_model. (no LoraModel's `.model` between)."""
    if name == "prompt.embedding":
        return "prompt_embeddings"
    return PEFT_PREFIX + hf.key(name)[len(PREFIX):]


def peft_config(model, hf, base_model_name_or_path: str, pooler: bool) -> dict:
    """adapter_config.json as PEFT 0.21.2's PromptTuningConfig writes it."""
    tuner, config = model.tuning.config, model.config
    return {"auto_mapping": None, "base_model_name_or_path": base_model_name_or_path,
            "inference_mode": True, "modules_to_save": [POOLER_MODULE] * pooler
            + SEQ_CLS_MODULES, "num_attention_heads": config.num_heads,
            "num_layers": config.num_layers, "num_transformer_submodules": 1,
            "num_virtual_tokens": tuner.virtual_tokens, "peft_type": "PROMPT_TUNING",
            "peft_version": PEFT_FORMAT_VERSION,
            "prompt_tuning_init": PEFT_INITS[tuner.prompt_init], "prompt_tuning_init_text": None,
            "revision": None, "task_type": "SEQ_CLS", "token_dim": config.hidden_dim,
            "tokenizer_kwargs": None, "tokenizer_name_or_path": None}


def read_peft(config: dict, hf, source: str) -> tuple[LoraConfig, TunerConfig]:
    """(LoraConfig, TunerConfig) of a PEFT PROMPT_TUNING adapter_config.json."""
    if config.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{source}: num_transformer_submodules="
                         f"{config['num_transformer_submodules']!r}: an encoder has one")
    tokens = config.get("num_virtual_tokens")
    if not isinstance(tokens, int) or tokens < 1:
        raise ValueError(f"{source}: num_virtual_tokens={tokens!r}: must be an integer >= 1")
    init = "random" if config.get("prompt_tuning_init") != "SAMPLE_VOCAB" else "vocab"
    tuner = TunerConfig(virtual_tokens=tokens, prompt_init=init)
    return LoraConfig(targets=(), train_pooler=saves_pooler(config, hf, source)), tuner


TUNER = Tuner(name="prompt", summary="virtual input tokens (prompt tuning) + head",
              # PEFT's prompt-tuning examples train at 3e-2 (Lester et al. used 0.3 with
              # Adafactor): the embeddings start at N(0, 1) or word-embedding scale and must
              # move far.
              defaults={"lr": 3e-2, "adam_epsilon": 1e-8, "keras_epsilon": False},
              inject=inject, after_load=after_load, count=count, check=check,
              no_merge="prompt tuning adds virtual input tokens, for which a plain BERT has no "
                       "place; export it in PEFT's format (python -m jax_lora.peft_format)",
              peft=PeftFormat(peft_type="PROMPT_TUNING", config=peft_config, read=read_peft,
                              key=peft_key))
