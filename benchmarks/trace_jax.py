"""Where one JAX LoRA training step spends its time, per XLA operation (a jax.profiler trace).

    python -m benchmarks.trace_jax --shape mbert      # ~3 min on 2 cores

Builds jax_lora's train step as benchmarks.bench_jax does, compiles it for one fixed batch, runs
--warmup steps, then traces --steps steps with jax.profiler and sums the durations of the XLA:CPU
operations in the trace: per operation kind (the HLO instruction's name without its number:
`ynn_fusion`, `transpose_copy_fusion`, ...) and, for the operations that hold a matmul, per
matmul shape with the GFLOP/s it reached inside the step. XLA:CPU may run independent
operations concurrently on the two cores, so operation times need not add up to the step's wall
time; the report gives both. Writes benchmarks/results/trace_jax_<shape>.md and prints it.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Trace events that are not XLA operations: the runtime's own spans and Python frames.
NOT_AN_OPERATION = ("Thunk", "$", "Slinky", "Pjit", "Common", "ParseArguments", "end: ")


def computations(hlo: str) -> dict[str, list[str]]:
    """HLO text -> {computation name: its instruction lines}."""
    found, current = {}, None
    for line in hlo.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(.*\{$", line)
        if header:
            current = found[header.group(1)] = []
        elif current is not None and line.strip() and line.strip() != "}":
            current.append(line)
    return found


def _dims(text: str) -> list[int]:
    return [int(d) for d in text.split(",") if d]


def matmuls(hlo: str) -> dict[str, tuple[str, int]]:
    """{operation name: (matmul shape label, FLOPs)} for every dot of the step and every
    fusion that contains one."""
    comps = computations(hlo)
    shapes = {comp: {m.group(1): _dims(m.group(2)) for m in (
        re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]", row) for row in rows) if m}
        for comp, rows in comps.items()}
    dots = {}  # computation -> {dot name: (label, flops)}
    for comp, rows in comps.items():
        for row in rows:
            parts = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\].* dot\("
                             r"%([\w.\-]+), %([\w.\-]+)\), (.*)", row)
            if not parts or parts.group(3) not in shapes[comp] or parts.group(4) not in shapes[comp]:
                continue
            out = _dims(parts.group(2))
            lhs, rhs = shapes[comp][parts.group(3)], shapes[comp][parts.group(4)]
            contracting = _dims(re.search(r"lhs_contracting_dims=\{([\d,]*)\}",
                                          parts.group(5)).group(1))
            flops = 2
            for size in out + [lhs[i] for i in contracting]:
                flops *= size
            label = " · ".join("×".join(map(str, d)) for d in (lhs, rhs))
            entry = (f"{label} → {'×'.join(map(str, out))}", flops)
            dots.setdefault(comp, {})[parts.group(1)] = entry
    fusions = {m.group(1): m.group(2) for rows in comps.values() for m in (
        re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .* calls=%([\w.\-]+)", row) for row in rows) if m}
    called = set(fusions.values())
    # A dot outside any fused computation is an operation itself; a fusion counts its dot.
    found = {name: entry for comp, entries in dots.items() if comp not in called
             for name, entry in entries.items()}
    found.update({name: next(iter(dots[callee].values()))
                  for name, callee in fusions.items() if callee in dots})
    return found


def operation_times(trace_file: Path, steps: int) -> dict[str, float]:
    """{operation name: seconds per step} summed over the trace's complete events."""
    events = json.loads(gzip.open(trace_file).read())
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(NOT_AN_OPERATION):
            totals[event["name"]] += event.get("dur", 0) / 1e6 / steps
    return dict(totals)


def profile(shape_name: str, batch: int, seq_len: int, warmup: int, steps: int) -> dict:
    import jax

    from benchmarks.bench_jax import setup
    from benchmarks.run import weights
    from benchmarks.spec import get_shape
    from benchmarks.worker import Job
    from jax_lora.steps import make_train_step

    with tempfile.TemporaryDirectory(prefix="watson-trace-") as folder:
        job = Job("jax_lora", shape_name, batch, seq_len, steps, warmup,
                  weights(shape_name, Path(folder)))
        jax_setup = setup(job, "lora")
        batch_arrays = jax_setup.device_batch(get_shape(shape_name), batch, seq_len, job.seed)
        compiled = make_train_step(jax_setup.graphdef, jax_setup.tx, jax_setup.trainable,
                                   jax_setup.dropout_base, options=jax_setup.options).lower(
                                       jax_setup.state, batch_arrays).compile()
        state = jax_setup.state
        for _ in range(warmup):
            state, metrics = compiled(state, batch_arrays)
            jax.block_until_ready(metrics)
        started = time.perf_counter()
        with jax.profiler.trace(folder + "/trace", create_perfetto_trace=True):
            for _ in range(steps):
                state, metrics = compiled(state, batch_arrays)
                jax.block_until_ready(metrics)
        wall = (time.perf_counter() - started) / steps
        trace_file = next(Path(folder, "trace").rglob("*.trace.json.gz"))
        times = operation_times(trace_file, steps)
    return {"shape": shape_name, "batch": batch, "seq_len": seq_len, "steps": steps,
            "wall_s_per_step": wall, "operations": times, "matmuls": matmuls(compiled.as_text()),
            "jax": jax.__version__, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def markdown(doc: dict, command: str) -> str:
    times = doc["operations"]
    total = sum(times.values())
    kinds, counts = collections.Counter(), collections.Counter()
    for name, seconds in times.items():
        kind = re.sub(r"\.\d+$", "", name)
        kinds[kind] += seconds
        counts[kind] += 1
    lines = [f"# JAX LoRA step, per XLA operation: {doc['shape']}, batch {doc['batch']} × "
             f"{doc['seq_len']}", "",
             f"`{command}` ({doc['date_utc']}, jax {doc['jax']}); {doc['steps']} traced steps. "
             f"Wall time {doc['wall_s_per_step'] * 1e3:.0f} ms per step (traced, so slower than "
             f"untraced); the operations' times add up to {total * 1e3:.0f} ms "
             f"({total / doc['wall_s_per_step']:.2f}× the wall time; above 1, XLA:CPU ran "
             "independent operations at the same time, below 1 the rest is runtime work "
             "between operations).", "",
             "| operation kind | ms per step | share of operation time | operations |",
             "|---|---:|---:|---:|"]
    for kind, seconds in kinds.most_common(15):
        lines.append(f"| `{kind}` | {seconds * 1e3:.0f} | {100 * seconds / total:.1f} % "
                     f"| {counts[kind]} |")
    shapes = collections.defaultdict(lambda: [0.0, 0, 0])
    for name, (label, flops) in doc["matmuls"].items():
        if name in times:
            row = shapes[label]
            row[0] += times[name]
            row[1] += 1
            row[2] += flops
    lines += ["", "Operations holding a matmul, by matmul shape (GFLOP/s = its FLOPs / its "
                  "time inside the step, while other operations may share the cores):", "",
              "| matmul (lhs · rhs → out) | operations | ms per step | GFLOP | GFLOP/s |",
              "|---|---:|---:|---:|---:|"]
    for label, (seconds, count, flops) in sorted(shapes.items(), key=lambda kv: -kv[1][0])[:12]:
        lines.append(f"| {label} | {count} | {seconds * 1e3:.0f} | {flops / 1e9:.1f} "
                     f"| {flops / seconds / 1e9 if seconds else 0:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="mbert", choices=("mbert", "minilm", "tiny"),
                        help="model shape [default: mbert]")
    parser.add_argument("--batch", type=int, default=16, help="examples per step [default: 16]")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per example "
                                                                  "[default: 128]")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps [default: 2]")
    parser.add_argument("--steps", type=int, default=2, help="traced steps [default: 2]")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    for flag in ("batch", "seq_len", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.warmup < 0:
        parser.error(f"--warmup {args.warmup}: must be >= 0")
    doc = profile(args.shape, args.batch, args.seq_len, args.warmup, args.steps)
    command = "python -m benchmarks.trace_jax " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(doc, command.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"trace_jax_{args.shape}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
