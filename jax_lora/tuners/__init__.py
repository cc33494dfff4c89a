"""The parameter-efficient families beyond LoRA, one module each, and the registry through
which jax_lora uses them (as PEFT gives each tuner a folder and one registry).

    bitfit  the biases of the encoder and pooler (tuners/bitfit.py)
    ia3     (IA)³: learned rescaling of keys, values and FFN activations (tuners/ia3.py)
    prompt  prompt tuning: trainable virtual input embeddings (tuners/prompt.py)
    prefix  prefix tuning: trainable keys and values before every layer's (tuners/prefix.py)
    bottleneck  Houlsby or Pfeiffer bottleneck adapters (tuners/bottleneck.py)

Each is a --method of jax_lora/train.py (config.METHODS adds TUNERS), trained through the same
partitioned optimizer as LoRA: the trainable rule is lora.trainable_filter's (the head, the
pooler as configured, every LoraParam, which includes the TunerParams a family adds) plus the
family's own `trains`. A model built for a family carries `tuning` (Tuning: its name and
settings), from which the adapter, the merge and the PEFT export find the family again.
LoRA, DoRA, full and probe stay in jax_lora/lora.py; adding a family means a module here, its
settings in tuners/config.py and one line in TUNERS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flax import nnx

from jax_lora.lora import LoraConfig, merge_lora
from jax_lora.lora import trainable_filter as lora_trainable_filter
from jax_lora.tuners import bitfit, bottleneck, ia3, prefix, prompt
from jax_lora.tuners.base import Tuner, TunerParam
from jax_lora.tuners.config import TunerConfig

TUNERS: dict[str, Tuner] = {tuner.name: tuner for tuner in (
    bitfit.TUNER, ia3.TUNER, prompt.TUNER, prefix.TUNER, bottleneck.TUNER)}

__all__ = ["TUNERS", "Tuner", "TunerConfig", "TunerParam", "Tuning", "merge_model",
           "trainable_filter", "tuning_for"]


@dataclass(frozen=True)
class Tuning:
    """A family and its settings, as a model built for it carries them (model.tuning).
    Hashable: the jitted init of weights.load_pretrained takes it as a static argument."""
    method: str  # a key of TUNERS
    config: TunerConfig = TunerConfig()

    @property
    def family(self) -> Tuner:
        return TUNERS[self.method]

    def inject(self, model, rngs: nnx.Rngs) -> None:
        """Called by BertClassifier at the end of its construction."""
        if self.family.inject is not None:
            self.family.inject(model, self.config, rngs)

    def after_load(self, model, seed: int) -> None:
        """Called by weights.load_pretrained once the pretrained weights are in place."""
        if self.family.after_load is not None:
            self.family.after_load(model, self.config, seed)

    def to_dict(self) -> dict:
        return {"method": self.method, "config": dataclasses.asdict(self.config)}

    @classmethod
    def from_dict(cls, record: dict) -> "Tuning":
        return cls(record["method"], TunerConfig(**record["config"]))


def tuning_for(method: str, config: TunerConfig = TunerConfig()) -> Tuning | None:
    """The Tuning of --method `method`; None for the methods of jax_lora/lora.py."""
    return Tuning(method, config) if method in TUNERS else None


def trainable_filter(lora: LoraConfig, *, full: bool = False, tuning: Tuning | None = None,
                     pooling: str = "cls") -> nnx.filterlib.Filter:
    """The parameters that train: lora.trainable_filter's (adapters and TunerParams, head and
    pooler as configured; every parameter for `full`), and the base leaves the family of
    `tuning` trains."""
    rule = lora_trainable_filter(lora, full=full)
    if tuning is None or tuning.family.trains is None:
        return rule
    return nnx.Any(rule, tuning.family.trains(tuning.config, pooling))


def merge_model(model):
    """The plain model (float32 kernels, nothing added) that `model` computes: its family's
    merge, LoRA's for a model without one; a one-line ValueError for a family that cannot
    merge."""
    tuning = getattr(model, "tuning", None)
    if tuning is None:
        return merge_lora(model)
    if tuning.family.merge is None:
        raise ValueError(f"--method {tuning.method}: {tuning.family.no_merge}")
    return tuning.family.merge(model)
