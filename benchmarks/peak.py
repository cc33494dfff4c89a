"""The machine's fp32 matmul peak, measured: best GFLOP/s of an n x n @ n x n product.

Run as its own process (`python -m benchmarks.peak --size 2048 --repeats 10`); prints one JSON
line. Every backend present is measured (numpy's BLAS, XLA via jax, torch when installed); the
reference peak is the best fp32 one, and the JSON says which backend gave it. jax bf16 is
measured too, for the fp32-vs-bf16 question only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time

import numpy as np


def best_seconds(matmul, repeats: int) -> float:
    matmul()  # warm-up: compilation, thread-pool start, page faults
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul()
        best = min(best, time.perf_counter() - start)
    return best


def backends(size: int):
    """(name, zero-argument synchronous matmul) for each backend installed."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    yield "numpy_fp32", lambda: a @ a
    if importlib.util.find_spec("jax"):
        import jax
        import jax.numpy as jnp

        product = jax.jit(jnp.matmul)
        for name, dtype in (("jax_fp32", jnp.float32), ("jax_bf16", jnp.bfloat16)):
            x = jnp.asarray(a, dtype=dtype)
            yield name, lambda x=x: product(x, x).block_until_ready()
    if importlib.util.find_spec("torch"):
        import torch

        t = torch.from_numpy(a)
        yield "torch_fp32", lambda: t @ t


def measure(size: int, repeats: int) -> dict:
    flops = 2 * size ** 3
    gflops = {name: flops / best_seconds(matmul, repeats) / 1e9
              for name, matmul in backends(size)}
    fp32 = {name: value for name, value in gflops.items() if name.endswith("fp32")}
    best = max(fp32, key=fp32.get)
    return {"size": size, "repeats": repeats, "gflops": gflops,
            "peak_fp32_gflops": fp32[best], "peak_backend": best}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(measure(args.size, args.repeats)), flush=True)
