"""Per-operation timings of the pieces of a BERT layer under XLA:CPU, to see which parts of the
JAX LoRA step run below the matmul peak.

    python -m benchmarks.ops_jax --shape mbert        # ~1 min on 2 cores

Each operation is jitted on its own, at one layer's shapes for batch x sequence length, and
timed over --repeats calls after a warm-up call (median). "cores" is process CPU time / wall
time: about 2 on this machine means both cores worked. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def timed(function, *args, repeats: int) -> tuple[float, float]:
    """(median ms, cores busy) of a jitted call, waited for."""
    import jax

    jax.block_until_ready(function(*args))
    times, cpu = [], time.process_time()
    for _ in range(repeats):
        started = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - started)
    return 1e3 * statistics.median(times), (time.process_time() - cpu) / sum(times)


def operations(shape, batch: int, seq_len: int):
    """(name, function, arguments, matmul FLOPs or 0) at one layer's shapes."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jax_lora.lora import dropout
    from jax_lora.models import attend

    tokens, h, f, n = batch * seq_len, shape.hidden_dim, shape.intermediate_dim, shape.num_heads
    keys = iter(jax.random.split(jax.random.key(0), 9))
    x, inner = jax.random.normal(next(keys), (tokens, h)), jax.random.normal(next(keys), (tokens, f))
    w_in, w_out = jax.random.normal(next(keys), (h, f)), jax.random.normal(next(keys), (f, h))
    w_hh = jax.random.normal(next(keys), (h, h))
    heads = jax.random.normal(next(keys), (batch, seq_len, n, h // n))
    probs = jax.random.normal(next(keys), (batch, n, seq_len, seq_len))
    mask = jnp.ones((batch, seq_len), bool)

    layer_norm = nnx.LayerNorm(h, epsilon=1e-12, use_fast_variance=False, rngs=nnx.Rngs(0))

    def attention(q, k, v, mask):  # jax_lora's attention after the projections, no dropout
        return attend(q, k, v, mask, 0.0, None)

    attention_flops = 4 * batch * seq_len * seq_len * h
    return [
        (f"x·W {tokens}×{h}×{h} (query/key/value/output)", lambda a, b: a @ b, (x, w_hh),
         2 * tokens * h * h),
        (f"x·W {tokens}×{h}×{f} (FFN in)", lambda a, b: a @ b, (x, w_in), 2 * tokens * h * f),
        (f"x·W {tokens}×{f}×{h} (FFN out)", lambda a, b: a @ b, (inner, w_out), 2 * tokens * h * f),
        ("attention QKᵀ, mask, softmax, PV", attention, (heads, heads, heads, mask),
         attention_flops),
        ("attention, forward + input gradients",
         jax.grad(lambda q, k, v, m: attention(q, k, v, m).sum(), argnums=(0, 1, 2)),
         (heads, heads, heads, mask), 3 * attention_flops),
        (f"softmax {batch}×{n}×{seq_len}×{seq_len}", lambda p: jax.nn.softmax(p, axis=-1),
         (probs,), 0),
        (f"GELU (tanh) {tokens}×{f}", lambda a: jax.nn.gelu(a, approximate=True), (inner,), 0),
        (f"LayerNorm {tokens}×{h}", lambda a: layer_norm(a), (x,), 0),
        (f"dropout mask + apply {batch}×{n}×{seq_len}×{seq_len}",
         lambda p, k: dropout(p, 0.1, k), (probs, next(keys)), 0),
        (f"dropout mask + apply {tokens}×{h}", lambda a, k: dropout(a, 0.1, k), (x, next(keys)), 0),
    ]


def main(argv=None) -> None:
    from benchmarks.spec import get_shape

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mbert", choices=("mbert", "minilm", "tiny"),
                        help="model shape [default: mbert]")
    parser.add_argument("--batch", type=int, default=16, help="rows per call [default: 16]")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per row [default: 128]")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls [default: 20]")
    args = parser.parse_args(argv)
    for flag in ("batch", "seq_len", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    import jax

    shape = get_shape(args.shape)
    print(f"# XLA:CPU per-operation timings: {args.shape}, batch {args.batch} × {args.seq_len}\n\n"
          f"`python -m benchmarks.ops_jax {' '.join(sys.argv[1:] if argv is None else argv)}`".rstrip() +
          f" (jax {jax.__version__}); median of {args.repeats} calls.\n\n"
          "| operation (one layer) | ms | matmul GFLOP/s | cores |\n|---|---:|---:|---:|")
    for name, function, arguments, flops in operations(shape, args.batch, args.seq_len):
        ms, cores = timed(jax.jit(function), *arguments, repeats=args.repeats)
        rate = f"{flops / ms / 1e6:.0f}" if flops else "–"
        print(f"| {name} | {ms:.2f} | {rate} | {cores:.2f} |", flush=True)


if __name__ == "__main__":
    main()
