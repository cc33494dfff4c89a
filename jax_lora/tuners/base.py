"""What a tuner family is to jax_lora (Tuner), and the leaf type of the parameters it adds.

A family is one module of jax_lora/tuners that builds one Tuner and lists it in the registry
(tuners/__init__.py). Everything else reaches the family through the registry: the config
(its --method and defaults), the model (`inject` at construction), the trainable rule, the
count, the merge and the PEFT format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from flax import nnx

from jax_lora.lora import LoraParam


class TunerParam(LoraParam):
    """A parameter a family adds to the base model (an (IA)³ vector, prompt embeddings). A
    LoraParam because every rule for adapter leaves is its rule too: it trains
    (lora.trainable_filter), starts fresh instead of coming from the checkpoint
    (weights.FRESH), is saved in the run's adapter and inherited by --init-from, and has no
    place in the plain model a merge builds (lora.merge_lora)."""


@dataclass(frozen=True)
class PeftFormat:
    """A family's Hugging Face PEFT on-disk form (adapter_config.json + safetensors), which
    jax_lora.peft_format writes and reads for it: the tensors are the adapter's leaves (the
    family's, the head, the pooler) under PEFT's names."""
    peft_type: str  # adapter_config.json's peft_type
    # (model, peft_names.HFClassifier, base_model_name_or_path, pooler) -> adapter_config.json
    config: Callable[..., dict]
    # (adapter_config.json as a dict, HFClassifier, its path for messages) -> (LoraConfig,
    # TunerConfig) of the model it fits; one-line ValueError for what jax_lora cannot hold.
    read: Callable[..., tuple]
    # (HFClassifier, our flat parameter name) -> PEFT's tensor name; None: HFClassifier.key.
    key: Callable[..., str] | None = None
    # (model, {our flat name: array}) -> the arrays PEFT's form holds, when they are not the
    # adapter's own leaves (prefix tuning's MLP: its output alone); None: the leaves.
    arrays: Callable[..., dict] | None = None


@dataclass(frozen=True)
class Tuner:
    name: str  # its --method
    summary: str  # what trains, in a few words (for --help and messages)
    # lr, adam_epsilon, keras_epsilon: the recipe's values where the flags are not given.
    defaults: dict = field(default_factory=lambda: {"lr": 2e-4, "adam_epsilon": 1e-8,
                                                    "keras_epsilon": False})
    # (TunerConfig, pooling) -> filter of the base's own leaves it trains (BitFit's biases);
    # the TunerParam leaves it adds train without it.
    trains: Callable[..., nnx.filterlib.Filter] | None = None
    # (BertClassifier, TunerConfig, nnx.Rngs) -> None: adds its TunerParams or wraps modules,
    # at the end of the model's construction (before the pretrained weights are read).
    inject: Callable[..., None] | None = None
    # (BertClassifier, TunerConfig, seed) -> None: sets what depends on the pretrained
    # weights (prompt tuning's start from word embeddings), once they are read.
    after_load: Callable[..., None] | None = None
    # (BertConfig, TunerConfig, pooling) -> the parameters it trains besides the head and
    # pooler rules of --train-head/--train-pooler: the paper's or PEFT's formula.
    count: Callable[..., int] | None = None
    # (BertConfig, TunerConfig, sequence_length) -> None, or a one-line ValueError.
    check: Callable[..., None] | None = None
    # model -> the plain model it equals (plain float32 kernels, no TunerParam); None: it
    # cannot merge, and `no_merge` says why.
    merge: Callable[..., Any] | None = None
    no_merge: str = ""
    peft: PeftFormat | None = None
