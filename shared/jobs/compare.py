"""The main job: both trainers on the same split, each in its own process, then the evaluator.

    python -m shared.jobs.compare                      # embedded sample + offline MiniLM, minutes on CPU
    python -m shared.jobs.compare --data-dir /kaggle/input/contradictory-my-dear-watson \
        --preset bert_base_multi --out runs/kaggle   # the Kaggle recipe (the default on Kaggle)

Writes OUT/tf_full, OUT/jax_lora (and OUT/jax_probe with --probe), then OUT/report/report.md.
Rerunning the command keeps a finished run and resumes an unfinished one when it was made with
the same inputs (config, weights, data; shared/runs/reuse.py); a run directory made with other
inputs stops the command before anything trains, with one line naming what differs, unless
--rerun is given (then those runs train again from scratch). A failing trainer is reported and
does not stop or touch the other runs; so is one whose run directory another process is
using (shared/runs/lock.py: another compare on the same --out, say), which it leaves alone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from shared.cli import (add_config_flags, config_flags, config_from_flags, error_line,
                        exit_on_bad_input)
from shared.data.spec import DataSpec, load
from shared.data.watson import KAGGLE_DATA_DIR
from shared.runs.lock import EXIT_LOCKED
from shared.runs.presets import KAGGLE_PRESET, preset_kind
from shared.runs.run_dir import MANIFEST

REPO = Path(__file__).resolve().parents[2]
# Off Kaggle the demo runs on the embedded sample (653 training / 280 validation rows) with the
# offline multilingual-e5-small on 2 CPU cores (README "What the demo shows": with it both
# trained methods beat chance; with MiniLM, `--preset all-minilm-l6-v2`, the replica does not),
# each method with a recipe that learns there within minutes. The recipes were chosen with
# MiniLM on the sample's training part (never its validation rows) and are used unchanged for
# e5: the trainers' own defaults are the Kaggle recipe for mBERT on 8,484 rows (lr 1e-5 full
# fine-tuning, 2e-4 LoRA), which barely move a small model in a few hundred steps. On Kaggle the
# trainers' own recipes apply.
DEMO_PRESET = "multilingual-e5-small"
DEMO_SEQUENCE_LENGTH = 128  # every sample pair fits under e5's tokenizer (99 % under MiniLM's)
DEMO_RECIPES = {
    # The replica pads every row to its sequence length and its step is the slowest here:
    # one epoch at 64 tokens (no sample pair is longer under e5's tokenizer; 19 % under MiniLM's).
    "tf_full": ["--epochs", "1", "--lr-per-replica", "1e-4", "--sequence-length", "64"],
    "jax_lora": ["--epochs", "7", "--lr", "1e-3"],
    "jax_probe": ["--epochs", "3", "--lr", "1e-2"],
}


def parse_args(argv=None) -> argparse.Namespace:
    on_kaggle = KAGGLE_DATA_DIR.is_dir()
    parser = argparse.ArgumentParser(
        prog="python -m shared.jobs.compare",
        description="Run tf_baseline (full fine-tune) and jax_lora (LoRA) on the same split, "
                    "then compare them with the evaluator.")
    add_config_flags(parser, DataSpec, title="data and split")
    parser.add_argument("--preset", default=None,
                        help=f"pretrained BERT or XLM-R for both trainers: keras-hub name, "
                             f"keras-hub preset folder or Hugging Face folder [default: "
                             f"{KAGGLE_PRESET} on Kaggle, else the offline {DEMO_PRESET}; "
                             f"all-minilm-l6-v2 is the English-only one]")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"),
                        help="folder for the run directories and the report [default: runs/compare]")
    parser.add_argument("--sequence-length", type=int,
                        default=None if on_kaggle else DEMO_SEQUENCE_LENGTH,
                        help="both trainers' maximum sequence length [default: the preset's 512 "
                             f"on Kaggle, else {DEMO_SEQUENCE_LENGTH}]")
    parser.add_argument("--epochs", type=int, default=None,
                        help="every run's epochs [default: the trainers' 3 on Kaggle, else each "
                             "run's demo recipe]")
    parser.add_argument("--demo-recipes", action=argparse.BooleanOptionalAction,
                        default=not on_kaggle,
                        help="each run's demo recipe (epochs, learning rate: DEMO_RECIPES in "
                             "shared/jobs/compare.py) before --epochs/--tf-args/--jax-args "
                             "[default: on, except on Kaggle]")
    parser.add_argument("--probe", action="store_true",
                        help="also train a JAX linear probe (head only) as a third run")
    parser.add_argument("--tf-args", default="", help="extra flags for tf_baseline/train.py, quoted")
    parser.add_argument("--jax-args", default="", help="extra flags for jax_lora/train.py, quoted")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed of every run (init, shuffling, dropout) [default: 0]")
    parser.add_argument("--rerun", action="store_true",
                        help="retrain from scratch the runs under --out that were made with other "
                             "inputs (without it such runs stop the command)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def trainer_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """One command line per run, named by its run directory."""
    # Every data-spec flag the user gave (dev part, extra rows, ...), as the trainers take them.
    common = [*config_flags(config_from_flags(DataSpec, vars(args))), "--seed", str(args.seed)]
    for flag, value in (("--preset", args.preset), ("--sequence-length", args.sequence_length)):
        if value is not None:
            common += [flag, str(value)]
    if args.quiet:
        common.append("--quiet")
    trainers = {"tf_full": ("tf_baseline", args.tf_args), "jax_lora": ("jax_lora", args.jax_args),
                "jax_probe": ("jax_lora", args.jax_args)}
    # The head alone, whatever adapter flags --jax-args gives the LoRA run.
    method = {"jax_probe": ["--method", "probe", "--targets", ""]}
    commands = {}
    for name, (trainer, extra) in trainers.items():
        if name == "jax_probe" and not args.probe:
            continue
        # Later flags win: the demo recipe, then --epochs, then the user's own trainer flags;
        # what makes the probe a probe comes last.
        commands[name] = [sys.executable, str(REPO / trainer / "train.py"), *common,
                          *(DEMO_RECIPES[name] if args.demo_recipes else []),
                          *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
                          *shlex.split(extra), *method.get(name, []),
                          "--run-dir", str(args.out / name)]
    return commands


def is_finished(run_dir: Path) -> bool:
    path = run_dir / MANIFEST
    return path.is_file() and json.loads(path.read_text()).get("status") == "finished"


def check_runs(commands: dict[str, list[str]], out: Path, rerun: bool) -> dict[str, list[str]]:
    """Ask each trainer whose run directory exists whether it may be kept or resumed (its
    --check mode: inputs compared, nothing written). Returns the commands to run, with
    --restart added for the runs to retrain; raises ValueError naming every run that differs
    when not `rerun`."""
    planned, refused = {}, []
    for name, command in commands.items():
        planned[name] = command
        if not (out / name / MANIFEST).is_file():
            continue
        check = subprocess.run(command + ["--check"], cwd=REPO, capture_output=True, text=True)
        if check.returncode == 0:
            continue
        error = error_line(check.stderr)
        if not rerun:
            refused.append(f"{name}: {error}")
            continue
        retry = subprocess.run(command + ["--check", "--restart"], cwd=REPO, capture_output=True,
                               text=True)
        if retry.returncode != 0:
            raise ValueError(f"{name}: {error_line(retry.stderr)}")
        print(f"[compare] {name}: {error}; --rerun: it trains again from scratch")
        planned[name] = command + ["--restart"]
    if refused:
        raise ValueError("runs under " + str(out) + " were made with other inputs (pass --rerun "
                         "to retrain them, or another --out): " + " | ".join(refused))
    return planned


def run_trainers(commands: dict[str, list[str]], out: Path) -> dict[str, str]:
    """Runs each trainer in its own process; returns {name: 'finished' | 'kept' | 'failed (...)'}."""
    outcome = {}
    for name, command in commands.items():
        run_dir = out / name
        if is_finished(run_dir) and "--restart" not in command:  # checked: same inputs
            print(f"[compare] {name}: {run_dir} holds this run, finished; kept")
            outcome[name] = "kept"
            continue
        print(f"[compare] {name}: {shlex.join(command)}", flush=True)
        started = time.perf_counter()
        code = subprocess.run(command, cwd=REPO).returncode
        seconds = time.perf_counter() - started
        if code == 0 and is_finished(run_dir):
            print(f"[compare] {name}: finished in {seconds:.0f} s")
            outcome[name] = "finished"
        elif code == EXIT_LOCKED:
            print(f"[compare] {name}: NOT RUN: {run_dir} is in use by another process (the "
                  f"error line above names it); left as it is, the other runs go on",
                  file=sys.stderr)
            outcome[name] = "failed (run directory in use by another process)"
        else:
            print(f"[compare] {name}: FAILED (exit code {code}) after {seconds:.0f} s; "
                  f"its output is above, the other runs go on", file=sys.stderr)
            outcome[name] = f"failed (exit code {code})"
    return outcome


def main(argv=None) -> int:
    args = parse_args(argv)
    with exit_on_bad_input():
        # Fail here, once, on bad data or a bad preset, rather than in each trainer.
        data = load(config_from_flags(DataSpec, vars(args)))
        args.data_dir, args.extra_train = data.data_dir, data.spec.extra_train
        if args.preset is None:
            args.preset = KAGGLE_PRESET if KAGGLE_DATA_DIR.is_dir() else DEMO_PRESET
        preset_kind(args.preset)
        print(f"[compare] data {data.data_dir}: {len(data.train)} train / {len(data.val)} "
              f"validation rows, split {data.split.fingerprint[:12]}; preset {args.preset}")
        commands = check_runs(trainer_commands(args), args.out, args.rerun)
    args.out.mkdir(parents=True, exist_ok=True)
    outcome = run_trainers(commands, args.out)
    done = [args.out / name for name, state in outcome.items() if not state.startswith("failed")]
    if done:
        from shared.evaluation.evaluate import evaluate
        report_dir = args.out / "report"
        with exit_on_bad_input():
            evaluate(done, report_dir)
        print(f"[compare] report: {report_dir / 'report.md'}")
    failed = {name: state for name, state in outcome.items() if state.startswith("failed")}
    if failed:
        print(f"[compare] failed runs: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
