"""Learning speed in a study (shared.evaluation.study_report): dev accuracy curves over seeds
(evals.csv), the machines that timed them, and the steps and seconds to a target accuracy."""

from __future__ import annotations

import math

import pandas as pd

from shared.evaluation.evaluate import number


def step_timing(study: dict, method: str) -> dict | None:
    """The orchestrator's measured step time of a method, when it recorded a usable one."""
    timing = (study.get("timing") or {}).get(method)
    if not isinstance(timing, dict) or not isinstance(timing.get("machine"), str):
        return None
    step_s = number(timing.get("step_s"))
    return timing if step_s is not None and step_s > 0 else None


def dev_curve(evals_by_seed: dict[int, pd.DataFrame | None]) -> pd.DataFrame | None:
    """Mean, min and max dev accuracy over a method's seeds at each evaluated step (evals.csv).

    A seed that stopped early (patience) keeps its last dev accuracy at later steps, so every
    point averages the same seeds and a stopped seed's plateau is not silently dropped."""
    columns = {seed: evals.drop_duplicates("step", keep="last").set_index("step")["dev_accuracy"]
               for seed, evals in evals_by_seed.items() if evals is not None and len(evals)}
    if not columns:
        return None
    table = pd.DataFrame(columns).sort_index().ffill().dropna()
    return pd.DataFrame({"step": table.index.astype(int), "mean": table.mean(axis=1),
                         "min": table.min(axis=1), "max": table.max(axis=1),
                         "seeds": len(columns)}).reset_index(drop=True)


UNIFORM_LOSS = math.log(3)  # cross-entropy of predicting 1/3 for each of the three labels
STALL_TOLERANCE, STALL_EVALS = 0.01, 3


def stalled_from(evals: pd.DataFrame | None) -> int | None:
    """The step from which a run's training loss stayed within STALL_TOLERANCE of ln 3 (a
    model that predicts the uniform distribution) through its last evaluation, when that held
    for STALL_EVALS evaluations or more; else None. Such a run stopped on patience without
    learning: its figures measure a failed run, not its method."""
    if evals is None or "train_loss" not in evals:
        return None
    losses = evals.drop_duplicates("step", keep="last").sort_values("step")
    near = (losses["train_loss"] - UNIFORM_LOSS).abs() <= STALL_TOLERANCE
    trailing = 0
    for flag in reversed(near.tolist()):
        if not flag:
            break
        trailing += 1
    return int(losses["step"].iat[-trailing]) if trailing >= STALL_EVALS else None


def wall_clock(study: dict, methods: list[str]) -> dict:
    """The machine whose step times put every curve on one seconds axis, or why none does."""
    refusal = wall_clock_refusal(study, methods)
    return {"skipped": refusal,
            "machine": None if refusal else step_timing(study, methods[0])["machine"]}


def wall_clock_refusal(study: dict, methods: list[str]) -> str | None:
    """Why dev accuracy is not drawn against seconds, or None. The VM differs between
    sessions, so step times from two machines never share one time axis."""
    if not methods:
        return "no final run wrote evals.csv"
    untimed = [m for m in methods if step_timing(study, m) is None]
    if untimed:
        return f"study.json records no step timing for {', '.join(untimed)}"
    machines = {m: step_timing(study, m)["machine"] for m in methods}
    if len(set(machines.values())) > 1:
        named = "; ".join(f"{m}: {machine}" for m, machine in machines.items())
        return f"the step timings come from different machines ({named})"
    return None


def time_to_target(study: dict, methods: list[dict], curves: dict) -> dict:
    """The first evaluated step at which each method's mean dev accuracy over seeds reaches
    target_fraction × the target method's mean best dev accuracy."""
    settings = study["settings"]
    target_method, fraction = settings["target_method"], settings["target_fraction"]
    best = next(m for m in methods if m["method"] == target_method)["best_dev_accuracy_mean"]
    out = {"target_method": target_method, "target_fraction": fraction,
           "target_best_dev_accuracy": best, "target": None if best is None else fraction * best,
           "methods": []}
    if best is None:
        return out
    for row in methods:
        curve, timing = curves.get(row["method"]), step_timing(study, row["method"])
        reached = None if curve is None else curve[curve["mean"] >= out["target"]]
        step = None if reached is None or reached.empty else int(reached["step"].iat[0])
        out["methods"].append({
            "method": row["method"], "step": step,
            "evaluated_to": None if curve is None else int(curve["step"].iat[-1]),
            "seconds": None if step is None or timing is None else step * timing["step_s"],
            "machine": None if timing is None else timing["machine"]})
    return out

