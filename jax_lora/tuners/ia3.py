"""(IA)³ (Liu et al., 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper
than In-Context Learning"): learned vectors rescale the keys, the values and the FFN's
intermediate activations (l_k ⊙ K, l_v ⊙ V, l_ff ⊙ γ(W₁x)), each starting at 1, so step 0 is
the base model.

As PEFT's IA3 (peft/tuners/ia3/layer.py), a target projection's output is rescaled,
y = (x W + b) ⊙ l with l [d_out]; a feedforward one's input, y = (x ⊙ l) W + b with l [d_in].
ffn_out's input is the FFN's GELU output, so the defaults (key, value; ffn_out feedforward)
are the paper's three vectors: L·(2·H + I) parameters, 13,824 on all-MiniLM-L6-v2. PEFT's
default for BERT (target_modules key, value, output.dense; feedforward_modules output.dense)
also rescales the attention context, because "output.dense" ends attention.output.dense as
well: that is --ia3-targets key,value,attention_output,ffn_out --ia3-feedforward
attention_output,ffn_out here.

`ia3_l` is shaped to broadcast over our [d_in, d_out] kernel: [1, d_out] for an output scale,
[d_in, 1] for an input scale, the transpose of PEFT's [d_out, 1] / [1, d_in], as our kernels
are of torch's. It merges as PEFT merges it: W ⊙ l (and b ⊙ l for an output scale).
"""

from __future__ import annotations

import re

import jax.numpy as jnp
from flax import nnx

from jax_lora.lora import LoraConfig, LoRALinear, merge_lora
from jax_lora.peft_names import (HF_TARGETS, PEFT_FORMAT_VERSION, POOLER_MODULE, SEQ_CLS_MODULES,
                                 TARGET_PATHS, lora_from_peft)
from jax_lora.tuners.base import PeftFormat, Tuner, TunerParam
from jax_lora.tuners.config import TunerConfig
from jax_lora.weights import module_at


class IA3Linear(LoRALinear):
    """A projection (a plain LoRALinear: no LoRA adapter) whose output, or input when
    `feedforward`, is rescaled by the learned `ia3_l`."""

    def __init__(self, in_features: int, out_features: int, *, feedforward: bool,
                 rngs: nnx.Rngs):
        super().__init__(in_features, out_features, rngs=rngs)
        self.feedforward = feedforward
        shape = (in_features, 1) if feedforward else (1, out_features)
        self.ia3_l = TunerParam(jnp.ones(shape, jnp.float32))

    def __call__(self, x, *, dropout_key=None):
        scale = self.ia3_l[...].reshape(-1)
        if self.feedforward:
            return super().__call__(x * scale)
        return super().__call__(x) * scale

    def merged_kernel(self):
        return super().merged_kernel() * self.ia3_l[...]

    def merged_bias(self):
        return self.bias[...] if self.feedforward else self.bias[...] * self.ia3_l[...][0]


def projections() -> dict:
    """{our target name: its module path inside layers/<i>}, jax_lora.peft_names' table."""
    return {target: tuple(path.split("/")) for target, path in TARGET_PATHS.items()}


def inject(model, tuner: TunerConfig, rngs: nnx.Rngs) -> None:
    """Each target projection of every layer becomes an IA3Linear of the same shape (its
    kernel and bias keep their paths, so the pretrained weights load into it)."""
    paths = projections()
    for layer in model.layers:
        for target in tuner.ia3_targets:
            *parent, name = paths[target]
            owner = module_at(layer, tuple(parent))
            d_in, d_out = getattr(owner, name).kernel_shape
            setattr(owner, name, IA3Linear(d_in, d_out, rngs=rngs,
                                           feedforward=target in tuner.ia3_feedforward))


def count(config, tuner: TunerConfig, pooling: str) -> int:
    """L · Σ over targets of d_in (feedforward) or d_out."""
    h, inner = config.hidden_dim, config.intermediate_dim
    shapes = {"query": (h, h), "key": (h, h), "value": (h, h), "attention_output": (h, h),
              "ffn_in": (h, inner), "ffn_out": (inner, h)}
    return config.num_layers * sum(shapes[t][0] if t in tuner.ia3_feedforward else shapes[t][1]
                                   for t in tuner.ia3_targets)


def merge(model):
    """The plain model: every IA3Linear's kernel W ⊙ l, and its bias b ⊙ l when it scales
    outputs (lora.merge_lora builds the model and folds the kernels; the biases here)."""
    merged = merge_lora(model)
    for path, module in nnx.iter_modules(model):
        if isinstance(module, IA3Linear):
            # set_value, not bias[...] =: a loaded bias may be a numpy array that the merged
            # model shares with `model`, which an in-place write would change too.
            module_at(merged, path).bias.set_value(module.merged_bias())
    return merged


# ---------------------------------------------------------------- PEFT's IA3 format

# Every field PEFT 0.21.2's IA3Config.to_dict writes (peft/tuners/ia3/config.py).
PEFT_IA3_FIELDS = {"auto_mapping", "base_model_name_or_path", "exclude_modules",
                   "fan_in_fan_out", "feedforward_modules", "inference_mode", "init_ia3_weights",
                   "modules_to_save", "peft_type", "peft_version", "revision",
                   "target_modules", "task_type"}


def peft_config(model, hf, base_model_name_or_path: str, pooler: bool) -> dict:
    """adapter_config.json as PEFT writes it for the model's (IA)³ settings."""
    tuner = model.tuning.config
    return {"auto_mapping": None, "base_model_name_or_path": base_model_name_or_path,
            "exclude_modules": None, "fan_in_fan_out": False,
            "feedforward_modules": hf.target_modules(tuner.ia3_feedforward) if
            tuner.ia3_feedforward else [], "inference_mode": True, "init_ia3_weights": True,
            "modules_to_save": [POOLER_MODULE] * pooler + SEQ_CLS_MODULES,
            "peft_type": "IA3", "peft_version": PEFT_FORMAT_VERSION, "revision": None,
            "target_modules": hf.target_modules(tuner.ia3_targets), "task_type": "SEQ_CLS"}


def read_peft(config: dict, hf, source: str) -> tuple[LoraConfig, TunerConfig]:
    """(LoraConfig, TunerConfig) of a PEFT IA3 adapter_config.json on the classifier `hf`: the
    projections target_modules selects and which of them feedforward_modules makes input
    scales, each a whole kind of projection in every layer."""
    unknown = sorted(set(config) - PEFT_IA3_FIELDS)
    if unknown:
        raise ValueError(f"{source}: field {unknown[0]} is not one of PEFT's IA3Config")
    if config.get("fan_in_fan_out") or config.get("exclude_modules"):
        field = "fan_in_fan_out" if config.get("fan_in_fan_out") else "exclude_modules"
        raise ValueError(f"{source}: {field}={config[field]!r}: jax_lora does not support it")
    # PEFT's rules for target_modules and modules_to_save are LoRA's (tuners_utils).
    targets = lora_from_peft(config, hf, source)
    feedforward = config.get("feedforward_modules") or []
    chosen = []
    for target in targets.targets:
        modules = sorted(hf.layer_modules([target]))
        marked = [_feedforward(feedforward, name) for name in modules]
        if any(marked) != all(marked):
            raise ValueError(f"{source}: feedforward_modules={feedforward!r} marks "
                             f"{HF_TARGETS[target]} in some layers only; jax_lora scales a "
                             f"projection the same way in every layer")
        chosen += [target] * marked[0]
    tuner = TunerConfig(ia3_targets=targets.targets, ia3_feedforward=tuple(chosen))
    return LoraConfig(targets=(), train_pooler=targets.train_pooler), tuner


def _feedforward(feedforward, name: str) -> bool:
    """PEFT's IA3Model._check_target_module_feedforward: a regex full match, or a name ending
    with an entry (no dot boundary)."""
    if isinstance(feedforward, str):
        return re.fullmatch(feedforward, name) is not None
    return any(name.endswith(entry) for entry in feedforward)


TUNER = Tuner(name="ia3", summary="(IA)³ vectors rescaling keys, values, FFN activations + head",
              # The paper's rate is 3e-3 (T-Few, with Adafactor); PEFT's examples use 1e-3
              # to 3e-3 with AdamW: vectors around 1 need larger steps than LoRA's factors.
              defaults={"lr": 3e-3, "adam_epsilon": 1e-8, "keras_epsilon": False},
              inject=inject, count=count, merge=merge,
              peft=PeftFormat(peft_type="IA3", config=peft_config, read=read_peft))
