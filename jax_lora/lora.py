"""LoRA and DoRA on whole projections, as in the papers and PEFT: ΔW = s · A · B.

A projection W is [d_in, d_out]; A is [d_in, rank], B is [rank, d_out], so an adapter adds
rank · (d_in + d_out) parameters. The scale s is alpha / rank, or alpha / sqrt(rank) with
rsLoRA. keras-hub's `enable_lora` factorises each attention head separately instead; we
follow PEFT so adapter sizes and learning rates carry over from the literature.

DoRA (weight-decomposed LoRA) adds a magnitude m [d_out]: W' = m · (W + s·A·B) / ‖W + s·A·B‖,
the norm of each output column taken over the input axis, m starting at ‖W‖ so that step 0 is
the base model exactly. As in PEFT (peft/tuners/lora/dora.py) and as the DoRA paper advises
(section 4.3), the norm is a constant in the backward pass (stop_gradient), and with adapter
dropout the frozen path sees the undropped input: y = x W + b + (m/n − 1) · x' W + (m/n) ·
s · x' A B, x' = dropout(x), which is x W + b rescaled when dropout is off.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_lora.quant_codec import QuantCodes, QuantScales, dequantize, quantize

LORA_TARGETS = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")
# BERT's initializer for every projection and embedding (keras-hub bert_kernel_initializer).
BERT_KERNEL_INIT = nnx.initializers.truncated_normal(stddev=0.02)
# PEFT initialises A with torch's kaiming_uniform_(a=sqrt(5)): U(±1/sqrt(d_in)).
LORA_A_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 16  # r: inner dimension of A · B
    alpha: float = 16.0  # ΔW is scaled by alpha / rank, so changing rank keeps the update size
    dropout: float = 0.0  # dropout on the adapter's input only (the frozen path gets none)
    targets: tuple[str, ...] = ("query", "value")  # projections with adapters (lora and dora)
    rslora: bool = False  # rank-stabilised LoRA: scale alpha / sqrt(rank) instead of alpha / rank
    dora: bool = dataclasses.field(default=False, metadata={"flag": False})  # set by --method dora
    train_head: bool = True  # the fresh classification head trains (it must, it starts random)
    train_pooler: bool = False  # the pretrained pooler dense trains too

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora rank={self.rank!r}: must be an integer >= 1")
        if not self.alpha > 0:
            raise ValueError(f"lora alpha={self.alpha!r}: must be > 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora dropout={self.dropout!r}: must be in [0, 1)")
        targets = tuple(self.targets)
        unknown = [t for t in targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"lora targets: unknown {', '.join(map(str, unknown))}; "
                             f"choose among {', '.join(LORA_TARGETS)}")
        if len(set(targets)) != len(targets):
            raise ValueError(f"lora targets={targets}: lists a target twice")
        object.__setattr__(self, "targets", targets)


    @property
    def scale(self) -> float:
        """s in ΔW = s · A · B."""
        return self.alpha / (self.rank ** 0.5 if self.rslora else self.rank)


class LoraParam(nnx.Param):
    """An adapter leaf (lora_a, lora_b, DoRA's lora_magnitude); its type is what the
    trainable rule selects."""


DROPOUT_BITS = 16  # the drop probability is resolved to 1 / 2**16


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; key=None (evaluation) or rate=0 is the identity.

    The mask compares 16-bit random integers with round(rate · 2**16), drawn with threefry's
    non-partitionable layout, because that is much cheaper on CPU than `jax.random.bernoulli`
    (32-bit floats, partitionable layout); the measured timings are in
    benchmarks/results/dropout/ and discussed in benchmarks/BENCHMARKS.md ("cheaper dropout
    masks"). A rate of 0.1 drops with probability 6554 / 65536 = 0.1000061; kept values are
    scaled by the inverse of that exact keep probability, so the expected output is x.
    """
    if key is None or rate == 0.0:
        return x
    threshold = round(rate * 2**DROPOUT_BITS)
    with jax.threefry_partitionable(False):
        bits = jax.random.bits(key, x.shape, jnp.uint16)
    keep = bits >= jnp.uint16(threshold)
    scale = 2**DROPOUT_BITS / (2**DROPOUT_BITS - threshold)
    return jnp.where(keep, x * jnp.asarray(scale, x.dtype), jnp.zeros_like(x))


COMPUTE_DTYPES = ("float32", "bfloat16")


def matmul(x: jax.Array, y: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """x @ y; with bfloat16 compute the operands are rounded to bfloat16 and the products
    summed in float32 (what TPUs and GPUs do), the result float32."""
    if compute_dtype == "float32":
        return x @ y
    return jnp.matmul(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16),
                      preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def stored_matmul(x: jax.Array, codes: jax.Array, scales: jax.Array | None, base_dtype: str,
                  shape: tuple[int, int], compute_dtype: str) -> jax.Array:
    """x @ dequantize(codes, scales), whose backward pass dequantizes the kernel again instead
    of keeping the float32 kernel from the forward pass (as bitsandbytes' QLoRA matmul does):
    what stays in memory between the passes is the stored codes. The stored leaves never train,
    so their cotangents are zeros."""
    return matmul(x, dequantize(codes, scales, base_dtype, shape), compute_dtype)


def _stored_matmul_fwd(x, codes, scales, base_dtype, shape, compute_dtype):
    return stored_matmul(x, codes, scales, base_dtype, shape, compute_dtype), (codes, scales)


def _stored_matmul_bwd(base_dtype, shape, compute_dtype, residuals, grad):
    codes, scales = residuals
    kernel = dequantize(codes, scales, base_dtype, shape)
    zero = (jnp.zeros_like(codes) if jnp.issubdtype(codes.dtype, jnp.floating)
            else np.zeros(codes.shape, jax.dtypes.float0))
    return (matmul(grad, kernel.T, compute_dtype), zero,
            None if scales is None else jnp.zeros_like(scales))


stored_matmul.defvjp(_stored_matmul_fwd, _stored_matmul_bwd)


def column_norm(kernel: jax.Array) -> jax.Array:
    """‖W[:, j]‖ over the input axis of a [d_in, d_out] kernel: DoRA's norm, [d_out]."""
    return jnp.linalg.norm(kernel, axis=0)


class LoRALinear(nnx.Module):
    """y = x W + b + s · dropout(x) A B (LoRA), rescaled per output by DoRA's m / ‖W + s·A·B‖
    when `dora`; without adapters (rank=0) a plain dense. W is a float32 `kernel` Param, or,
    once `store_base` ran (--base-dtype), the frozen `kernel_codes` (+ `kernel_scales`) that
    `base_kernel()` dequantizes inside the step. `compute_dtype` (set by
    models.set_compute_dtype) is the matmuls' operand type."""

    def __init__(self, in_features: int, out_features: int, *, rank: int = 0,
                 scale: float = 1.0, lora_dropout: float = 0.0, dora: bool = False,
                 rngs: nnx.Rngs):
        self.kernel = nnx.Param(BERT_KERNEL_INIT(rngs.params(), (in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
        self.kernel_shape = (in_features, out_features)
        self.base_dtype = "float32"
        self.compute_dtype = "float32"
        self.rank = rank
        self.scale = scale if rank else 0.0
        self.lora_dropout = lora_dropout
        self.dora = bool(rank) and dora
        if rank:
            self.lora_a = LoraParam(LORA_A_INIT(rngs.params(), (in_features, rank)))
            # B = 0 makes the adapted model equal the pretrained one at step 0.
            self.lora_b = LoraParam(jnp.zeros((rank, out_features), jnp.float32))
        if self.dora:
            # A placeholder: init_dora_magnitudes sets m = ‖W‖ once W holds its pretrained value.
            self.lora_magnitude = LoraParam(jnp.ones((out_features,), jnp.float32))

    def store_base(self, base_dtype: str, codes=None, scales=None) -> None:
        """Replace the float32 kernel by its quantized storage (jax_lora.quant_codec), for good;
        `codes`, `scales`: the kernel already quantized (by the loader, tensor by tensor)."""
        if self.base_dtype != "float32":
            raise ValueError(f"kernel already stored as {self.base_dtype}")
        if codes is None:
            codes, scales = quantize(self.kernel.get_value(), base_dtype)
        del self.kernel
        self.kernel_codes = QuantCodes(jnp.asarray(codes), kernel_shape=self.kernel_shape)
        if scales is not None:
            self.kernel_scales = QuantScales(jnp.asarray(scales))
        self.base_dtype = base_dtype

    def stored(self) -> tuple[jax.Array, jax.Array | None]:
        """(codes, scales) of a kernel stored in fewer bits; scales is None for bfloat16."""
        scales = None if self.base_dtype == "bfloat16" else self.kernel_scales[...]
        return self.kernel_codes[...], scales

    def base_kernel(self) -> jax.Array:
        """W, float32 [d_in, d_out] (dequantized when stored in fewer bits)."""
        if self.base_dtype == "float32":
            return self.kernel[...]
        return dequantize(*self.stored(), self.base_dtype, self.kernel_shape)

    def base_matmul(self, x: jax.Array) -> jax.Array:
        """x W (no bias); a stored kernel is dequantized inside (stored_matmul)."""
        if self.base_dtype == "float32":
            return matmul(x, self.kernel[...], self.compute_dtype)
        return stored_matmul(x, *self.stored(), self.base_dtype, self.kernel_shape,
                             self.compute_dtype)

    def __call__(self, x: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
        dtype = self.compute_dtype
        base = self.base_matmul(x)
        if not self.rank:
            return base + self.bias[...]
        adapter_in = dropout(x, self.lora_dropout, dropout_key)
        update = self.scale * matmul(matmul(adapter_in, self.lora_a[...], dtype),
                                     self.lora_b[...], dtype)
        if not self.dora:
            return base + self.bias[...] + update
        factor = self.lora_magnitude[...] / jax.lax.stop_gradient(self.adapted_norm())
        frozen_in = base if adapter_in is x else self.base_matmul(adapter_in)
        return base + self.bias[...] + (factor - 1.0) * frozen_in + factor * update

    def adapted_norm(self) -> jax.Array:
        """‖W + s·A·B‖ per output column (DoRA's denominator)."""
        return column_norm(self.base_kernel() + self.scale * (self.lora_a[...] @ self.lora_b[...]))

    def merged_kernel(self) -> jax.Array:
        """The plain float32 kernel this layer computes with: W (dequantized) + s·A·B, DoRA's
        rescaling folded in."""
        if not self.rank:
            return self.base_kernel()
        merged = self.base_kernel() + self.scale * (self.lora_a[...] @ self.lora_b[...])
        if self.dora:
            merged = merged * (self.lora_magnitude[...] / column_norm(merged))[None, :]
        return merged


def init_dora_magnitudes(model) -> None:
    """m = ‖W + s·A·B‖ (= ‖W‖ while B = 0) in every DoRA layer, as PEFT's update_layer does:
    call it once the pretrained kernels are in place, so that step 0 is the base model."""
    for _, module in nnx.iter_modules(model):
        if isinstance(module, LoRALinear) and module.dora:
            module.lora_magnitude[...] = module.adapted_norm()


def trainable_filter(lora: LoraConfig, *, full: bool = False) -> nnx.filterlib.Filter:
    """The parameters that train: every adapter leaf (lora_a, lora_b, DoRA's magnitude), plus
    the head and pooler as configured; `full`: every parameter."""
    if full:
        return nnx.Param
    parts = [LoraParam]
    if lora.train_head:
        parts.append(nnx.All(nnx.Param, nnx.PathContains("head")))
    if lora.train_pooler:
        parts.append(nnx.All(nnx.Param, nnx.PathContains("pooler")))
    return nnx.Any(*parts)


def merge_lora(model):
    """A copy of `model` (a BertClassifier) with plain float32 kernels: adapters folded in
    (W + s·A·B for LoRA, m · (W + s·A·B) / ‖W + s·A·B‖ for DoRA) and quantized kernels
    dequantized."""
    plain_lora = dataclasses.replace(model.lora, targets=(), dora=False)
    # type(model) rather than importing models.py, which imports this file.
    merged = nnx.eval_shape(lambda: type(model)(model.config, num_classes=model.num_classes,
                                                lora=plain_lora, pooling=model.pooling,
                                                rngs=nnx.Rngs(0)))
    state = nnx.to_flat_state(nnx.state(model, nnx.All(nnx.Param, nnx.Not(LoraParam))))
    values = {path: variable.get_value() for path, variable in state}
    for path, module in nnx.iter_modules(model):
        if isinstance(module, LoRALinear):
            values[(*path, "kernel")] = module.merged_kernel()
    merged_state = nnx.state(merged)
    for path, variable in nnx.to_flat_state(merged_state):
        variable.set_value(values.pop(path))
    if values:
        raise ValueError(f"merge_lora: parameter {'/'.join(map(str, next(iter(values))))} "
                         f"has no place in the plain model")
    nnx.update(merged, merged_state)
    return merged


def is_plain(model) -> bool:
    """No adapters and every kernel float32: what keras-hub and PEFT's base can hold as is."""
    return not nnx.state(model, LoraParam) and not nnx.state(model, QuantCodes)
