"""Real epochs side by side: jax_lora's default recipe (float32 and NF4 base) against PyTorch +
PEFT run the way its users run it, on all-MiniLM-L6-v2 and the real Watson training part.

    python -m benchmarks.epoch_peer                      # all three, one after the other
    python -m benchmarks.epoch_peer --runs jax_lora,torch_peft

Each run is a process of its own, started one after the other, so each has the machine alone:
- jax_lora, jax_qlora_nf4: `python jax_lora/train.py --preset MINILM --epochs 1` (the default
  recipe otherwise: 16 rows a step, rows cut at 512 tokens, length-grouped batches padded to a
  bucket, rank 16 on query/value, AdamW 2e-4), the second with `--base-dtype nf4`; read back
  from the run's manifest and history;
- torch_peft: benchmarks/torch_epoch.py (transformers' Trainer with length grouping and
  DataCollatorWithPadding, the same recipe), when torch, transformers and peft are installed.
Reported per run: training seconds (jax_lora's include compiling, which is given apart), examples/s,
validation accuracy after the epoch, peak RSS of the process, the frozen kernels' bytes and the
padding of the training batches. Writes <out>/epoch_peer.json and .md and updates the quote of the
.md in BENCHMARKS.md (between its markers).
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
    "jax_lora": ("JAX LoRA (jax_lora defaults)", []),
    "jax_qlora_nf4": ("JAX LoRA, base NF4 (--base-dtype nf4)", ["--base-dtype", "nf4"]),
    "torch_peft": ("PyTorch + PEFT LoRA (Trainer, group_by_length, dynamic padding)", None),
}
NAME = "epoch_peer"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=",".join(RUNS),
                        help=f"comma-separated among {', '.join(RUNS)} [default: all]")
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
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be >= 1")
    if not MIN_SEQUENCE_LENGTH <= args.sequence_length <= 512:
        raise ValueError(f"--sequence-length {args.sequence_length}: must lie in "
                         f"[{MIN_SEQUENCE_LENGTH}, 512]")
    if not (args.data_dir / "train.csv").is_file():
        raise FileNotFoundError(f"--data-dir {args.data_dir}: no train.csv; pass the Watson "
                                f"CSV folder")
    return names


def run_jax(flags: list[str], args: argparse.Namespace, run_dir: Path) -> dict:
    from shared.runs.presets import minilm_dir

    command = [sys.executable, str(REPO / "jax_lora" / "train.py"), "--preset",
               str(minilm_dir()), "--epochs", "1", "--data-dir", str(args.data_dir),
               "--sequence-length", str(args.sequence_length), "--run-dir", str(run_dir),
               "--quiet", *flags, *(["--limit", str(args.limit)] if args.limit else [])]
    began = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        return {"status": "failed", "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    epoch = manifest["epochs"][0]
    val_accuracy = float(pd.read_csv(run_dir / "history.csv")["val_accuracy"].iloc[-1])
    examples = manifest["steps"] * manifest["global_batch"] * manifest.get("accumulate", 1)
    return {"status": "ok", "command": shlex.join(command[1:]),
            "train_s": epoch["train_seconds"], "compile_s": epoch["compile_seconds"],
            "examples": examples, "examples_per_s": examples / epoch["train_seconds"],
            "val_accuracy": val_accuracy, "val_s": epoch["eval_seconds"],
            "peak_rss_mb": manifest["peak_host_rss_mb"], "wall_s": time.perf_counter() - began,
            "frozen_kernel_bytes": manifest["model"]["frozen_kernel_bytes"],
            "split_fingerprint": manifest["split"]["fingerprint"],
            "padding": jax_padding(args)}


def jax_padding(args: argparse.Namespace) -> dict:
    """Padding of jax_lora's epoch-0 batches, from its own input pipeline and tokenizer."""
    import numpy as np

    from jax_lora.config import TrainConfig
    from jax_lora.input_pipeline import bucket_length, encode, epoch_batches
    from jax_lora.tokenizer import Tokenizer
    from shared.data.spec import DataSpec, load
    from shared.runs.presets import minilm_dir

    recipe = TrainConfig(sequence_length=args.sequence_length)
    data = load(DataSpec(data_dir=args.data_dir, limit=args.limit))
    lengths = encode(Tokenizer.from_preset_dir(minilm_dir(), "hf"), data.train,
                     args.sequence_length).lengths
    batches = epoch_batches(lengths, recipe.batch_per_device, seed=recipe.seed, epoch=0,
                            group_by_length=recipe.group_by_length)
    padded = [bucket_length(int(lengths[rows].max()), args.sequence_length) for rows in batches]
    padded_tokens = sum(p * len(rows) for p, rows in zip(padded, batches))
    real_tokens = int(sum(lengths[rows].sum() for rows in batches))
    return {"mean_padded_length": float(np.mean(padded)),
            "padding_fraction": 1 - real_tokens / padded_tokens}


def run_torch(args: argparse.Namespace, out_file: Path) -> dict:
    missing = [m for m in ("torch", "transformers", "peft", "accelerate")
               if importlib.util.find_spec(m) is None]
    if missing:
        return {"status": "skipped", "reason": f"not installed: {', '.join(missing)} "
                                               f"(bash benchmarks/setup_peer.sh)"}
    command = [sys.executable, "-m", "benchmarks.torch_epoch", "--data-dir", str(args.data_dir),
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
            "val_accuracy": result["validation"]["accuracy"],
            "val_s": result["validation"]["seconds"], "peak_rss_mb": result["peak_rss_mb"],
            "wall_s": time.perf_counter() - began, "frozen_kernel_bytes": None,
            "split_fingerprint": result["data"]["split_fingerprint"],
            "padding": {k: result["padding"][k]
                        for k in ("mean_padded_length", "padding_fraction")},
            "versions": result["versions"], "optimizer": result["recipe"]["optimizer"],
            "threads": result["intra_op_threads"]}


def markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# Real epochs side by side (MiniLM, real Watson training part)", "",
             f"Command: `{doc['command']}`  ",
             f"Date (UTC): {doc['date_utc']}, git {m['git_commit'][:12]}"
             f"{' (dirty tree)' if m['git_dirty'] else ''}  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB. One process at a "
             f"time, one after the other.", "",
             "| run | training s | of which compiling | examples/s | × JAX LoRA's | "
             "val accuracy | peak RSS MiB | frozen kernels MiB | mean padded length | "
             "padding |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    reference = doc["runs"].get("jax_lora", {})
    for name, run in doc["runs"].items():
        label = RUNS[name][0]
        if run["status"] != "ok":
            lines.append(f"| {label} | {run['status']}: {run.get('reason') or run.get('error')} "
                         + "| " * 8 + "|")
            continue
        ratio = (f"{run['examples_per_s'] / reference['examples_per_s']:.2f}"
                 if reference.get("status") == "ok" else "–")
        frozen = run["frozen_kernel_bytes"]
        lines.append(
            f"| {label} | {run['train_s']:.0f} "
            f"| {'–' if run['compile_s'] is None else format(run['compile_s'], '.0f')} "
            f"| {run['examples_per_s']:.2f} | {ratio} | {run['val_accuracy']:.4f} "
            f"| {run['peak_rss_mb']:.0f} "
            f"| {'–' if frozen is None else format(frozen['stored'] / 2**20, '.1f')} "
            f"| {run['padding']['mean_padded_length']:.1f} "
            f"| {100 * run['padding']['padding_fraction']:.1f} % |")
    fingerprints = {run["split_fingerprint"][:12] for run in doc["runs"].values()
                    if run["status"] == "ok"}
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
        for name in names:
            print(f"epoch_peer: {name} ...", file=sys.stderr, flush=True)
            flags = RUNS[name][1]
            runs[name] = (run_torch(args, Path(folder) / "torch.json") if flags is None
                          else run_jax(flags, args, Path(folder) / name))
            print(f"epoch_peer: {name} {runs[name]['status']}", file=sys.stderr, flush=True)
    doc = {"schema": "watson-epoch-peer/1", "command": command,
           "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine(), "settings": {"data_dir": str(args.data_dir),
                                              "limit": args.limit,
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
    return 1 if any(run["status"] == "failed" for run in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
