"""A fair comparison of fine-tuning methods: each at its own learning rate, chosen on a dev part
(never the validation rows), over several seeds, trained until the dev curve stops improving.

    python -m shared.jobs.study --out runs/study                    # every method, MiniLM, 3 seeds
    python -m shared.jobs.study --out runs/study --dry-run          # the plan and its minutes
    python -m shared.jobs.study --out runs/s --methods lora,probe --seeds 2 --grid lora=1e-4,1e-3
    python -m shared.jobs.study --design e5 --out runs/study_e5 --dry-run   # issue 33's plan

--design picks the method table and how rates, budgets and dev parts are chosen
(shared/jobs/study_design.py): minilm (the default, the first study's) or e5. A design other
than minilm writes STUDY_DIR/plan.json at its first start and refuses, later, any flag that
would change it: the plan is fixed before any final run.

Stages, each run a trainer process (METHODS in shared/jobs/study_plan.py says which flags make a
method, and its learning-rate grid):
  1. select  per method and grid rate: seed 0, --select-rows rows of the training part minus
             dev, --select-steps steps, the dev part evaluated; the best dev accuracy wins.
             With rungs (e5): every rate at the first rung's steps, the best few at the next
             rung's; the best trial past the first rung gives the rate and the final budget.
  2. timing  per method: a few timed steps at the chosen rate (seconds per step, this machine).
  3. final   per seed and method: the training part minus dev at the chosen rate, up to
             --max-epochs, stopped after --patience dev evaluations without a better one; its
             validation predictions come from its best dev step. tf_full: the starter's recipe.
  4. report  STUDY_DIR/report (shared/evaluation/study_report.py).
STUDY_DIR/study.json (rewritten after each run) records the settings, each method's grid and
chosen rate, its step timing (with its timing run) and every select and final run with its
status; each run's output goes to STUDY_DIR/logs/<run dir>.log. Rerunning the
same command keeps finished runs (without starting their trainer when study.json shows the same
flags and the weights and data are unchanged) and resumes unfinished ones; a run the trainer
refuses (made with other inputs) fails with the trainer's one-line error. A failing run does not
stop the others; the command then exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.cli import EXIT_BAD_INPUT, check_fields, error_line, exit_on_bad_input
from shared.data.spec import DataSpec, file_checksums, load
from shared.jobs import study_design as design_module
from shared.jobs import study_plan as plan
from shared.jobs.compare import REPO
from shared.jobs.study_plan import FAILED, FINISHED, PENDING, Run, Study
from shared.runs.presets import describe_preset, minilm_dir, preset_kind, resolve_alias
from shared.runs.reuse import RunStateError, code_version, input_differences, read_manifest
from shared.runs.run_dir import atomic_write_text
from shared.runs.tokenization import MIN_SEQUENCE_LENGTH

LOGS = "logs"
TF_RECIPE_EPOCHS = 3  # tf_baseline's default --epochs, the Kaggle starter's: tf_full's estimate


class OneLineParser(argparse.ArgumentParser):
    """Bad flags end in one `error:` line and exit code 2, as bad input does everywhere."""

    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def parse_args(argv) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m shared.jobs.study",
                           description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--out", type=Path, required=True, metavar="DIR", help="the study folder (STUDY_DIR)")
    add("--design", choices=tuple(design_module.DESIGNS), default="minilm",
        help="the study's design: its methods, grids, rungs, schedule and defaults of the flags "
             "below (shared/jobs/study_design.py) [default: minilm]")
    add("--calibrate", action="append", default=[], metavar="METHOD=EVALS_CSV",
        help="--dry-run: a run's evals.csv on this machine gives METHOD's seconds per step "
             "[default: the design's calibration runs]")
    add("--preset", metavar="PRESET",
        help="pretrained BERT for every run [default: the offline all-MiniLM-L6-v2]")
    add("--data-dir", type=Path, metavar="DIR",
        help="Watson CSV folder [default: the Kaggle folder if present, else data/sample]")
    add("--methods", metavar="A,B", default=",".join(plan.METHODS),
        help=f"methods to compare, from {', '.join(plan.METHODS)} [default: all]")
    add("--seeds", type=int, metavar="N", default=3,
        help="final runs per method, seeds 0.. [default: 3]")
    add("--method-seeds", action="append", default=[], metavar="METHOD=N",
        help="final runs of METHOD, when fewer than --seeds (seeds 0..N-1) [default: --seeds]")
    add("--grid", action="append", default=[], metavar="METHOD=LR,LR",
        help="learning rates the select stage tries for METHOD [default: METHODS' three]")
    add("--method-args", action="append", default=[], metavar='METHOD="FLAGS"',
        help="extra trainer flags for METHOD's runs (not those the study sets: --lr, --seed, "
             "--epochs, data flags, ...)")
    add("--select-rows", type=int, metavar="N", default=2000,
        help="training rows of a selection trial [default: 2000, or all when fewer]")
    add("--select-steps", type=int, metavar="N", default=300,
        help="optimizer steps of a selection trial [default: 300, 2.4 passes over 2,000 rows "
             "at batch 16]")
    add("--dev-fraction", type=float, metavar="X", default=0.15,
        help="share of the training part's premises held out as the dev part [default: 0.15]")
    add("--dev-seed", type=int, metavar="N", default=0,
        help="seed of the dev part and the subsets [default: 0]")
    add("--eval-every", type=int, metavar="N",
        help="optimizer steps between dev evaluations [default: --select-steps / 4]")
    add("--patience", type=int, metavar="N", default=4,
        help="a final run stops after this many dev evaluations without a better one "
             "[default: 4]")
    add("--max-epochs", type=int, metavar="N", default=10,
        help="a final run's epochs at most [default: 10]")
    add("--sequence-length", type=int, metavar="N", default=128,
        help="tokens per pair, every run [default: 128, 99 %% of the sample's pairs fit]")
    add("--batch-per-device", type=int, metavar="N", default=16,
        help="rows per device per step [default: 16]")
    add("--dry-run", action="store_true",
        help="print every run and the minutes each stage should take; train nothing")
    add("--quiet", action="store_true", help="no progress bars in the runs' logs")
    known, _ = parser.parse_known_args(argv)
    defaults = dict(design_module.DESIGNS[known.design].defaults)
    defaults.pop("method_seeds", None)  # an append flag: merged in build_study instead
    parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def check_numbers(args: argparse.Namespace) -> None:
    checks = [("seeds", args.seeds >= 1, "must be >= 1"),
              ("select-rows", args.select_rows >= 1, "must be >= 1"),
              ("select-steps", args.select_steps >= 1, "must be >= 1"),
              ("dev-fraction", 0 < args.dev_fraction < 1,
               "must lie in (0, 1): learning rates and best steps are chosen on the dev part"),
              ("eval-every", args.eval_every is None or args.eval_every >= 1, "must be >= 1"),
              ("patience", args.patience >= 0, "must be >= 0 (0 = never stop early)"),
              ("max-epochs", args.max_epochs >= 1, "must be >= 1"),
              ("sequence-length", args.sequence_length >= MIN_SEQUENCE_LENGTH,
               f"must be >= {MIN_SEQUENCE_LENGTH}"),
              ("batch-per-device", args.batch_per_device >= 1, "must be >= 1")]
    check_fields(args, checks)


def build_study(args: argparse.Namespace, argv: list[str]) -> Study:
    """Every flag, the data and the preset checked; ValueError/DataError on bad input."""
    check_numbers(args)
    design = design_module.DESIGNS[args.design]
    table = design.methods
    names = plan.parse_methods(args.methods, table)
    grids = plan.parse_assignments("--grid", args.grid, names)
    extras = plan.parse_assignments("--method-args", args.method_args, names)
    counts = plan.parse_assignments("--method-seeds", args.method_seeds, names)
    # The design's fewer seeds for its secondary methods, unless a flag says otherwise.
    planned = plan.parse_assignments("--method-seeds", [
        value for value in design.defaults.get("method_seeds", [])
        if value.partition("=")[0] in names], names)
    counts = {**{name: text for name, text in planned.items()
                 if int(text) <= args.seeds}, **counts}
    methods = {name: plan.MethodPlan(
        name, table[name],
        plan.parse_grid(name, grids[name], table) if name in grids else table[name].grid,
        plan.parse_method_args(name, extras[name]) if name in extras else ())
        for name in names}
    for name in names:  # parents first: METHODS lists them before their children
        parent = methods[name].method.needs
        parent_seeds = None if parent not in methods else (methods[parent].seeds or args.seeds)
        if name in counts:
            methods[name].seeds = plan.parse_seeds(name, counts[name], args.seeds, parent_seeds,
                                                   table)
        elif parent_seeds is not None and parent_seeds < args.seeds:
            methods[name].seeds = parent_seeds
    check_out(args.out)
    data = load(DataSpec(data_dir=args.data_dir, dev_fraction=args.dev_fraction,
                         dev_seed=args.dev_seed))
    preset = resolve_alias(args.preset) if args.preset is not None else str(minilm_dir())
    preset_kind(preset)
    settings = plan.Settings(
        preset=preset, data_dir=str(data.data_dir), sequence_length=args.sequence_length,
        seeds=tuple(range(args.seeds)), select_rows=args.select_rows,
        select_steps=args.select_steps, dev_fraction=args.dev_fraction, dev_seed=args.dev_seed,
        eval_every=args.eval_every or max(1, args.select_steps // 4), patience=args.patience,
        max_epochs=args.max_epochs, batch_per_device=args.batch_per_device,
        target_method=plan.TARGET_METHOD if plan.TARGET_METHOD in names else names[0])
    study = Study(args.out.resolve(), settings, methods, min(args.select_rows, len(data.train)),
                  len(data.train), "python -m shared.jobs.study " + shlex.join(argv), args.quiet,
                  design=design,
                  machine=None if design.name == "minilm" else machine_record())
    study.runs = plan.plan_runs(study)
    return study


def check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; pass a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / plan.STUDY_JSON).is_file():
        raise ValueError(f"--out {out}: folder holds files but no {plan.STUDY_JSON}; pass a new "
                         f"or empty folder, or a study's")


def previous_study(out: Path) -> dict:
    """The study.json an earlier invocation wrote, or {}."""
    path = out / plan.STUDY_JSON
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}); move it away to start the study "
                         f"afresh") from None


# ---------------------------------------------------------------- one run

class Runner:
    """Runs trainers (or keeps their finished runs) under one folder and records the outcome."""

    def __init__(self, study: Study, base: Path, previous: dict[str, dict], save):
        self.study, self.base, self.previous, self.save = study, base, previous, save
        # What a kept run must still match: reuse.py's rule, weights and data files alike.
        self.inputs = {"weights": describe_preset(study.settings.preset),
                       "data_sha256": file_checksums(Path(study.settings.data_dir))}

    def execute(self, run: Run) -> None:
        """Train `run` (resume it, or keep it finished); update it and study.json."""
        args = plan.trainer_args(self.study, run, self.base)
        run_dir = self.base / run.run_dir
        before, earlier = manifest_of(run_dir), self.previous.get(run.run_dir, {})
        if self.is_kept(before, earlier, args):
            self.finish(run, before, earlier.get("minutes"), args, "kept")
            return
        script = REPO / self.study.methods[run.method].method.trainer / "train.py"
        log = self.base / LOGS / f"{run.run_dir}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        with open(log, "w") as handle:
            handle.write(f"$ {shlex.join([sys.executable, str(script), *args])}\n")
            handle.flush()
            code = subprocess.run([sys.executable, str(script), *args], cwd=REPO,
                                  stdout=handle, stderr=subprocess.STDOUT).returncode
        minutes = (time.perf_counter() - began) / 60
        after = manifest_of(run_dir)
        if code == 0 and after is not None and after.get("status") == FINISHED:
            # The trainer keeps a finished run it was asked for again (other result-neutral
            # flags, e.g. --quiet): then the minutes are the earlier training's.
            trained = before is None or before.get("finished_at") != after.get("finished_at")
            self.finish(run, after, minutes if trained else earlier.get("minutes"), args,
                        f"finished in {minutes:.1f} min" if trained else "kept")
        else:
            run.status, run.minutes, run.args = FAILED, minutes, args
            kept_log = f"; log {log}" if self.base == self.study.out else ""  # not --dry-run's
            run.error = f"{error_line(log.read_text())} (exit code {code}{kept_log})"
            self.save()
            progress(run, f"FAILED after {minutes:.1f} min: {run.error}")

    def is_kept(self, manifest: dict | None, earlier: dict, args: list[str]) -> bool:
        """Finished with these very flags, weights and data: the trainer would keep it."""
        return (manifest is not None and manifest.get("status") == FINISHED
                and earlier.get("args") == args
                and not input_differences(manifest, config=manifest.get("config") or {},
                                          **self.inputs))

    def finish(self, run: Run, manifest: dict, minutes, args: list[str], outcome: str) -> None:
        best = manifest.get("best") or {}
        run.status, run.minutes, run.args, run.error = FINISHED, minutes, args, None
        run.dev_accuracy, run.dev_loss = best.get("dev_accuracy"), best.get("dev_loss")
        self.save()
        progress(run, outcome + ("" if run.dev_accuracy is None
                                 else f", dev accuracy {run.dev_accuracy:.4f}"))


def manifest_of(run_dir: Path) -> dict | None:
    """The run's manifest; None when there is none or it is damaged (the trainer decides)."""
    try:
        return read_manifest(run_dir)
    except RunStateError:
        return None


def progress(run: Run, outcome: str) -> None:
    """The run's one line: stage, method, learning rate, seed, (steps,) what happened."""
    lr = plan.lr_text(run.lr) if run.lr is not None else "recipe"  # tf_full's, or a default
    steps = "" if run.budget is None or run.stage != "select" else f" {run.budget} steps"
    stream = sys.stderr if run.status == FAILED else sys.stdout
    print(f"[study] {run.stage} {run.method} lr {lr}{steps} seed {run.seed}: {outcome}",
          file=stream, flush=True)


def skip(run: Run, reason: str, save) -> None:
    run.status, run.error = PENDING, f"not run: {reason}"
    save()
    progress(run, run.error)


def machine_record() -> dict:
    """The machine a study starts on (study.json "machine"): CPU model, cores, memory, the
    vector extensions XLA can use, and the OS."""
    cpuinfo, meminfo = proc_fields("/proc/cpuinfo"), proc_fields("/proc/meminfo")
    flags = set(cpuinfo.get("flags", "").split())
    memory = meminfo.get("MemTotal", "").split()
    return {"cpu": cpuinfo.get("model name") or platform.processor() or "unknown CPU",
            "cores": os.cpu_count(),
            "memory_gib": round(int(memory[0]) / 2 ** 20, 1) if memory else None,
            "vector_extensions": sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512_bf16",
                                                 "amx_bf16", "amx_tile"}),
            "platform": platform.platform()}


def proc_fields(path: str) -> dict[str, str]:
    """`name: value` lines of a /proc file, the first of each name; {} where there is none."""
    fields: dict[str, str] = {}
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep:
                fields.setdefault(name.strip(), value.strip())
    return fields


def machine(manifest: dict) -> str:
    """CPU model and cores, and the accelerators the run used, if any."""
    cpu = proc_fields("/proc/cpuinfo").get("model name") or platform.processor() or "unknown CPU"
    accelerators = [str(d) for d in (manifest.get("devices") or {}).get("devices", [])
                    if "cpu" not in str(d).lower()]
    return f"{cpu}, {os.cpu_count()} cores" + (
        f"; {len(accelerators)} x {accelerators[0]}" if accelerators else "")


# ---------------------------------------------------------------- stages

def select_stage(study: Study, runner: Runner) -> None:
    for name, method in study.methods.items():
        trials = [r for r in study.runs if r.stage == "select" and r.method == name]
        parent = method.method.parent
        for trial in trials:
            if parent is not None and study.methods[parent].chosen_lr is None:
                skip(trial, f"{parent}'s selection has no finished trial", runner.save)
            else:
                runner.execute(trial)
        if study.design.halving and trials:
            trials += later_rungs(study, runner, name, trials)
        source = method.method.recipe_from
        if source is not None:
            method.chosen_lr = study.methods[source].chosen_lr
            method.chosen_budget = study.methods[source].chosen_budget
        elif study.design.halving:
            method.chosen_lr, method.chosen_budget = design_module.choose_lr_and_budget(trials)
        else:
            method.chosen_lr = plan.choose_lr(trials)
        for run in study.runs:
            if run.stage == "final" and run.method == name:
                run.lr = method.chosen_lr
        runner.save()


def later_rungs(study: Study, runner: Runner, name: str, first: list[Run]) -> list[Run]:
    """Successive halving past the first rung: the best `keep` rates of each rung train again
    at the next rung's budget (a new run: the schedule is fitted to the budget). Each rung's
    trials join study.runs after the method's earlier ones, so study.json records them all."""
    trials, rung_trials = [], first
    for k, rung in enumerate(study.design.rungs[1:], start=1):
        rates = design_module.rung_rates(rung_trials, rung.keep)
        rung_trials = [plan.rung_run(study, name, k, lr) for lr in rates]
        last = max(i for i, r in enumerate(study.runs) if r.stage == "select" and r.method == name)
        study.runs[last + 1:last + 1] = rung_trials
        for trial in rung_trials:
            runner.execute(trial)
        trials += rung_trials
    return trials


def time_method(study: Study, runner: Runner, name: str) -> dict:
    """One timed run at the method's chosen rate (or its trainer's default before a choice);
    its study.json "timing" entry (step_s, machine, ... once it finished)."""
    method = study.methods[name]
    run = plan.timing_run(name, method.chosen_lr)
    runner.execute(run)
    entry = {"run": run.record()}
    if run.status == FINISHED:
        manifest = read_manifest(runner.base / run.run_dir)
        entry.update(plan.timing_record(manifest, method.method.trainer, machine(manifest)))
    return entry


def final_stage(study: Study, runner: Runner) -> None:
    finished = set()  # (method, seed) of the final runs that finished
    for run in (r for r in study.runs if r.stage == "final"):
        method = study.methods[run.method]
        parent = method.method.needs
        if method.grid and method.chosen_lr is None:
            skip(run, "no selection trial finished", runner.save)
        elif method.method.recipe_from and method.chosen_lr is None:
            skip(run, f"{parent}'s selection has no finished trial", runner.save)
        elif parent is not None and (parent, run.seed) not in finished:
            skip(run, f"{parent}'s final run of seed {run.seed} did not finish", runner.save)
        else:
            runner.execute(run)
            if run.status == FINISHED:
                finished.add((run.method, run.seed))


def write_report(out: Path) -> bool:
    """STUDY_DIR/report, when the report module is there; False when it refused."""
    try:
        from shared.evaluation.study_report import build_study_report
    except ImportError:
        print("[study] report: shared/evaluation/study_report.py is not available; skipped")
        return True
    try:
        build_study_report(out)
    except (ValueError, FileNotFoundError) as err:
        print(f"[study] report: not written: {err}", file=sys.stderr)
        return False
    print(f"[study] report: {out / 'report' / 'report.md'}")
    return True


def run_study(study: Study, previous: dict) -> int:
    out = study.out
    code = code_version()
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        atomic_write_text(out / plan.STUDY_JSON,
                          json.dumps(study.record(code), indent=2, allow_nan=False) + "\n")

    runner = Runner(study, out, plan.previous_runs(previous), save)
    if study.design.name != "minilm" and not (out / design_module.PLAN_JSON).is_file():
        atomic_write_text(out / design_module.PLAN_JSON,
                          json.dumps({"command": study.command, "code": code, **study.plan()},
                                     indent=2, allow_nan=False) + "\n")
    save()
    select_stage(study, runner)
    for name, method in study.methods.items():
        if not method.grid or method.chosen_lr is not None:
            study.timing[name] = time_method(study, runner, name)
            save()
    final_stage(study, runner)
    runs = study.runs + [Run(**entry["run"]) for entry in study.timing.values()]
    unfinished = [r for r in runs if r.status != FINISHED]
    reported = write_report(out)
    if unfinished:
        print(f"[study] {len(unfinished)} run(s) did not finish (their lines above say why): "
              + ", ".join(r.run_dir for r in unfinished), file=sys.stderr)
    return 0 if reported and not unfinished else 1


# ---------------------------------------------------------------- --dry-run

# A final run's validation predictions cost about this many dev evaluations (3,636 validation
# rows against the 1,279 of dev seed 0's part).
VALIDATION_EVALS = 3


def dry_run(study: Study, previous: dict, calibrate: list[str] = ()) -> int:
    """Print every run and each stage's minutes from step timings: study.json's, or measured
    now in a temporary folder (TIMING_STEPS steps per method); a design with calibration runs
    (e5) or --calibrate: from those runs' files instead, starting nothing. Writes nothing
    under --out."""
    if study.design.calibration or calibrate:
        return calibrated_dry_run(study, calibrate)
    for name, record in (previous.get("methods") or {}).items():
        if name in study.methods and record.get("chosen_lr") in study.methods[name].grid:
            study.methods[name].chosen_lr = record["chosen_lr"]
    timings = {name: entry for name, entry in (previous.get("timing") or {}).items()
               if name in study.methods and "step_s" in entry}
    measured = [name for name in study.methods if name not in timings]
    if measured:
        with tempfile.TemporaryDirectory(prefix="study-timing-") as folder:
            runner = Runner(study, Path(folder), {}, save=lambda: None)
            for name in measured:
                entry = time_method(study, runner, name)
                if "step_s" in entry:
                    timings[name] = entry
    source = ", ".join(f"{name} {'timed now' if name in measured else 'study.json'}"
                       for name in study.methods)
    runs = ([r for r in study.runs if r.stage == "select"]
            + [plan.timing_run(name, study.methods[name].chosen_lr) for name in study.methods]
            + [r for r in study.runs if r.stage == "final"])
    minutes: dict[str, list] = {}
    for run in runs:
        method = study.methods[run.method]
        lr = run.lr if run.stage == "select" else method.chosen_lr
        steps = plan.max_steps(study, run, timings.get(run.method))
        shown = ("recipe" if not method.grid else "chosen after select" if lr is None
                 else plan.lr_text(lr))
        print(f"[study] plan: {run.stage} {run.method} lr {shown} seed {run.seed}: "
              f"{'?' if steps is None else steps} steps at most -> {run.run_dir}")
        step_s = (timings.get(run.method) or {}).get("step_s")
        minutes.setdefault(run.stage, []).append(
            None if steps is None or step_s is None else steps * step_s / 60)
    for stage, values in minutes.items():
        total = ("unknown (a method has no step timing)" if None in values
                 else f"{sum(values):.1f} min of training steps at most")
        print(f"[study] estimate: {stage} {total}")
    print(f"[study] step timings: {source} ({plan.TIMING_STEPS} steps per method); compiling, "
          f"evaluations and start-up are not counted, and final runs may stop earlier")
    return 0 if len(timings) == len(study.methods) else 1


def calibrated_dry_run(study: Study, flags: list[str]) -> int:
    """Every planned run (later rungs as placeholders, final runs at the longest budget the
    rungs could choose) and the hours they should take, from the calibration runs' seconds
    per step and per dev evaluation. Those runs ran two at a time on the machine's cores, so
    a step's seconds there are about one core's: the sum is core-hours, and one run at a time
    on all the cores takes about that divided by the cores, if it scales."""
    files = {name: REPO / path for name, path in study.design.calibration.items()}
    files.update({name: Path(path) for name, path in
                  plan.parse_assignments("--calibrate", list(flags), list(study.methods)).items()})
    calibration = design_module.calibrate(study.design, files)
    step_s, eval_s = calibration["step_s"], calibration["eval_s"] or 0.0
    runs = [r for r in study.runs if r.stage == "select"]
    for name, method in study.methods.items():
        if method.grid:
            runs += [plan.rung_run(study, name, k, None)
                     for k, rung in enumerate(study.design.rungs) if k > 0
                     for _ in range(min(rung.keep, len(method.grid)))]
    runs += [r for r in study.runs if r.stage == "final"]
    hours: dict[str, float] = {}
    for run in runs:
        method = study.methods[run.method]
        jax = method.method.trainer == "jax_lora"
        steps = plan.max_steps(study, run, None if jax else {
            "batch": study.settings.batch_per_device, "epochs": TF_RECIPE_EPOCHS})
        evals = (steps // study.settings.eval_every
                 + (VALIDATION_EVALS if run.stage == "final" else 0)) if jax else 0
        if run.method not in step_s:
            raise ValueError(f"--dry-run: no calibration for {run.method}; pass --calibrate "
                             f"{run.method}=EVALS_CSV")
        hours[run.stage] = hours.get(run.stage, 0.0) + (
            steps * step_s[run.method] + evals * eval_s) / 3600
        lr = plan.lr_text(run.lr) if run.lr is not None else (
            "chosen on dev" if method.grid else "recipe")
        print(f"[study] plan: {run.stage} {run.method} lr {lr} seed {run.seed}: {steps} steps "
              f"at most -> {run.run_dir}")
    print("[study] calibration (seconds per step, two runs side by side): " + ", ".join(
        f"{name} {seconds:.3f}" + ("" if name in calibration["measured"] else " (relative)")
        for name, seconds in step_s.items() if name in study.methods)
        + f"; {eval_s:.1f} s per dev evaluation; from " + ", ".join(
        f"{name} {path}" for name, path in calibration["files"].items()))
    for stage, value in hours.items():
        print(f"[study] estimate: {stage} {value:.1f} core-hours")
    total, cores = sum(hours.values()), os.cpu_count() or 1
    print(f"[study] estimate: total {total:.1f} core-hours, about {total / cores:.1f} hours on "
          f"{cores} cores with one run at a time (final runs at the longest budget; timing runs, "
          f"start-up and compilation not counted)")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    with exit_on_bad_input():
        args = parse_args(argv)
        study = build_study(args, argv)
        previous = previous_study(study.out)
        if study.design.name != "minilm":  # the plan fixed at the start, if there is one
            design_module.check_plan(study.out, study.plan())
        if args.dry_run:
            return dry_run(study, previous, args.calibrate)
    return run_study(study, previous)


if __name__ == "__main__":
    sys.exit(main())
