"""What a study (shared/jobs/study.py) runs: the method table, each run's trainer flags, the
learning-rate choice and the study.json record. Pure: no process started, no file written.

Run directories, relative to the study folder:
    select/<method>/lr_<lr>/   a selection trial (seed 0, a training subset, a fixed step budget)
    select/<method>/steps_<n>/lr_<lr>/   one of successive halving's (a design with rungs)
    timing/<method>/           a few timed steps at the chosen learning rate, no dev part
    final/<method>/seed_<s>/   a final run (the whole training part minus dev, early stopping)
<lr> is written with the fewest digits that give it back (5e-04, 2.5e-04).
"""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.jobs.study_design import DESIGNS, METHODS, Design, Method  # noqa: F401

STUDY_JSON = "study.json"
VERSION = 1
FINISHED, FAILED, PENDING = "finished", "failed", "pending"
# The report measures each method's speed as steps (and seconds) until its dev accuracy
# reaches this share of the target method's best: full fine-tuning when the study has it.
TARGET_METHOD, TARGET_FRACTION = "full", 0.95
# A timing run's optimizer steps (tf_baseline: steps per epoch, over its recipe's epochs):
# enough past the compiling steps for a steady step time, few enough to cost a minute.
TIMING_STEPS = 12
# Flags the study sets for every run; --method-args may not override them.
STUDY_FLAGS = ("--lr", "--seed", "--run-dir", "--epochs", "--max-steps", "--eval-every",
               "--patience", "--init-from", "--preset", "--data-dir", "--sequence-length",
               "--dev-fraction", "--dev-seed", "--train-subset", "--batch-per-device",
               "--batch-per-replica", "--lr-per-replica", "--restart", "--check")


@dataclass(frozen=True)
class Settings:
    """What every run of the study shares (study.json "settings")."""
    preset: str
    data_dir: str
    sequence_length: int
    seeds: tuple[int, ...]
    select_rows: int
    select_steps: int
    dev_fraction: float
    dev_seed: int
    eval_every: int
    patience: int
    max_epochs: int
    batch_per_device: int
    target_method: str
    target_fraction: float = TARGET_FRACTION

    def record(self) -> dict:
        return {**asdict(self), "seeds": list(self.seeds)}


@dataclass
class MethodPlan:
    name: str
    method: Method
    grid: tuple[float, ...]                        # the table's, or --grid's
    extra: tuple[str, ...] = ()                    # --method-args
    chosen_lr: float | None = None                 # the best selection trial's, once known
    seeds: int | None = None                       # --method-seeds: final runs (seeds 0..)
    chosen_budget: int | None = None               # final runs' steps, chosen on dev (rungs)

    @property
    def args(self) -> list[str]:
        return [*self.method.args, *self.extra]

    def record(self) -> dict:
        return {"trainer": self.method.trainer, "args": self.args, "grid": list(self.grid),
                "parent": self.method.parent, "recipe_from": self.method.recipe_from,
                "chosen_lr": self.chosen_lr,
                "seeds": self.seeds, **({} if self.chosen_budget is None
                                       else {"chosen_budget": self.chosen_budget})}


@dataclass
class Run:
    stage: str                        # select, timing or final
    method: str
    seed: int
    run_dir: str                      # relative to the study folder
    lr: float | None = None           # None: not chosen yet, or tf_full's recipe
    status: str = PENDING             # finished, failed, or pending (`error`: why not run)
    dev_accuracy: float | None = None  # the manifest's best dev step
    dev_loss: float | None = None
    minutes: float | None = None      # wall time of the trainer process that finished or failed it
    error: str | None = None
    args: list[str] | None = None     # the trainer flags it ran with: a kept run is known by them
    rung: int = 0                     # a selection trial's rung of successive halving
    budget: int | None = None         # its optimizer steps, where the design fixes them

    def record(self) -> dict:
        return asdict(self)


@dataclass
class Study:
    out: Path
    settings: Settings
    methods: dict[str, MethodPlan]    # in run order: a parent before its children
    select_subset: int                # select_rows, or every training row when fewer are left
    n_train: int                      # training rows left after the dev part
    command: str
    quiet: bool = False
    runs: list[Run] = field(default_factory=list)     # select and final, in run order
    timing: dict[str, dict] = field(default_factory=dict)  # method -> step timing and its run
    design: Design = DESIGNS["minilm"]
    machine: dict | None = None       # where it runs (a design newer than minilm records it)

    def record(self, code: dict) -> dict:
        """study.json (the report module, shared/evaluation/study_report.py, reads it). The
        minilm design's is as that study wrote it; a newer design adds its plan."""
        settings = self.settings.record()
        extra = {}
        if self.design.name != "minilm":
            settings.update(design=self.design.name,
                            equivalence_margin=self.design.equivalence_margin,
                            primary=None if self.design.primary is None
                            else list(self.design.primary),
                            dev_seed_per_seed=self.design.dev_seed_per_seed)
            extra = {"design": self.design.record(), "machine": self.machine}
        return {"version": VERSION, "command": self.command, "code": code,
                "settings": settings, **extra,
                "methods": {name: method.record() for name, method in self.methods.items()},
                "timing": self.timing, "runs": [run.record() for run in self.runs]}

    def plan(self) -> dict:
        """What plan.json fixes at the study's start: every setting and method but the command,
        the code and the outcomes."""
        record = self.record({})
        methods = {name: {k: v for k, v in method.items() if k not in ("chosen_lr",
                                                                        "chosen_budget")}
                   for name, method in record["methods"].items()}
        return {"settings": record["settings"], "design": record.get("design"),
                "methods": methods}


# ---------------------------------------------------------------- flags

def parse_methods(text: str, table: dict[str, Method] = METHODS) -> list[str]:
    """--methods: known names, each once, a child after its parent (its runs need the parent's)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in table]
    if not names or unknown:
        raise ValueError(f"--methods {text}: choose from {', '.join(table)}")
    if len(set(names)) < len(names):
        raise ValueError(f"--methods {text}: names a method twice")
    for name in names:
        needed = table[name].needs
        if needed is not None and needed not in names:
            raise ValueError(f"--methods {text}: {name} starts from {needed}'s runs; add "
                             f"{needed}")
    return sorted(names, key=lambda name: table[name].needs is not None)


def parse_assignments(flag: str, values: list[str], methods: list[str]) -> dict[str, str]:
    """METHOD=TEXT flags (--grid, --method-args) by method; each method once, one of --methods."""
    parsed = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or name not in methods:
            raise ValueError(f"{flag} {value}: expected METHOD=..., METHOD one of --methods "
                             f"({', '.join(methods)})")
        if name in parsed:
            raise ValueError(f"{flag} {value}: {name} is given twice; give it once")
        parsed[name] = text
    return parsed


def parse_grid(name: str, text: str, table: dict[str, Method] = METHODS) -> tuple[float, ...]:
    """--grid METHOD=LR,LR,...: distinct positive learning rates, in the order given."""
    flag = f"--grid {name}={text}"
    if not table[name].grid:
        raise ValueError(f"{flag}: {name} trains with its trainer's recipe; drop its --grid")
    try:
        grid = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated learning rates, e.g. "
                         f"{name}=1e-4,5e-4") from None
    if not all(math.isfinite(lr) and lr > 0 for lr in grid):
        raise ValueError(f"{flag}: learning rates must be positive numbers")
    if len(set(grid)) < len(grid):
        raise ValueError(f"{flag}: names a learning rate twice")
    return grid


def parse_method_args(name: str, text: str) -> tuple[str, ...]:
    """--method-args METHOD="flags": extra trainer flags, none of those the study sets."""
    try:
        args = tuple(shlex.split(text))
    except ValueError as err:
        raise ValueError(f"--method-args {name}={text}: {err}") from None
    taken = [arg for arg in args if arg.split("=")[0] in STUDY_FLAGS]
    if taken:
        raise ValueError(f"--method-args {name}={text}: {taken[0].split('=')[0]} is set by the "
                         f"study (see --help); drop it")
    return args


# ---------------------------------------------------------------- runs and their flags

def lr_text(lr: float) -> str:
    """The fewest digits that give `lr` back: 5e-04, 2.5e-04 (run directory names)."""
    return next(text for digits in range(17) if float(text := f"{lr:.{digits}e}") == lr)


def select_dir(method: str, lr: float, budget: int | None = None) -> str:
    """A trial's folder; under steps_<budget>/ in a design with rungs (a rate trains at
    several budgets there)."""
    steps = "" if budget is None else f"steps_{budget}/"
    return f"select/{method}/{steps}lr_{lr_text(lr)}"


def final_dir(method: str, seed: int) -> str:
    return f"final/{method}/seed_{seed}"


def plan_runs(study: Study) -> list[Run]:
    """Every selection trial (method by method), then every final run (seed by seed, so each
    seed's comparison is complete before the next begins; a parent before its children)."""
    runs = [rung_run(study, name, 0, lr) if study.design.halving
            else Run("select", name, 0, select_dir(name, lr), lr)
            for name, plan in study.methods.items() for lr in plan.grid]
    runs += [Run("final", name, seed, final_dir(name, seed))
             for seed in study.settings.seeds for name, plan in study.methods.items()
             if plan.seeds is None or seed < plan.seeds]
    return runs


def rung_run(study: Study, method: str, rung: int, lr: float | None) -> Run:
    """A successive-halving trial: seed 0, the rung's step budget; lr None while the rates
    that enter the rung are not known (--dry-run's plan)."""
    steps = study.design.rungs[rung].steps
    run_dir = (select_dir(method, lr, steps) if lr is not None
               else f"select/{method}/steps_{steps}/(best {study.design.rungs[rung].keep})")
    return Run("select", method, 0, run_dir, lr, rung=rung, budget=steps)


def parse_seeds(name: str, text: str, seeds: int, parent_seeds: int | None,
                table: dict[str, Method] = METHODS) -> int:
    """--method-seeds METHOD=N: fewer final runs for METHOD than --seeds (where the budget
    forces it); a method started from a parent's runs cannot have more seeds than it."""
    flag = f"--method-seeds {name}={text}"
    if not text.isdigit() or not 1 <= int(text) <= seeds:
        raise ValueError(f"{flag}: expected a whole number from 1 to --seeds ({seeds})")
    if parent_seeds is not None and int(text) > parent_seeds:
        raise ValueError(f"{flag}: {name} starts from {table[name].needs}'s final runs, "
                         f"which has {parent_seeds} seed(s)")
    return int(text)


def timing_run(name: str, lr: float | None) -> Run:
    return Run("timing", name, 0, f"timing/{name}", lr)


def trainer_args(study: Study, run: Run, out: Path) -> list[str]:
    """The trainer's flags for `run`, its run directory under `out`. Later flags win: the
    study's shared flags, the method's, then the stage's (which --method-args cannot touch)."""
    s, plan = study.settings, study.methods[run.method]
    jax = plan.method.trainer == "jax_lora"
    # A timing run holds no dev part, so that its clock holds nothing but training steps.
    dev_seed = (run.seed if run.stage == "final" and study.design.dev_seed_per_seed
                else s.dev_seed)
    dev = [] if run.stage == "timing" else ["--dev-fraction", str(s.dev_fraction),
                                            "--dev-seed", str(dev_seed)]
    args = ["--preset", s.preset, "--data-dir", s.data_dir,
            "--sequence-length", str(s.sequence_length),
            "--batch-per-device" if jax else "--batch-per-replica", str(s.batch_per_device),
            *dev, "--seed", str(run.seed), *(["--quiet"] if study.quiet else []), *plan.args]
    args += [] if run.lr is None else ["--lr" if jax else "--lr-per-replica", str(run.lr)]
    args += stage_args(study, run, jax)
    if plan.method.recipe_from is not None and run.stage == "final":
        args += ["--epochs", str(recipe_epochs(study, plan.method.recipe_from, run.seed, out))]
    parent = plan.method.parent
    if parent is not None and run.stage != "timing":  # a step costs the same from any start
        source = (select_dir(parent, study.methods[parent].chosen_lr) if run.stage == "select"
                  else final_dir(parent, run.seed))
        args += ["--init-from", str(out / source)]
    return args + ["--run-dir", str(out / run.run_dir)]


def recipe_epochs(study: Study, source: str, seed: int, out: Path) -> int:
    """Whole epochs (tf_baseline has no step cap) that `source`'s final run of `seed` trained
    to reach its best dev step, from its manifest; in a design with rungs, that cover the
    source's chosen budget (its schedule is fitted to the whole budget)."""
    steps_per_epoch = study.n_train // study.settings.batch_per_device
    budget = study.methods[source].chosen_budget
    if study.design.halving and budget is not None:
        return max(1, math.ceil(budget / steps_per_epoch))
    path = out / final_dir(source, seed) / "manifest.json"
    try:
        best_step = json.loads(path.read_text())["best"]["step"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: no finished run with a best dev step to take the recipe "
                         f"from; run {source}'s final runs first") from None
    return max(1, math.ceil(best_step / steps_per_epoch))


def stage_args(study: Study, run: Run, jax: bool) -> list[str]:
    s, design, stage = study.settings, study.design, run.stage
    budget = run_budget(study, run)
    # Warm-up and decay fitted to the run's budget; tf_baseline at another method's recipe
    # (its budget is that method's) warms up as that method's final runs and decays to 0 at
    # its own last step, the end of the whole epochs that cover the budget.
    schedule = (["--schedule", design.schedule, "--warmup-steps",
                 str(design.warmup_steps(budget))]
                if design.schedule != "constant" and budget is not None else [])
    if stage == "select":
        # --epochs at least --max-steps: enough epochs for the step budget on any device count.
        # No submission: a trial is judged on the dev part, its test predictions unused.
        return ["--train-subset", str(study.select_subset), "--max-steps", str(budget),
                "--epochs", str(budget), "--eval-every", str(s.eval_every),
                "--no-predict-test", *schedule]
    if stage == "timing" and jax:
        return ["--max-steps", str(TIMING_STEPS), "--epochs", str(TIMING_STEPS),
                "--no-predict-test"]
    if stage == "timing":  # tf_baseline has no step cap: TIMING_STEPS batches per epoch
        return ["--train-subset", str(min(TIMING_STEPS * s.batch_per_device, study.n_train))]
    if not jax:  # the recipe's epochs (trainer_args), no dev evaluation
        return schedule
    if budget is not None:  # the budget chosen on dev; patience only guards against a stall
        return ["--max-steps", str(budget), "--epochs", str(budget), "--eval-every",
                str(s.eval_every), "--patience", str(s.patience), *schedule,
                *([] if design.predict_test else ["--no-predict-test"])]
    return ["--epochs", str(s.max_epochs), "--eval-every", str(s.eval_every),
            "--patience", str(s.patience)]


def run_budget(study: Study, run: Run) -> int | None:
    """A select or final run's fixed optimizer steps: the trial's (its rung's, or
    --select-steps), the method's chosen budget in a design with rungs; None otherwise."""
    if run.stage == "select":
        return run.budget or study.settings.select_steps
    if run.stage == "final" and study.design.halving:
        return study.methods[run.method].chosen_budget
    return None


# ---------------------------------------------------------------- outcomes

def previous_runs(previous: dict) -> dict[str, dict]:
    """run_dir -> the run's record in an earlier study.json (timing runs included)."""
    timing = [entry["run"] for entry in (previous.get("timing") or {}).values()]
    return {record["run_dir"]: record for record in previous.get("runs", []) + timing}


def choose_lr(trials: list[Run]) -> float | None:
    """The finished trial with the best dev accuracy; ties: the lower dev loss, then the
    smaller learning rate. None when no trial finished."""
    scored = [t for t in trials if t.status == FINISHED and t.dev_accuracy is not None]
    if not scored:
        return None
    best = min(scored, key=lambda t: (-t.dev_accuracy, t.dev_loss, t.lr))
    return best.lr


def timing_record(manifest: dict, trainer: str, machine: str) -> dict:
    """study.json "timing" of a method from its timing run's manifest: seconds per optimizer
    step, compiling excluded."""
    epochs = manifest["epochs"]
    if trainer == "jax_lora":
        seconds = sum(e["train_seconds"] - e["compile_seconds"] for e in epochs)
        steps, batch = manifest["steps"], manifest["global_batch"]
        extra = {}
    else:  # Keras compiles inside the first epoch and times no compiling: the last is warm
        training = manifest["training"]
        seconds, steps = epochs[-1]["train_seconds"], training["steps_per_epoch"]
        batch = training["global_batch"]
        extra = {"epochs": manifest["config"]["epochs"]}  # the recipe's, for estimates
    return {"step_s": seconds / steps, "machine": machine, "batch": batch,
            "sequence_length": manifest["config"]["sequence_length"], **extra}


def max_steps(study: Study, run: Run, timing: dict | None) -> int | None:
    """A run's optimizer steps at most (a final run may stop earlier); None when it depends on
    a timing not measured (tf_full's recipe epochs)."""
    s = study.settings
    if run.stage == "select":
        return run_budget(study, run)
    if run.stage == "timing":  # tf_baseline's: TIMING_STEPS in each of its recipe's epochs
        return TIMING_STEPS * (timing or {}).get("epochs", 1)
    if study.design.halving and study.methods[run.method].method.trainer == "jax_lora":
        # Before the choice, the longest budget the rungs could choose.
        return run_budget(study, run) or max(r.steps for r in study.design.rungs)
    if study.methods[run.method].method.recipe_from is not None:
        source = study.methods[run.method].method.recipe_from
        if not study.design.halving:
            return None  # its epochs come from another method's final run
        budget = study.methods[source].chosen_budget or max(r.steps for r in study.design.rungs)
        per_epoch = study.n_train // (timing["batch"] if timing else s.batch_per_device)
        return math.ceil(budget / per_epoch) * per_epoch
    batch = timing["batch"] if timing else s.batch_per_device
    epochs = s.max_epochs if study.methods[run.method].method.trainer == "jax_lora" else (
        timing or {}).get("epochs")
    return None if epochs is None else epochs * (study.n_train // batch)
