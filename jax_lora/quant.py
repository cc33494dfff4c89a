"""A frozen base stored in fewer bits (the QLoRA idea), dequantized inside each matmul.

`--base-dtype` says how the frozen Dense kernels of the encoder (query, key, value, attention
output, FFN in/out) and the pooler are stored; embeddings, LayerNorms, biases, adapters and the
head stay float32:
- float32: as loaded (the default);
- bfloat16: the kernel rounded to bfloat16 (2 bytes a weight);
- int8: per output channel absmax, W ≈ q · max|W[:, j]| / 127 with q in [-127, 127]
  (1 byte a weight + 4 bytes per output);
- nf4: QLoRA's NormalFloat4 as bitsandbytes stores it: the kernel in torch's [out, in] layout,
  flattened, cut into blocks of 64 weights, each scaled by its absmax and rounded to the
  nearest of 16 levels (the quantiles of a normal distribution, NF4_LEVELS); two 4-bit codes
  per byte, the first in the high nibble (0.5 byte a weight + 4 bytes per block). QLoRA's
  "double quantization" of the block scales (saving 0.37 bit a weight) is not done here.
The stored leaves are QuantCodes/QuantScales variables, not nnx.Param: no trainable filter
selects them, so they get no gradient and no optimizer state; they are written once, by the
loader (weights.assign) or `quantize_base`, through LoRALinear.store_base. The adapter trains against the dequantized kernel, so a merge or export folds the adapter
into that kernel (LoRALinear.base_kernel), as QLoRA merges into the dequantized weights.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
from flax import nnx

BASE_DTYPES = ("float32", "bfloat16", "int8", "nf4")
NF4_BLOCK = 64
# bitsandbytes' NF4 code book (bitsandbytes/functional.py, get_4bit_type("nf4")), code 0..15.
NF4_LEVELS = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
INT8_MAX = 127


class QuantCodes(nnx.Variable):
    """A frozen kernel as stored: bfloat16 values, int8 codes or packed NF4 codes (uint8)."""


class QuantScales(nnx.Variable):
    """The float32 scales of int8 (per output) or NF4 (per block) codes."""


def quantize(kernel: np.ndarray, base_dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(codes, scales) of a float32 [d_in, d_out] kernel; scales is None for bfloat16."""
    kernel = np.asarray(kernel, np.float32)
    if base_dtype == "bfloat16":
        return np.asarray(jnp.asarray(kernel, jnp.bfloat16)), None
    if base_dtype == "int8":
        absmax = np.abs(kernel).max(axis=0)
        scales = np.where(absmax > 0, absmax / INT8_MAX, 1.0).astype(np.float32)
        codes = np.clip(np.rint(kernel / scales), -INT8_MAX, INT8_MAX).astype(np.int8)
        return codes, scales
    if base_dtype == "nf4":
        flat = kernel.T.reshape(-1)  # torch's [out, in] layout, row-major, as bitsandbytes
        blocks = math.ceil(flat.size / NF4_BLOCK)
        flat = np.pad(flat, (0, blocks * NF4_BLOCK - flat.size)).reshape(blocks, NF4_BLOCK)
        absmax = np.abs(flat).max(axis=1)
        scales = np.where(absmax > 0, absmax, 1.0).astype(np.float32)
        normed = flat / scales[:, None]
        # Nearest level: the midpoints between neighbouring levels are the decision thresholds.
        codes = np.searchsorted((NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2, normed).astype(np.uint8)
        codes = codes.reshape(-1)
        if codes.size % 2:
            codes = np.append(codes, np.uint8(0))
        return (codes[0::2] << 4 | codes[1::2]).astype(np.uint8), scales
    raise ValueError(f"base dtype {base_dtype!r}: choose one of {', '.join(BASE_DTYPES)}")


def dequantize(codes, scales, base_dtype: str, shape: tuple[int, int]) -> jnp.ndarray:
    """The float32 [d_in, d_out] kernel that (codes, scales) stand for; jittable."""
    if base_dtype == "bfloat16":
        return codes.astype(jnp.float32)
    if base_dtype == "int8":
        return codes.astype(jnp.float32) * scales[None, :]
    if base_dtype == "nf4":
        d_in, d_out = shape
        nibbles = jnp.stack([codes >> 4, codes & 0x0F], axis=-1).reshape(-1)
        values = jnp.asarray(NF4_LEVELS)[nibbles[: scales.size * NF4_BLOCK]]
        values = values.reshape(scales.size, NF4_BLOCK) * scales[:, None]
        return values.reshape(-1)[: d_in * d_out].reshape(d_out, d_in).T
    raise ValueError(f"base dtype {base_dtype!r}: choose one of {', '.join(BASE_DTYPES)}")


def quantized_linears(model, *, pooler: bool = True):
    """(path, LoRALinear) of every projection whose kernel --base-dtype stores: the encoder's
    Dense layers and, with `pooler`, the pooler (never the head)."""
    from jax_lora.lora import LoRALinear  # lora.py imports this module

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
