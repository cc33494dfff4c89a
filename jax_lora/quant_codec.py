"""How a frozen kernel is stored in fewer bits, and read back: the formats of `--base-dtype`.

- float32: as loaded (the default);
- bfloat16: the kernel rounded to bfloat16 (2 bytes a weight);
- int8: per output channel absmax, W ≈ q · max|W[:, j]| / 127 with q in [-127, 127]
  (1 byte a weight + 4 bytes per output);
- nf4: QLoRA's NormalFloat4 as bitsandbytes stores it: the kernel in torch's [out, in] layout,
  flattened, cut into blocks of 64 weights, each scaled by its absmax and rounded to the
  nearest of 16 levels (the quantiles of a normal distribution, NF4_LEVELS); two 4-bit codes
  per byte, the first in the high nibble (0.5 byte a weight + 4 bytes per block). QLoRA's
  "double quantization" of the block scales (saving 0.37 bit a weight) is not done here.

Arrays only: which layers are stored so, and how a model is quantized, is quant.py's.
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
