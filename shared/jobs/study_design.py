"""A study's design (shared/jobs/study.py --design): its method table (which trainer flags make
each method, and its learning-rate grid), how their learning rates and step
budgets are chosen, its seeds, and the step seconds its --dry-run estimates from. Pure apart from
reading calibration files.

    minilm  the first study (issue 16, results/study_minilm): three rates per method, each
            trial 300 steps on 2,000 rows at a constant rate, one dev part (dev seed 0) for
            every seed, final runs stopped by patience. Its flags' defaults are the ones that
            study ran with, so its command reproduces it.
    e5      the multilingual study (issue 33), fixed before any final run: multilingual-e5-small
            at sequence length 128, mean pooling for every method; five rates per method with
            successive halving on dev (every rate 300 steps, the best two 900), warm-up and
            linear decay fitted to each run's budget, the final budget chosen on dev among the
            rungs', patience only as a guard; each seed its own premise-grouped dev part (dev
            seed = seed); primary comparison lora vs full, TOST margin ±0.02.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

PLAN_JSON = "plan.json"


@dataclass(frozen=True)
class Method:
    trainer: str                  # the trainer's folder: jax_lora or tf_baseline
    args: tuple[str, ...]         # the trainer flags that make the method
    grid: tuple[float, ...] = ()  # rates the select stage tries; () = the trainer's recipe
    parent: str | None = None     # method whose run (same stage, same seed) it starts from
    # tf_baseline at another method's recipe: that method's chosen rate, for the epochs its
    # final run of the same seed needed to reach its best dev step.
    recipe_from: str | None = None

    @property
    def needs(self) -> str | None:
        """The method whose runs this one's depend on."""
        return self.parent or self.recipe_from


# Three rates per grid, a factor of 3-5 apart, around each method's usual value: full around
# BERT's fine-tuning rates (the Kaggle recipe's 1e-5 to 1e-4), the adapters around PEFT's 2e-4
# and the demo's 1e-3 (shared/jobs/compare.py), the probe around jax_lora's 1e-2.
ADAPTER_GRID = (1e-4, 5e-4, 2e-3)
METHODS = {
    "full": Method("jax_lora", ("--method", "full"), (1e-5, 3e-5, 1e-4)),
    "lora": Method("jax_lora", ("--method", "lora"), ADAPTER_GRID),
    "dora": Method("jax_lora", ("--method", "dora"), ADAPTER_GRID),
    # Mean pooling: the probe reads the frozen encoder, and MiniLM was trained to be read so.
    "probe": Method("jax_lora", ("--method", "probe", "--pooling", "mean"), (1e-3, 1e-2, 3e-2)),
    # LP->LoRA: LoRA from the probe's head; --init-from needs the parent's pooling.
    "lp_lora": Method("jax_lora", ("--method", "lora", "--pooling", "mean"), ADAPTER_GRID,
                      parent="probe"),
    "qlora_nf4": Method("jax_lora", ("--method", "lora", "--base-dtype", "nf4"), ADAPTER_GRID),
    # The Kaggle starter's recipe as it is (its learning rate and epochs), on the study's rows.
    "tf_full": Method("tf_baseline", ()),
    # The replica at JAX full fine-tuning's chosen recipe: the cross-framework check at
    # training level (it should land within full's seed-to-seed spread).
    "tf_full_tuned": Method("tf_baseline", (), recipe_from="full"),
}


@dataclass(frozen=True)
class Rung:
    steps: int   # optimizer steps of each trial of the rung (warm-up and decay fitted to them)
    keep: int    # rates that enter the rung: the best `keep` of the previous one (rung 0: all)


@dataclass(frozen=True)
class Design:
    name: str
    methods: dict[str, Method]
    defaults: dict                      # the study's flag defaults under this design
    rungs: tuple[Rung, ...] = ()        # () = one select stage of --select-steps (minilm)
    schedule: str = "constant"          # --schedule of select and final runs (and recipe_from's)
    warmup_fraction: float = 0.0        # warm-up steps as a share of each run's budget
    dev_seed_per_seed: bool = False     # each final run's dev part seeded by its seed
    predict_test: bool = True           # final runs write submission.csv (test.csv)
    equivalence_margin: float | None = None  # TOST margin, fixed before the final runs
    primary: tuple[str, str] | None = None   # (A, B): the primary comparison B − A
    # --dry-run's step seconds: evals.csv files measured on this machine, per method, and the
    # other methods' cost relative to a calibrated one (see E5_RELATIVE_COST).
    calibration: dict[str, str] = field(default_factory=dict)
    relative_cost: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def halving(self) -> bool:
        return bool(self.rungs)

    def record(self) -> dict:
        """study.json "design" and plan.json's design (the minilm study predates both)."""
        return {"name": self.name, "rungs": [asdict(r) for r in self.rungs],
                "schedule": self.schedule, "warmup_fraction": self.warmup_fraction,
                "dev_seed_per_seed": self.dev_seed_per_seed, "predict_test": self.predict_test,
                "equivalence_margin": self.equivalence_margin,
                "primary": None if self.primary is None else list(self.primary)}

    def warmup_steps(self, budget: int) -> int:
        return round(self.warmup_fraction * budget)


# ---------------------------------------------------------------- e5

# Every jax_lora method reads the mean of the last layer (e5's own pooling, and what its
# sentence-transformers folder does): the pooling is the same for all, so it confounds nothing.
MEAN = ("--pooling", "mean")
ALL_LINEAR = "query,key,value,attention_output,ffn_in,ffn_out"
# Five rates per method, about a factor 2-3 apart, centred on the MiniLM study's choices (full
# 3e-5, LoRA 5e-4) and spanning its grids; warm-up and decay make the higher rates safer.
E5_FULL_GRID = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4)
E5_ADAPTER_GRID = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3)
E5_METHODS = {
    "full": Method("jax_lora", ("--method", "full", *MEAN), E5_FULL_GRID),
    # The primary method: the card's LoRA, rank 16 (alpha 16) on query and value.
    "lora": Method("jax_lora", ("--method", "lora", "--rank", "16", "--targets", "query,value",
                                *MEAN), E5_ADAPTER_GRID),
    "dora": Method("jax_lora", ("--method", "dora", *MEAN), E5_ADAPTER_GRID),
    "lora_all": Method("jax_lora", ("--method", "lora", "--targets", ALL_LINEAR, *MEAN),
                       E5_ADAPTER_GRID),
    "qlora_nf4": Method("jax_lora", ("--method", "lora", "--base-dtype", "nf4", *MEAN),
                        E5_ADAPTER_GRID),
    "probe": Method("jax_lora", ("--method", "probe", *MEAN), (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
    # tf_baseline reads the mean for a model without a pooler (e5): the replica at full's
    # chosen peak rate, for the whole epochs that cover full's chosen budget, with full's
    # warm-up and a linear decay to 0 at its last step (tf_baseline --schedule linear).
    "tf_full_tuned": Method("tf_baseline", (), recipe_from="full"),
    "tf_full": Method("tf_baseline", ()),
}
# Methods without an e5 measurement cost a calibrated method's step times this ratio: the
# MiniLM study's step timings (results/study_minilm/study.json "timing": dora 0.396, qlora_nf4
# 0.430, probe 0.157 against lora 0.379 s/step); lora on every linear layer as full (an upper
# bound: its backward reaches every layer, without weight gradients for the frozen kernels);
# TF at the replica's whole-epoch step against JAX full's (1.37 against 0.549 s/step,
# RESULTS.md's tf_full_tuned command and study.json).
E5_RELATIVE_COST = {"dora": ("lora", 0.396 / 0.379), "qlora_nf4": ("lora", 0.430 / 0.379),
                    "probe": ("lora", 0.157 / 0.379), "lora_all": ("full", 1.0),
                    "tf_full_tuned": ("full", 1.37 / 0.549), "tf_full": ("full", 1.37 / 0.549)}

DESIGNS = {
    "minilm": Design("minilm", METHODS, defaults={
        "preset": None, "methods": ",".join(METHODS), "seeds": 3, "select_rows": 2000,
        "select_steps": 300, "patience": 4, "max_epochs": 10, "sequence_length": 128}),
    "e5": Design(
        "e5", E5_METHODS,
        defaults={"preset": "multilingual-e5-small", "methods": ",".join(E5_METHODS),
                  # 5 seeds for the primary pair; one for each secondary method (as the
                  # minilm study: the budget), two for the cross-framework check.
                  "seeds": 5, "method_seeds": ["dora=1", "lora_all=1", "qlora_nf4=1",
                                               "probe=1", "tf_full_tuned=2", "tf_full=1"],
                  # Every training row in each trial (no subset): the budget is chosen there.
                  "select_rows": 10 ** 9, "select_steps": 300, "eval_every": 100,
                  # Patience is a guard: 6 evaluations (600 steps) without a better dev
                  # accuracy stop only a run that has stalled or diverged.
                  "patience": 6, "max_epochs": 8,
                  # `python -m shared.jobs.token_lengths --lengths 64,128,256` cuts 0.27 % of
                  # train.csv's pairs at 128 (33 rows, all English), 14.65 % at 64, none at 256.
                  "sequence_length": 128},
        rungs=(Rung(300, 5), Rung(900, 2)), schedule="linear", warmup_fraction=0.1,
        dev_seed_per_seed=True, predict_test=False, equivalence_margin=0.02,
        primary=("full", "lora"),
        calibration={"lora": "runs/first_look_e5/lora/evals.csv",
                     "full": "runs/first_look_e5/full/evals.csv"},
        relative_cost=E5_RELATIVE_COST),
}


# ---------------------------------------------------------------- successive halving

def rung_rates(trials: list, keep: int) -> list[float]:
    """The `keep` rates of a rung's finished trials with the best dev accuracy (ties: the lower
    dev loss, then the smaller rate), best first. `trials` are study_plan.Run records."""
    scored = [t for t in trials if t.status == "finished" and t.dev_accuracy is not None]
    ranked = sorted(scored, key=lambda t: (-t.dev_accuracy, t.dev_loss, t.lr))
    return [t.lr for t in ranked[:keep]]


def choose_lr_and_budget(trials: list) -> tuple[float | None, int | None]:
    """The (rate, steps) of the best finished trial among the rates that reached the last rung
    any trial reached, each at every budget it trained (a rate can win at a shorter budget):
    both the rate and the step budget are chosen on dev. Ties: the lower dev loss, the smaller
    rate, the shorter budget."""
    last = max((t.rung for t in trials), default=0)
    finalists = {t.lr for t in trials if t.rung == last}
    scored = [t for t in trials if t.lr in finalists and t.status == "finished"
              and t.dev_accuracy is not None]
    if not scored:
        return None, None
    best = min(scored, key=lambda t: (-t.dev_accuracy, t.dev_loss, t.lr, t.budget))
    return best.lr, best.budget


# ---------------------------------------------------------------- --dry-run's calibration

def step_seconds_from_evals(path: Path) -> float:
    """Median training seconds per optimizer step between consecutive dev evaluations of an
    evals.csv (train_seconds is cumulative); the first row, which holds compilation, is left
    out. ValueError naming the file when it has fewer than two rows."""
    try:
        evals = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the calibration run's evals.csv ({err}); pass "
                         f"--calibrate METHOD=EVALS_CSV of a run on this machine") from None
    if len(evals) < 2 or not {"step", "train_seconds"} <= set(evals.columns):
        raise ValueError(f"{path}: needs two or more evaluations with step and train_seconds")
    per_step = (evals["train_seconds"].diff() / evals["step"].diff()).iloc[1:]
    return float(per_step.median())


def eval_seconds_from_manifest(path: Path) -> float | None:
    """Seconds per dev evaluation of a jax_lora run: its manifest's epochs' eval_seconds over
    the evaluations evals.csv records in those epochs; None without finished epochs."""
    manifest = path.parent / "manifest.json"
    try:
        epochs = json.loads(manifest.read_text()).get("epochs") or []
        evals = pd.read_csv(path)
    except (OSError, ValueError):
        return None
    done = [e for e in epochs if isinstance(e, dict) and "eval_seconds" in e]
    if not done:
        return None
    count = int((evals["epoch"].apply(math.ceil) <= len(done)).sum())
    return sum(e["eval_seconds"] for e in done) / count if count else None


def calibrate(design: Design, files: dict[str, Path]) -> dict:
    """Seconds per step of every method, and per dev evaluation, from the calibration runs'
    files (`files`: method -> evals.csv); methods without one through design.relative_cost."""
    measured = {name: step_seconds_from_evals(path) for name, path in files.items()}
    steps = dict(measured)
    for name, (source, ratio) in design.relative_cost.items():
        if name not in steps and source in measured:
            steps[name] = measured[source] * ratio
    evals = [s for s in (eval_seconds_from_manifest(p) for p in files.values()) if s]
    return {"step_s": steps, "measured": sorted(measured),
            "eval_s": max(evals) if evals else None,
            "files": {name: str(path) for name, path in files.items()}}


# ---------------------------------------------------------------- the plan file

def check_plan(out: Path, plan: dict) -> None:
    """Refuse (ValueError naming the fields) a plan that differs from STUDY_DIR/plan.json, which
    the study wrote at its first start: the design is fixed before any final run."""
    path = out / PLAN_JSON
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    changed = sorted(f"{key}.{name}" for key in plan
                     for name in set(recorded.get(key) or {}) | set(plan[key] or {})
                     if (recorded.get(key) or {}).get(name) != (plan[key] or {}).get(name))
    if changed:
        raise ValueError(f"{path}: this study's plan was fixed at its start; these differ from "
                         f"it: {', '.join(changed)}. Run the recorded plan's command, or start "
                         f"a new --out")
