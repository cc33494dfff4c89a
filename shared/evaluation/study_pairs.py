"""Comparisons across seeds in a study's report (shared/evaluation/study_report.py): a
method's mean with its Student-t interval, paired differences between methods with a row
bootstrap (the trained runs fixed) and a t-interval over the per-seed differences (the seeds
varying), on all validation rows or on a part of them, and the cross-framework check.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import t as student_t
from scipy.stats import ttest_1samp

from shared.evaluation import stats

# Equivalence over seeds (TOST): the margin a study fixes in its plan before its final runs
# (study.json settings "equivalence_margin"); a study without one is read at this margin, and
# the report says it was not fixed in advance. Two one-sided tests at ALPHA each: equivalent
# when the (1 - 2 ALPHA) = 90 % t-interval of the mean difference lies inside the margin.
DEFAULT_MARGIN, TOST_ALPHA = 0.02, 0.05


def t_interval(values: pd.Series) -> dict:
    """Mean over seeds with a Student-t interval, mean ± t·sd/√n: with a handful of seeds the
    normal 1.96 would be far too narrow (t = 4.30 for 3 seeds). One seed: no interval."""
    values = values.dropna()
    n = len(values)
    out = {"n": n, "mean": mean_of(values), "min": None, "max": None, "sd": None, "t": None,
           "half_width": None, "ci": None}
    if n == 0:
        return out
    out.update(min=float(values.min()), max=float(values.max()))
    if n >= 2:
        sd = float(values.std(ddof=1))
        t = float(student_t.ppf(0.5 + stats.CONFIDENCE / 2, n - 1))
        half = t * sd / math.sqrt(n)
        out.update(sd=sd, t=t, half_width=half, ci=[out["mean"] - half, out["mean"] + half])
    return out


def tost(diffs, margin: float, alpha: float = TOST_ALPHA) -> dict:
    """Two one-sided t-tests on paired per-seed differences (B − A): H0 mean <= −margin and H0
    mean >= +margin, each rejected at `alpha`; p is the larger one-sided p-value. The verdict:
    equivalent when both are rejected; else different when the 95 % t-interval excludes 0;
    else not shown equivalent. Fewer than 2 seeds (or no spread): no test."""
    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    out = {"margin": margin, "alpha": alpha, "n": n, "mean": float(diffs.mean()) if n else None,
           "p_lower": None, "p_upper": None, "p": None,
           "ci_90": None, "ci_95": None, "verdict": None}
    if n < 2 or float(diffs.std(ddof=1)) == 0.0:
        return out
    p_lower = float(ttest_1samp(diffs, -margin, alternative="greater").pvalue)
    p_upper = float(ttest_1samp(diffs, margin, alternative="less").pvalue)
    se = float(diffs.std(ddof=1)) / math.sqrt(n)
    ci_90 = [float(x) for x in student_t.interval(1 - 2 * alpha, n - 1, diffs.mean(), se)]
    ci_95 = [float(x) for x in student_t.interval(stats.CONFIDENCE, n - 1, diffs.mean(), se)]
    p = max(p_lower, p_upper)
    verdict = (f"equivalent within ±{100 * margin:g} points" if p < alpha
               else "different" if ci_95[0] > 0 or ci_95[1] < 0 else "not shown equivalent")
    out.update(p_lower=p_lower, p_upper=p_upper, p=p, ci_90=ci_90, ci_95=ci_95,
               verdict=verdict)
    return out


def method_pairs(methods: list[str]) -> list[tuple[str, str]]:
    """Every pair once, A listed before B: the target method (first) against each, then the
    rest."""
    return [(a, b) for i, a in enumerate(methods) for b in methods[i + 1:]]


def pooled_pair(a: str, b: str, correct_a: dict, correct_b: dict, resamples: int,
                seed: int, margin: float = DEFAULT_MARGIN) -> dict:
    """B − A over the seeds both finished, seed s of A paired with seed s of B, the validation
    rows of every pair pooled. Two intervals: the row bootstrap holds the trained models fixed
    (how sure the validation rows make their difference); the t-interval over the per-seed
    differences lets the seeds vary (how sure the seeds make the methods' difference), and the
    equivalence test over them (tost) says whether the seeds keep it within ±margin."""
    seeds = sorted(set(correct_a) & set(correct_b))
    if not seeds:
        return {"a": a, "b": b, "seeds": [], "accuracy_a": None, "accuracy_b": None,
                "accuracy_diff": None, "accuracy_diff_ci": None, "seed_diffs": [],
                "seed_diff_t": None, "tost": None, "mcnemar": None}
    right_a = np.stack([correct_a[s] for s in seeds])
    right_b = np.stack([correct_b[s] for s in seeds])
    samples = pooled_difference_samples(right_a, right_b, resamples, seed)
    seed_diffs = [float(d) for d in right_b.mean(axis=1) - right_a.mean(axis=1)]
    return {"a": a, "b": b, "seeds": seeds, "accuracy_a": float(right_a.mean()),
            "accuracy_b": float(right_b.mean()),
            "accuracy_diff": float(right_b.mean() - right_a.mean()),
            "accuracy_diff_ci": stats.percentile_ci(samples),
            "seed_diffs": seed_diffs, "seed_diff_t": t_interval(pd.Series(seed_diffs)),
            "tost": tost(seed_diffs, margin),
            "mcnemar": stats.mcnemar_exact(right_a.ravel(), right_b.ravel())}


def pooled_difference_samples(right_a: np.ndarray, right_b: np.ndarray, resamples: int,
                              seed: int) -> np.ndarray:
    """Paired bootstrap of the pooled accuracy difference from [seeds, rows] correctness.

    Validation rows are resampled, each with all its seed pairs: the seeds of one row share its
    text and err together, so row × seed cells are not independent draws and resampling them
    would narrow the interval by up to √seeds."""
    per_row = (right_b.astype(float) - right_a).mean(axis=0)
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, stats.BOOTSTRAP_CHUNK):
        size = min(stats.BOOTSTRAP_CHUNK, resamples - start)
        chunks.append(per_row[rng.integers(0, len(per_row), (size, len(per_row)))].mean(axis=1))
    return np.concatenate(chunks)


def english_pairs(correct: dict, languages, resamples: int, seed: int,
                  margin: float = DEFAULT_MARGIN) -> list[dict]:
    """Each method against the target (the first), as the pooled pairs, on the English rows
    and on the rest: an English model's gap can sit in one part of the rows alone."""
    english = np.asarray(languages) == "English"
    if len(correct) < 2 or english.all() or not english.any():
        return []
    target, *others = correct
    rows = []
    for method in others:
        for part, keep in (("English", english), ("all but English", ~english)):
            subset = {m: {s: right[keep] for s, right in correct[m].items()}
                      for m in (target, method)}
            rows.append({"rows": part, "n": int(keep.sum()),
                         **pooled_pair(target, method, subset[target], subset[method],
                                       resamples, seed, margin)})
    return rows


def cross_framework(study: dict, methods: list[dict], pairs: list[dict]) -> list[dict]:
    """Each method that trains at another's recipe (study.json `recipe_from`: tf_full_tuned is
    the TF replica at JAX full's chosen rate and epochs) against that method's seeds: is each of
    its runs inside their min–max and their t-interval, and what is the paired difference
    (this method − the source) over the seeds both finished."""
    rows = {row["method"]: row for row in methods}
    checks = []
    for method, spec in study["methods"].items():
        source = spec.get("recipe_from")
        if not source or method not in rows or source not in rows:
            continue
        spread = rows[source]["accuracy"]
        runs = []
        for run in rows[method]["per_seed"]:
            accuracy = run["accuracy"]
            runs.append({"seed": run["seed"], "accuracy": accuracy,
                         "in_range": None if spread["n"] < 2
                         else spread["min"] <= accuracy <= spread["max"],
                         "in_interval": None if spread["ci"] is None
                         else spread["ci"][0] <= accuracy <= spread["ci"][1]})
        pair = next((p for p in pairs if {p["a"], p["b"]} == {method, source}), None)
        difference = None
        if pair is not None and pair["seeds"]:
            sign = 1 if pair["b"] == method else -1
            low, high = (sign * x for x in pair["accuracy_diff_ci"])
            difference = {"seeds": pair["seeds"], "diff": sign * pair["accuracy_diff"],
                          "ci": [min(low, high), max(low, high)]}
        checks.append({"method": method, "trainer": rows[method]["trainer"], "source": source,
                       "source_trainer": rows[source]["trainer"], "source_accuracy": spread,
                       "runs": runs, "paired": difference})
    return checks


def mean_of(values: pd.Series) -> float | None:
    """The mean of the values present; None when there is none."""
    values = values.dropna()
    return float(values.mean()) if len(values) else None
