"""Real epochs side by side: jax_lora against PyTorch + PEFT run the way its users run it, on
all-MiniLM-L6-v2 and multilingual-e5-small, on the real Watson training part.

    python -m benchmarks.epoch_peer                      # both models, the default runs
    python -m benchmarks.epoch_peer --presets multilingual-e5-small --limit 3000

Each run is a process of its own, started one after the other, so each has the machine alone:
- jax_lora: `python jax_lora/train.py --preset P --epochs 1 --lr LR` (its defaults otherwise:
  16 rows a step, length-grouped batches padded to a bucket, rank 16 on query/value, AdamW,
  constant rate), with an empty compilation cache: a first run, compiling every step;
- jax_lora_cached: the same command again on the cache the first run filled, as any later run
  (another seed, rate or run directory) finds it; needs jax_lora before it;
- jax_qlora_nf4 (on request): jax_lora with `--base-dtype nf4`, compiling;
- torch_peft: benchmarks/torch_epoch.py (transformers' Trainer with length grouping and
  DataCollatorWithPadding, the same recipe and rate; the length-grouped batches played in a
  shuffled order as jax_lora plays them), when torch, transformers and peft are installed.
The learning rate is one where both learn (--lr; the MiniLM study chose 5e-4 for LoRA).
Pooling: each trainer's own for the model (jax_lora's default: [CLS] through the pooler for
MiniLM, the token mean for e5, which has no pooler; PEFT's BertForSequenceClassification reads
[CLS] through a pooler, fresh and trained for e5), named in the table.
Reported per run: training seconds (jax_lora's include compiling, which is given apart),
examples/s and its ratio to PyTorch's, validation accuracy with its 95 % Wilson interval beside
the majority class, peak RSS, the frozen kernels' bytes and the padding of the training batches.
Writes <out>/epoch_peer.json and .md and updates the quote of the .md in BENCHMARKS.md (between
its markers).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from benchmarks.epoch import WATSON_DIR  # noqa: E402
from benchmarks.run import RESULTS, doc_block, machine, quote_in_doc  # noqa: E402
from shared.cli import exit_on_bad_input  # noqa: E402
from shared.runs.run_dir import atomic_write_text  # noqa: E402
from shared.runs.tokenization import MIN_SEQUENCE_LENGTH  # noqa: E402

RUNS = {  # name -> (label, extra jax_lora flags; None: the PyTorch peer)
    "jax_lora": ("JAX LoRA (jax_lora defaults), first run: compiling", []),
    "jax_lora_cached": ("JAX LoRA, the same again: steps from the compilation cache", []),
    "jax_qlora_nf4": ("JAX LoRA, base NF4 (--base-dtype nf4)", ["--base-dtype", "nf4"]),
    "torch_peft": ("PyTorch + PEFT LoRA (Trainer, group_by_length, dynamic padding)", None),
}
DEFAULT_RUNS = ("jax_lora", "jax_lora_cached", "torch_peft")
PRESETS = ("all-minilm-l6-v2", "multilingual-e5-small")
LEARNING_RATE = 5e-4
NAME = "epoch_peer"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help=f"comma-separated among {', '.join(RUNS)} "
                             f"[default: {','.join(DEFAULT_RUNS)}]")
    parser.add_argument("--presets", default=",".join(PRESETS),
                        help=f"comma-separated presets or aliases [default: {','.join(PRESETS)}]")
    parser.add_argument("--lr", type=float, default=LEARNING_RATE,
                        help=f"both trainers' learning rate [default: {LEARNING_RATE}]")
    parser.add_argument("--data-dir", type=Path, default=WATSON_DIR,
                        help=f"the real Watson CSV folder [default: {WATSON_DIR}]")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N rows of train.csv (smoke runs) [default: all]")
    parser.add_argument("--sequence-length", type=int, default=512,
                        help="tokens per row after truncation [default: 512, the recipe's]")
    parser.add_argument("--out", type=Path, default=RESULTS / NAME,
                        help=f"folder for {NAME}.json and .md [default: "
                             f"benchmarks/results/{NAME}]")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> list[str]:
    names = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = [name for name in names if name not in RUNS]
    if unknown or not names:
        raise ValueError(f"--runs {args.runs}: unknown {', '.join(unknown) or 'empty list'}; "
                         f"choose among {', '.join(RUNS)}")
    if "jax_lora_cached" in names and (
            "jax_lora" not in names or names.index("jax_lora") > names.index("jax_lora_cached")):
        raise ValueError(f"--runs {args.runs}: jax_lora_cached runs on the cache jax_lora fills; "
                         f"list jax_lora before it")
    if not args.lr > 0:
        raise ValueError(f"--lr {args.lr}: must be > 0")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be >= 1")
    if not MIN_SEQUENCE_LENGTH <= args.sequence_length <= 512:
        raise ValueError(f"--sequence-length {args.sequence_length}: must lie in "
                         f"[{MIN_SEQUENCE_LENGTH}, 512]")
    if not (args.data_dir / "train.csv").is_file():
        raise FileNotFoundError(f"--data-dir {args.data_dir}: no train.csv; pass the Watson "
                                f"CSV folder")
    return names


def run_jax(flags: list[str], args: argparse.Namespace, preset: str, run_dir: Path,
            cache: Path) -> dict:
    command = [sys.executable, str(REPO / "jax_lora" / "train.py"), "--preset", preset,
               "--epochs", "1", "--lr", str(args.lr), "--data-dir", str(args.data_dir),
               "--sequence-length", str(args.sequence_length), "--run-dir", str(run_dir),
               "--quiet", "--no-predict-test", *flags,
               *(["--limit", str(args.limit)] if args.limit else [])]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO),
                               "JAX_COMPILATION_CACHE_DIR": str(cache)})
    if done.returncode != 0:
        return {"status": "failed", "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    epoch = manifest["epochs"][0]
    predictions = pd.read_csv(run_dir / "predictions.csv")
    examples = manifest["steps"] * manifest["global_batch"] * manifest.get("accumulate", 1)
    return {"status": "ok", "command": shlex.join(command[1:]),
            "train_s": epoch["train_seconds"], "compile_s": epoch["compile_seconds"],
            "programs": manifest.get("compilation"),
            "examples": examples, "examples_per_s": examples / epoch["train_seconds"],
            **accuracy(predictions["label"].to_numpy(), predictions["pred"].to_numpy()),
            "val_s": epoch["eval_seconds"], "pooling": manifest["config"]["pooling"],
            "peak_rss_mb": manifest["peak_host_rss_mb"], "wall_s": time.perf_counter() - began,
            "frozen_kernel_bytes": manifest["model"]["frozen_kernel_bytes"],
            "split_fingerprint": manifest["split"]["fingerprint"],
            "padding": jax_padding(args, preset)}


def accuracy(labels, predicted) -> dict:
    """Validation accuracy, its 95 % Wilson interval and the majority class's rate."""
    import numpy as np
    from scipy.stats import binomtest

    labels, predicted = np.asarray(labels), np.asarray(predicted)
    correct = int((labels == predicted).sum())
    interval = binomtest(correct, len(labels)).proportion_ci(0.95, method="wilson")
    return {"val_accuracy": correct / len(labels),
            "val_interval": [float(interval.low), float(interval.high)],
            "majority": float(np.bincount(labels).max() / len(labels)),
            "val_rows": len(labels)}


def jax_padding(args: argparse.Namespace, preset: str) -> dict:
    """Padding of jax_lora's epoch-0 batches, from its own input pipeline and tokenizer."""
    import numpy as np

    from benchmarks.padding import lengths_of
    from jax_lora.config import TrainConfig
    from jax_lora.input_pipeline import bucket_length, epoch_batches
    from shared.data.spec import DataSpec, load

    recipe = TrainConfig(sequence_length=args.sequence_length)
    lengths = lengths_of(preset, args.data_dir, args.sequence_length,
                         load(DataSpec(data_dir=args.data_dir, limit=args.limit)))
    batches = epoch_batches(lengths, recipe.batch_per_device, seed=recipe.seed, epoch=0,
                            group_by_length=recipe.group_by_length)
    padded = [bucket_length(int(lengths[rows].max()), args.sequence_length) for rows in batches]
    padded_tokens = sum(p * len(rows) for p, rows in zip(padded, batches))
    real_tokens = int(sum(lengths[rows].sum() for rows in batches))
    return {"mean_padded_length": float(np.mean(padded)),
            "padding_fraction": 1 - real_tokens / padded_tokens}


def run_torch(args: argparse.Namespace, preset: str, out_file: Path) -> dict:
    from shared.runs.presets import resolve_alias

    missing = [m for m in ("torch", "transformers", "peft", "accelerate")
               if importlib.util.find_spec(m) is None]
    if missing:
        return {"status": "skipped", "reason": f"not installed: {', '.join(missing)} "
                                               f"(bash benchmarks/setup_peer.sh)"}
    command = [sys.executable, "-m", "benchmarks.torch_epoch", "--data-dir", str(args.data_dir),
               "--preset", str(resolve_alias(preset)), "--lr", str(args.lr),
               "--batch-order", "shuffled",
               "--sequence-length", str(args.sequence_length), "--out", str(out_file),
               *(["--limit", str(args.limit)] if args.limit else [])]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        return {"status": "failed", "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    result = json.loads(out_file.read_text())
    return {"status": "ok", "command": shlex.join(command[1:]),
            "train_s": result["train"]["seconds"], "compile_s": None,
            "examples": result["train"]["examples"],
            "examples_per_s": result["train"]["examples_per_s"],
            **accuracy(result["validation"]["labels"], result["validation"]["predicted"]),
            "pooling": result["recipe"]["pooling"],
            "val_s": result["validation"]["seconds"], "peak_rss_mb": result["peak_rss_mb"],
            "wall_s": time.perf_counter() - began, "frozen_kernel_bytes": None,
            "split_fingerprint": result["data"]["split_fingerprint"],
            "padding": {k: result["padding"][k]
                        for k in ("mean_padded_length", "padding_fraction")},
            "versions": result["versions"], "optimizer": result["recipe"]["optimizer"],
            "threads": result["intra_op_threads"]}


def markdown(doc: dict) -> str:
    m, settings = doc["machine"], doc["settings"]
    lines = ["# Real epochs side by side (real Watson training part)", "",
             f"Command: `{doc['command']}`  ",
             f"Date (UTC): {doc['date_utc']}, git {m['git_commit'][:12]}"
             f"{' (dirty tree)' if m['git_dirty'] else ''}  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB. One process at a "
             f"time, one after the other. Learning rate {settings['lr']:g} for every run; "
             f"sequence length {settings['sequence_length']}"
             + (f"; the first {settings['limit']} rows of train.csv" if settings["limit"] else "")
             + ".", "",
             "| model | run | pooling | training s | of which compiling | examples/s | "
             "× PyTorch's | val accuracy [95 % CI] | majority class | peak RSS MiB | "
             "frozen kernels MiB | mean padded length | padding |",
             "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for preset, runs in doc["runs"].items():
        peer = runs.get("torch_peft", {})
        for name, run in runs.items():
            label = RUNS[name][0]
            if run["status"] != "ok":
                lines.append(f"| {preset} | {label} | {run['status']}: "
                             f"{run.get('reason') or run.get('error')} " + "| " * 10 + "|")
                continue
            ratio = (f"{run['examples_per_s'] / peer['examples_per_s']:.2f}"
                     if peer.get("status") == "ok" else "–")
            frozen = run["frozen_kernel_bytes"]
            low, high = run["val_interval"]
            lines.append(
                f"| {preset} | {label} | {run['pooling']} | {run['train_s']:.0f} "
                f"| {'–' if run['compile_s'] is None else format(run['compile_s'], '.0f')} "
                f"| {run['examples_per_s']:.2f} | {ratio} "
                f"| {run['val_accuracy']:.4f} [{low:.4f}, {high:.4f}] | {run['majority']:.4f} "
                f"| {run['peak_rss_mb']:.0f} "
                f"| {'–' if frozen is None else format(frozen['stored'] / 2**20, '.1f')} "
                f"| {run['padding']['mean_padded_length']:.1f} "
                f"| {100 * run['padding']['padding_fraction']:.1f} % |")
    fingerprints = {run["split_fingerprint"][:12] for runs in doc["runs"].values()
                    for run in runs.values() if run["status"] == "ok"}
    lines += ["", f"Split fingerprint(s): {', '.join(sorted(fingerprints))} (one value: every run "
                  f"trained and validated on the same rows).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    with exit_on_bad_input():
        names = check(args)
    command = shlex.join(["python", "-m", "benchmarks.epoch_peer",
                          *(sys.argv[1:] if argv is None else argv)])
    runs = {}
    with tempfile.TemporaryDirectory(prefix="epoch-peer-") as folder:
        for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
            runs[preset] = {}
            for name in names:
                print(f"epoch_peer: {preset} {name} ...", file=sys.stderr, flush=True)
                flags = RUNS[name][1]
                # Each compiling run starts from an empty cache; the cached run reads the one
                # jax_lora filled.
                cache = Path(folder) / preset.replace("/", "_") / (
                    "jax_lora" if name == "jax_lora_cached" else name) / "cache"
                runs[preset][name] = (
                    run_torch(args, preset, Path(folder) / "torch.json") if flags is None
                    else run_jax(flags, args, preset, cache.parent / f"run_{name}", cache))
                print(f"epoch_peer: {preset} {name} {runs[preset][name]['status']}",
                      file=sys.stderr, flush=True)
    doc = {"schema": "watson-epoch-peer/2", "command": command,
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(), "settings": {"data_dir": str(args.data_dir),
                                              "limit": args.limit, "lr": args.lr,
                                              "sequence_length": args.sequence_length},
           "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / f"{NAME}.json", json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    atomic_write_text(args.out / f"{NAME}.md", text)
    block = doc_block(args.out, NAME)
    if block is not None:
        quote_in_doc(block, text)
    print(text)
    return 1 if any(run["status"] == "failed" for by_name in runs.values()
                    for run in by_name.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
