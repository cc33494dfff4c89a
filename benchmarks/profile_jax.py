"""Where the JAX LoRA step's time and memory go: a timing breakdown by variants of the step.

    python -m benchmarks.profile_jax --shape minilm            # ~10 min on 2 cores
    python -m benchmarks.profile_jax --shape mbert --steps 5
    python -m benchmarks.profile_jax --shape mbert --ab --variants recipe,full_last_layer

Each variant runs in its own process (XLA flags and the PRNG implementation are per process) on
the same fixed batch, compiled ahead of time so that compile seconds and XLA's temporary
(activation) memory are read off the executable. With --ab, the variants that need no
environment of their own share one process instead and their steps alternate (A, B, A, B, ...),
so that the VM's speed drift, often larger than the effect measured, hits them alike; peak RSS
is then the process's, not the variant's. Writes benchmarks/results/profile_jax_<shape>
.{json,md} (profile_jax_<shape>_ab with --ab) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
# name: (environment of the process, what the variant shows)
VARIANTS = {
    "recipe": ({}, "jax_lora.steps.make_train_step, as the trainer runs it"),
    "no_dropout": ({}, "every dropout rate 0: what drawing the dropout masks costs"),
    "bernoulli_dropout": ({}, "dropout masks from jax.random.bernoulli (32-bit uniform floats, "
                              "JAX's default partitionable threefry): jax_lora's masks before "
                              "the 16-bit non-partitionable draw"),
    "full_last_layer": ({}, "the last layer computed for every row, as before jax_lora cut it to "
                            "the [CLS] row the classifier reads (encode(cls_only=False))"),
    "no_remat": ({}, "--remat none: every activation the backward pass reads is kept, "
                     "default XLA:CPU scheduler (jax_lora's step before --remat dots)"),
    "no_remat_memory_scheduler": ({}, "--remat none, but compiled with XLA:CPU's "
                                      "memory-optimised scheduler"),
    "remat_layers": ({}, "--remat layers: each layer keeps only its input and is recomputed "
                         "in the backward pass (memory-optimised scheduler)"),
    "headmajor_attention": ({}, "attention products as matmuls on [B, heads, T, head_dim] "
                                "operands transposed first, instead of jax_lora's einsums"),
    "rbg_prng": ({"JAX_DEFAULT_PRNG_IMPL": "rbg"},
                 "dropout bits from the rbg PRNG instead of threefry"),
    "grad_all": ({}, "gradients of every weight materialised (global norm over the full "
                     "tree): what differentiating only the trainable part saves"),
    "forward_only": ({}, "loss without gradient or update: the floor of any step"),
    "bf16": ({}, "every parameter and activation in bfloat16 (the model's float32 constants "
                 "made weak-typed for this run): is bf16 faster on this CPU?"),
    "two_devices": ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
                    "two CPU devices, the batch split over a data mesh (train.py's sharding)"),
    "onednn": ({"XLA_FLAGS": "--xla_cpu_use_onednn=true"}, "XLA:CPU with oneDNN matmuls"),
    "xnnpack": ({"XLA_FLAGS": "--xla_cpu_use_xnnpack=true"}, "XLA:CPU with XNNPACK"),
}


def variant_step(name: str, jax_setup, batch, patches: contextlib.ExitStack):
    """(jitted step, its arguments) for one variant; the step returns (state, metrics). Module
    patches a variant needs are entered on `patches`, which the caller closes once the step is
    compiled, so that variants sharing a process (--ab) do not see each other's."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    import jax_lora.lora
    import jax_lora.models
    from jax_lora.steps import TrainState, batch_metrics, make_train_step, memory_scheduler

    s = jax_setup
    if name == "bernoulli_dropout":
        patches.enter_context(mock.patch.object(jax_lora.lora, "dropout", bernoulli_dropout))
        patches.enter_context(mock.patch.object(jax_lora.models, "dropout", bernoulli_dropout))
    elif name == "headmajor_attention":
        patches.enter_context(mock.patch.object(jax_lora.models, "attend", headmajor_attend))
    elif name == "full_last_layer":
        def every_row(self, *inputs, dropout_key=None):
            return self.encode(*inputs, dropout_key=dropout_key)["logits"]
        patches.enter_context(mock.patch.object(jax_lora.models.BertClassifier, "__call__",
                                                every_row))
    if name in ("no_remat", "no_remat_memory_scheduler", "remat_layers"):
        model = nnx.merge(s.graphdef, s.state.params)
        model.remat = "layers" if name == "remat_layers" else "none"
        options = {} if name == "no_remat" else memory_scheduler()
        return make_train_step(nnx.split(model)[0], s.tx, s.trainable, s.dropout_base,
                               options=options), (s.state, batch)
    if name in ("bf16", "no_dropout"):
        # Both change static module attributes, which live in the graphdef.
        model = nnx.merge(s.graphdef, s.state.params)
        attribute, value = ("dtype", jnp.bfloat16) if name == "bf16" else ("rate", 0.0)
        for _, module in nnx.iter_modules(model):
            if hasattr(module, attribute):
                setattr(module, attribute, value)
        if name == "no_dropout":
            model.config = dataclasses.replace(model.config, dropout=0.0)
        state = to_bfloat16(s, patches) if name == "bf16" else s.state
        return make_train_step(nnx.split(model)[0], s.tx, s.trainable, s.dropout_base,
                               options=s.options), (state, batch)
    if name not in ("grad_all", "forward_only"):
        return make_train_step(s.graphdef, s.tx, s.trainable, s.dropout_base,
                               options=s.options), (s.state, batch)

    def loss_fn(params, batch, key):
        logits = nnx.merge(s.graphdef, params)(batch["token_ids"], batch["segment_ids"],
                                                batch["padding_mask"], dropout_key=key)
        metrics = batch_metrics(logits, batch["labels"], batch["weights"])
        return metrics["loss_sum"] / metrics["count"], metrics

    def grad_all(state, batch):
        key = jax.random.fold_in(s.dropout_base, state.step)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params, batch, key)
        updates, opt_state = s.tx.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.global_norm(grads)
        return TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                          opt_state), metrics

    def forward_only(state, batch):
        key = jax.random.fold_in(s.dropout_base, state.step)
        return state, loss_fn(state.params, batch, key)[1]

    if name == "grad_all":
        return jax.jit(grad_all, donate_argnums=0, compiler_options=s.options or None), (
            s.state, batch)
    return jax.jit(forward_only), (s.state, batch)


def headmajor_attend(query, key, value, padding_mask, rate: float, dropout_key,
                     compute_dtype: str = "float32"):
    """jax_lora.models.attend with the heads moved ahead of the sequence before two matmuls
    (about 1.8x faster than the einsums alone in a forward-only micro-benchmark); float32
    products only, as the profile runs the recipe."""
    import jax
    import jax.numpy as jnp

    from jax_lora.models import MASKED_LOGIT, dropout

    if compute_dtype != "float32":
        raise ValueError(f"headmajor_attention: compute dtype {compute_dtype}, not float32")
    q, k, v = (jnp.swapaxes(t, 1, 2) for t in (query, key, value))
    logits = jnp.where(padding_mask[:, None, None, :], q @ jnp.swapaxes(k, -1, -2), MASKED_LOGIT)
    probs = dropout(jax.nn.softmax(logits, axis=-1), rate, dropout_key)
    return jnp.swapaxes(probs @ v, 1, 2)


def bernoulli_dropout(x, rate, key):
    """Inverted dropout as jax_lora drew it before: a Bernoulli mask from 32-bit floats."""
    import jax
    import jax.numpy as jnp

    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def to_bfloat16(jax_setup, patches: contextlib.ExitStack):
    """The training state in bfloat16, and models.py's float32 scalar (the query scale) made a
    Python float, which JAX treats as weakly typed, so activations stay bfloat16."""
    import jax
    import jax.numpy as jnp

    import jax_lora.models as models
    from jax_lora.steps import TrainState, replicate

    class WeakFloat32:
        float32 = staticmethod(float)

        def __getattr__(self, name):
            return getattr(jnp, name)

    patches.enter_context(mock.patch.object(models, "jnp", WeakFloat32()))
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16)
                          if jnp.issubdtype(x.dtype, jnp.floating) else x, jax_setup.state.params)
    return replicate(TrainState(jax_setup.state.step, params, jax_setup.tx.init(params)),
                     jax_setup.mesh)


def host_input_ms(jax_setup, shape, batch: int, seq_len: int) -> float:
    """Per-step host work of train.py's input path: slice a dynamic-padding batch out of the
    pre-tokenized arrays and put it on the device mesh."""
    import numpy as np

    from benchmarks.worker import fake_batch
    from jax_lora.input_pipeline import Encoded, train_batches
    from jax_lora.steps import shard_batch

    rows = 64 * batch
    arrays = fake_batch(shape, rows, seq_len, seed=1)
    encoded = Encoded(arrays["token_ids"], arrays["segment_ids"], arrays["padding_mask"],
                      arrays["labels"])
    start = time.perf_counter()
    for item in train_batches(encoded, batch, seed=0, epoch=0, dynamic=True):
        np.asarray(shard_batch(item, jax_setup.mesh)["token_ids"])
    return 1e3 * (time.perf_counter() - start) / (rows // batch)


def worker(names: list[str], job_json: str) -> list[dict]:
    """Build and compile each variant, then time their steps in turns: for one variant that
    is its own process's loop; for several (--ab) the steps alternate, one of each per round."""
    import jax
    import jax.numpy as jnp

    from benchmarks.bench_jax import setup
    from benchmarks.spec import get_shape
    from benchmarks.worker import Job, peak_rss_bytes

    job = Job.from_json(job_json)
    shape = get_shape(job.shape)
    jax_setup = setup(job, "lora")
    batch = jax_setup.device_batch(shape, job.batch, job.seq_len, job.seed)
    runs = []
    for name in names:
        with contextlib.ExitStack() as patches:
            jitted, args = variant_step(name, jax_setup, batch, patches)
            # Steps donate their state: each variant gets its own copy.
            state = jax.tree.map(jnp.copy, args[0]) if len(names) > 1 else args[0]
            started = time.perf_counter()
            compiled = jitted.lower(state, batch).compile()
            compile_s = time.perf_counter() - started
        runs.append({"name": name, "compiled": compiled, "state": state, "times": [],
                     "compile_s": compile_s, "memory": compiled.memory_analysis()})
    for round_ in range(job.warmup + job.steps):
        for run in runs:
            started = time.perf_counter()
            run["state"], metrics = run["compiled"](run["state"], batch)
            jax.block_until_ready((run["state"], metrics))
            if round_ >= job.warmup:
                run["times"].append(time.perf_counter() - started)
    results = []
    for run in runs:
        result = {"variant": run["name"], "median_step_s": statistics.median(run["times"]),
                  "step_times_s": run["times"], "compile_s": run["compile_s"],
                  "temp_bytes": getattr(run["memory"], "temp_size_in_bytes", None),
                  "peak_rss_bytes": peak_rss_bytes(), "devices": jax_setup.mesh.size,
                  "prng": jax.config.jax_default_prng_impl, "shared_process": len(runs) > 1}
        if run["name"] == "recipe":
            result["host_input_ms"] = host_input_ms(jax_setup, shape, job.batch, job.seq_len)
            result["attention_mask_ms"] = attention_mask_ms(shape, job.batch, job.seq_len)
        results.append(result)
    return results


def attention_mask_ms(shape, batch: int, seq_len: int) -> dict:
    """Median ms to draw one dropout mask of the attention probabilities' shape
    [batch, heads, T, T], jitted, by jax_lora's dropout and by the Bernoulli one before it."""
    import jax
    import jax.numpy as jnp

    from benchmarks.ops_jax import timed
    from jax_lora.lora import dropout

    x = jnp.ones((batch, shape.num_heads, seq_len, seq_len), jnp.float32)
    key = jax.random.key(0)
    out = {}
    for label, function in (("jax_lora", dropout), ("bernoulli", bernoulli_dropout)):
        draw = jax.jit(lambda x, key, function=function: function(x, 0.1, key))
        out[label] = timed(draw, x, key, repeats=10)[0]
    return out


def run(args) -> dict:
    from benchmarks.run import run_module, weights
    from benchmarks.worker import Job

    names = args.variants.split(",")
    # One process per variant; with --ab, one process for all that need no environment.
    groups = ([[n for n in names if not VARIANTS[n][0]]] if args.ab else []) + [
        [n] for n in names if not (args.ab and not VARIANTS[n][0])]
    rows = {}
    with tempfile.TemporaryDirectory(prefix="watson-profile-") as folder:
        job = Job("jax_lora", args.shape, args.batch, args.seq_len, args.steps, args.warmup,
                  weights(args.shape, Path(folder)))
        for group in filter(None, groups):
            env = VARIANTS[group[0]][0]
            result = run_module("benchmarks.profile_jax", ["--worker", ",".join(group),
                                                           "--json-args", job.to_json()], env)
            for name, row in zip(group, result.get("variants") or [result] * len(group)):
                rows[name] = {**row, "status": result["status"], "variant": name,
                              "what": VARIANTS[name][1], "env": env}
                print(f"  {name:<16} {result['status']} "
                      f"{row.get('median_step_s', 0) * 1e3:.0f} ms", file=sys.stderr, flush=True)
    return {"shape": args.shape, "batch": args.batch, "seq_len": args.seq_len,
            "steps": args.steps, "warmup": args.warmup, "ab": args.ab,
            "variants": [rows[name] for name in names],
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m benchmarks.profile_jax " + " ".join(sys.argv[1:])}


def markdown(doc: dict) -> str:
    base = next((r["median_step_s"] for r in doc["variants"]
                 if r["variant"] == "recipe" and r["status"] == "ok"), None)
    lines = [f"# JAX LoRA step profile: {doc['shape']}, batch {doc['batch']} x {doc['seq_len']}",
             "", f"`{doc['command']}` ({doc['date_utc']}); median of {doc['steps']} steps"
             + ("; the variants without an environment of their own shared one process and "
                "alternated their steps, so their peak RSS is the shared process's."
                if doc.get("ab") else "."), "",
             "| variant | what it shows | ms/step | vs recipe | compile s | XLA temp MiB "
             "| peak RSS MiB |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in doc["variants"]:
        if r["status"] != "ok":
            lines.append(f"| {r['variant']} | {r['what']} | {r['status']}: "
                         f"{r.get('error', '')} | | | | |")
            continue
        ratio = f"{r['median_step_s'] / base:.2f}" if base else "–"
        temp = "–" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.0f}"
        lines.append(f"| {r['variant']} | {r['what']} | {r['median_step_s'] * 1e3:.0f} | {ratio} "
                     f"| {r['compile_s']:.1f} | {temp} | {r['peak_rss_bytes'] / 2**20:.0f} |")
    host = next((r.get("host_input_ms") for r in doc["variants"] if r["variant"] == "recipe"), None)
    if host is not None:
        lines += ["", f"Host input path (slice a dynamic-padding batch + device_put): "
                      f"{host:.2f} ms per step."]
    masks = next((r.get("attention_mask_ms") for r in doc["variants"]
                  if r["variant"] == "recipe"), None)
    if masks:
        lines += ["", f"One dropout mask of the attention probabilities' shape "
                      f"[{doc['batch']}, heads, {doc['seq_len']}, {doc['seq_len']}], jitted "
                      f"(dropout of a tensor of ones): jax_lora's {masks['jax_lora']:.1f} ms, "
                      f"the Bernoulli draw {masks['bernoulli']:.1f} ms."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--json-args", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="minilm", help="mbert, minilm or tiny [default: minilm]")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--ab", action="store_true",
                        help="variants without an environment of their own share one process "
                             "and alternate their steps (robust to the VM's speed drift)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    unknown = [name for name in args.variants.split(",") if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; "
                     f"choose among {', '.join(VARIANTS)}")
    for flag, least in (("batch", 1), ("seq_len", 1), ("steps", 1), ("warmup", 0)):
        if getattr(args, flag) < least:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= {least}")
    if args.worker:
        print(json.dumps({"variants": worker(args.worker.split(","), args.json_args)}),
              flush=True)
        return
    doc = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"profile_jax_{args.shape}{'_ab' if args.ab else ''}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
