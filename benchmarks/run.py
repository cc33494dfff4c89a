"""Benchmark the training configurations on this machine, one subprocess each.

    python benchmarks/run.py --suite quick     # MiniLM shape, 10 timed steps, no epoch estimate
    python benchmarks/run.py --suite full      # mBERT-base and MiniLM, + epoch estimate

Without --configs the suites measure the issue's five (spec.DEFAULT_CONFIGS); jax_dora and
jax_probe (jax_lora's other methods) are measured when named in --configs.

Writes <out>/<suite>.json and <out>/<suite>.md (default out: benchmarks/results/) and prints the
Markdown. Exit code 0 when every installed configuration ran, 1 when one failed, 2 on bad flags.
See benchmarks/BENCHMARKS.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # `python benchmarks/run.py`: make the repo importable
    sys.path.insert(0, str(REPO))

from benchmarks import epoch, random_preset, report  # noqa: E402
from benchmarks.spec import CONFIG_BY_NAME, DEFAULT_CONFIGS, Config, get_shape  # noqa: E402
from benchmarks.worker import Job  # noqa: E402
from shared.cli import error_line, exit_on_bad_input  # noqa: E402
from shared.evaluation.quotes import replace_block  # noqa: E402
from shared.runs.presets import minilm_dir  # noqa: E402


@dataclass(frozen=True)
class Suite:
    shapes: tuple[str, ...]  # model shapes measured at --batch x --seq-len
    steps: int  # timed steps per measurement (median reported; the issue asks >= 10)
    warmup: int  # untimed steps before them
    epoch: bool  # also estimate an epoch of each trainer's default recipe on the real data


RESULTS = REPO / "benchmarks" / "results"
DOC = REPO / "benchmarks" / "BENCHMARKS.md"
SUITES = {
    "quick": Suite(("minilm",), steps=10, warmup=3, epoch=False),
    "full": Suite(("mbert", "minilm"), steps=10, warmup=3, epoch=True),
}
# The Python modules each worker imports; a configuration whose modules are missing is skipped.
REQUIRED_MODULES = {"tf": ("tensorflow", "keras_hub"), "jax": ("jax", "flax", "optax"),
                    "torch": ("torch", "transformers", "peft")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=SUITES, default="quick",
                        help="quick: MiniLM only; full: mBERT-base and MiniLM + epoch estimate "
                             "[default: quick]")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated configurations among {', '.join(CONFIG_BY_NAME)} "
                             f"[default: the issue's five, {','.join(DEFAULT_CONFIGS)}]")
    parser.add_argument("--shapes", default=None,
                        help="comma-separated shapes among mbert, minilm, tiny "
                             "[default: the suite's]")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps [default: the suite's]")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed warm-up steps [default: the suite's]")
    parser.add_argument("--batch", type=int, default=16, help="examples per step [default: 16]")
    parser.add_argument("--seq-len", type=int, default=128,
                        help="tokens per example [default: 128]")
    parser.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=None,
                        help="estimate a default-recipe epoch on the real Watson split "
                             "[default: on for full]")
    parser.add_argument("--epoch-steps", type=int, default=3,
                        help="timed steps per sequence length for the epoch estimate [default: 3]")
    parser.add_argument("--data-dir", type=Path, default=epoch.WATSON_DIR,
                        help=f"real Watson data for the epoch estimate "
                             f"[default: {epoch.WATSON_DIR}]")
    parser.add_argument("--peak-size", type=int, default=2048,
                        help="n of the n x n fp32 matmul that measures the peak [default: 2048]")
    parser.add_argument("--jobs", type=int, default=1,
                        help="configurations run at once; above 1 they share the cores, so the "
                             "timings are not comparable (smoke tests only) [default: 1]")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder for <suite>.json and <suite>.md; writing to the default "
                             "or a folder inside it also updates the quote of that file in "
                             "benchmarks/BENCHMARKS.md, where the document has its markers "
                             "[default: benchmarks/results]")
    return parser.parse_args(argv)


def resolve(args: argparse.Namespace) -> tuple[Suite, list[Config], list[str]]:
    """The suite with the flags applied; raises ValueError naming the bad flag."""
    suite = SUITES[args.suite]
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIG_BY_NAME]
    if unknown or not names:
        raise ValueError(f"--configs {args.configs}: unknown {', '.join(unknown) or 'empty list'}; "
                         f"choose among {', '.join(CONFIG_BY_NAME)}")
    shapes = suite.shapes if args.shapes is None else tuple(
        name.strip() for name in args.shapes.split(",") if name.strip())
    for shape in shapes:
        get_shape(shape)  # raises on an unknown name
    for flag in ("steps", "batch", "seq_len", "epoch_steps", "peak_size", "jobs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup {args.warmup}: must be >= 0")
    if not 3 <= args.seq_len <= 512:
        raise ValueError(f"--seq-len {args.seq_len}: must lie in [3, 512]")
    suite = Suite(shapes, args.steps or suite.steps,
                  suite.warmup if args.warmup is None else args.warmup,
                  suite.epoch if args.epoch is None else args.epoch)
    return suite, [CONFIG_BY_NAME[name] for name in names], list(shapes)


def missing_modules(config: Config) -> list[str]:
    return [name for name in REQUIRED_MODULES[config.framework]
            if importlib.util.find_spec(name) is None]


def run_module(module: str, args: list[str], env: dict | None = None) -> dict:
    """Run `python -m module args` from the repo root, with `env` added to the environment;
    its last stdout line is a JSON object."""
    started, load = time.time(), os.getloadavg()[0]
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode < 0:  # killed: its last stderr line is unrelated
        why = " (SIGKILL: out of memory? see dmesg)" if proc.returncode == -9 else ""
        return {"status": "failed", "returncode": proc.returncode,
                "error": f"killed by signal {-proc.returncode}{why}"}
    if proc.returncode != 0 or not lines:
        tail = error_line(proc.stderr)
        return {"status": "failed", "returncode": proc.returncode, "error": tail[-500:]}
    result = json.loads(lines[-1])
    result.setdefault("status", "ok")
    result["wall_s"] = time.time() - started
    result["load_avg_1min"] = [load, os.getloadavg()[0]]  # before, after: how busy the machine was
    return result


def run_config(config: Config, job: Job) -> dict:
    missing = missing_modules(config)
    if missing:
        hint = " (bash benchmarks/setup_peer.sh)" if config.framework == "torch" else ""
        return {"job": asdict(job), "status": "skipped",
                "reason": f"not installed: {', '.join(missing)}{hint}"}
    result = run_module(f"benchmarks.bench_{config.framework}", ["--json-args", job.to_json()])
    result.setdefault("job", asdict(job))
    print(f"  {config.name:<10} {job.shape:<6} {result['status']}"
          + (f"  {result['median_step_s'] * 1e3:.1f} ms/step" if result["status"] == "ok"
             else f"  {result.get('error', '')}"), file=sys.stderr, flush=True)
    return result


def weights(shape: str, folder: Path) -> str:
    """The folder every worker loads `shape` from: the real MiniLM folder, or a random one
    written once per run into `folder`."""
    if get_shape(shape).pretrained:
        return str(minilm_dir())
    preset = folder / shape
    if not preset.is_dir():
        random_preset.write(get_shape(shape), preset)
    return str(preset)


def doc_block(out: Path, suite: str) -> str | None:
    """The results file a run writes, named as BENCHMARKS.md's markers name it ("full",
    "methods/full"), when `out` is benchmarks/results/ or a folder inside it; else None."""
    out, results = out.resolve(), RESULTS.resolve()
    if out != results and results not in out.parents:
        return None
    return (out.relative_to(results) / suite).as_posix()


def quote_in_doc(name: str, markdown: str) -> None:
    """Replace the block between BENCHMARKS.md's markers for results/<name>.md with the new
    results (headings one level down), so the document always quotes the committed results
    file; a name without markers in the document is left alone."""
    text = DOC.read_text()
    updated = replace_block(text, f"results/{name}.md", markdown)
    if updated != text:
        DOC.write_text(updated)


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                  .splitlines() if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 2**20, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}


def main(argv=None) -> int:
    args = parse_args(argv)
    with exit_on_bad_input():
        suite, configs, shapes = resolve(args)
    command = "python " + " ".join(shlex.quote(a) for a in
                                   ["benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"benchmarks: {command}", file=sys.stderr)
    peak = run_module("benchmarks.peak", ["--size", str(args.peak_size)])
    with tempfile.TemporaryDirectory(prefix="watson-bench-") as folder:
        runs = [(config, Job(config.name, shape, args.batch, args.seq_len, suite.steps,
                             suite.warmup, weights(shape, Path(folder))))
                for shape in shapes for config in configs]
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            results = list(pool.map(lambda run: run_config(*run), runs))
        # One warm-up step compiles each length; 512-token mBERT steps take minutes on a CPU.
        epoch_estimate = (epoch.estimate(args.data_dir, weights(epoch.SHAPE, Path(folder)),
                                         warmup=1, steps=args.epoch_steps, run_config=run_config)
                          if suite.epoch else None)
    document = report.build(command=command, machine=machine(), suite=args.suite,
                            settings={"batch": args.batch, "seq_len": args.seq_len,
                                      "steps": suite.steps, "warmup": suite.warmup,
                                      "jobs": args.jobs,
                                      "shapes": shapes, "configs": [c.name for c in configs]},
                            peak=peak, results=results, epoch=epoch_estimate)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.suite}.json").write_text(json.dumps(document, indent=2) + "\n")
    markdown = report.markdown(document)
    (args.out / f"{args.suite}.md").write_text(markdown)
    block = doc_block(args.out, args.suite)
    if block is not None:
        quote_in_doc(block, markdown)
    print(markdown)
    failed = [r for r in results if r["status"] == "failed"] or peak["status"] == "failed"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
