"""A frozen base stored in fewer bits (the QLoRA idea), dequantized inside each matmul.

`--base-dtype` says how the frozen Dense kernels of the encoder (query, key, value, attention
output, FFN in/out) and the pooler are stored (float32, bfloat16, int8 or nf4: the formats are
in quant_codec.py); embeddings, LayerNorms, biases, adapters and the head stay float32.
The stored leaves are QuantCodes/QuantScales variables, not nnx.Param: no trainable filter
selects them, so they get no gradient and no optimizer state; they are written once, by the
loader (weights.assign) or `quantize_base`, through LoRALinear.store_base. The adapter trains
against the dequantized kernel, so a merge or export folds the adapter into that kernel
(LoRALinear.base_kernel), as QLoRA merges into the dequantized weights.

This module works on a model's LoRALinear layers; lora.py itself needs only the formats
(quant_codec.py), so the imports point one way: quant -> lora -> quant_codec.
"""

from __future__ import annotations

from flax import nnx

from jax_lora.lora import LoRALinear
# The formats' names the trainer's config, optimizer and loader take from here: to them a
# --base-dtype is one concept.
from jax_lora.quant_codec import BASE_DTYPES, QuantCodes, QuantScales, quantize  # noqa: F401


def quantized_linears(model, *, pooler: bool = True):
    """(path, LoRALinear) of every projection whose kernel --base-dtype stores: the encoder's
    Dense layers and, with `pooler`, the pooler (never the head)."""
    return [(path, module) for path, module in nnx.iter_modules(model)
            if isinstance(module, LoRALinear) and "head" not in path
            and (pooler or "pooler" not in path)]


def quantize_base(model, base_dtype: str, *, pooler: bool = True) -> None:
    """Store the frozen kernels of `model` (quantized_linears) as `base_dtype`, in place; a
    no-op for float32. `pooler=False` keeps the pooler float32 (when it trains, or is not the
    base's). Call it once the pretrained kernels are loaded; DoRA's magnitudes are then to be
    set again (lora.init_dora_magnitudes), so that step 0 is the stored base."""
    if base_dtype not in BASE_DTYPES:
        raise ValueError(f"base dtype {base_dtype!r}: choose one of {', '.join(BASE_DTYPES)}")
    if base_dtype == "float32":
        return
    for _, module in quantized_linears(model, pooler=pooler):
        module.store_base(base_dtype)


def base_dtype_of(model) -> str:
    """How the encoder's kernels are stored (the --base-dtype the model was prepared with)."""
    return quantized_linears(model, pooler=False)[0][1].base_dtype


def stored_bytes(model) -> dict:
    """Bytes of the frozen projection kernels as stored (codes + scales) and as float32."""
    stored = float32 = 0
    for _, module in quantized_linears(model):
        d_in, d_out = module.kernel_shape
        float32 += 4 * d_in * d_out
        if module.base_dtype == "float32":
            stored += 4 * d_in * d_out
        else:
            stored += module.kernel_codes.get_value().nbytes
            if module.base_dtype != "bfloat16":
                stored += module.kernel_scales.get_value().nbytes
    return {"stored": stored, "float32": float32}
