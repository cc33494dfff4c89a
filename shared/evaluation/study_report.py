"""The report of a study (shared/jobs/study.py): each method's final runs over several seeds,
its learning-rate selection, and how fast each method learns.

    python -m shared.evaluation.study_report STUDY_DIR [--out DIR] [--bootstrap N] [--seed S] \
        [--data-dir DIR]

Reads STUDY_DIR/study.json (the orchestrator's record: settings, methods, step timings and every
run with its stage, method, learning rate, seed, run_dir and status) and the run directories it
names. Writes report.md, report.json (every number in report.md) and PNG figures into DIR
[default: STUDY_DIR/report]. Only runs with status "finished" count; the others are listed as
missing. Every finished run must share the split fingerprint and validation ids.
Imports neither TensorFlow nor JAX.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from shared.cli import exit_on_bad_input
from shared.evaluation import evaluate as ev
from shared.evaluation import report, stats, study_curves, study_figures, study_markdown
from shared.evaluation.study_pairs import (DEFAULT_MARGIN, cross_framework, english_pairs,
                                           mean_of, method_pairs, pooled_pair, t_interval)
from shared.runs.run_dir import Run, atomic_write_bytes, atomic_write_text, read_run

STUDY_JSON = "study.json"
STAGES = ("select", "final", "timing")
REPORTED = ("select", "final")  # timing runs only time steps (study.json "timing" has them)
RUN_FIELDS = ("stage", "method", "lr", "seed", "run_dir", "status")


@dataclass(frozen=True)
class StudyRun:
    """A finished run of the study, rows aligned with every other run's."""
    stage: str
    method: str
    lr: float | None
    seed: int
    name: str          # run_dir, relative to the study folder
    run: Run
    budget: int | None = None  # a successive-halving trial's steps (study.json `budget`)

    def correct(self, labels: np.ndarray) -> np.ndarray:
        return self.run.predictions["pred"].to_numpy() == labels


def build_study_report(study_dir: Path, out_dir: Path | None = None, *,
                       bootstrap: int = ev.DEFAULT_BOOTSTRAP, seed: int = 0,
                       data_dir: Path | None = None) -> dict:
    """Summarise the study, write out_dir [default: STUDY_DIR/report], return report.json's
    content. Bad input raises a one-line ValueError / RunDirError before anything is written."""
    study_dir = Path(study_dir)
    out_dir = study_dir / "report" if out_dir is None else Path(out_dir)
    if bootstrap < ev.MIN_BOOTSTRAP:
        raise ValueError(f"--bootstrap {bootstrap}: use at least {ev.MIN_BOOTSTRAP} resamples")
    report.check_out_dir(out_dir)
    study = read_study(study_dir)
    runs, missing = read_runs(study_dir, study)
    result = summarize(study, runs, missing, bootstrap=bootstrap, seed=seed, data_dir=data_dir)
    pngs = study_figures.draw(result)   # also records result["figures"]
    markdown = study_markdown.render(result)
    write_report(out_dir, result, markdown, pngs)
    return result


# ---- reading ----------------------------------------------------------------------------

def read_study(study_dir: Path) -> dict:
    path = study_dir / STUDY_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; point STUDY_DIR at the --out folder of "
                                f"python -m shared.jobs.study")
    try:
        study = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(study, dict) or study.get("version") != 1:
        raise ValueError(f"{path}: version is not 1; this report reads study.json version 1")
    for key, kind in (("settings", dict), ("methods", dict), ("runs", list)):
        if not isinstance(study.get(key), kind):
            raise ValueError(f"{path}: field {key!r} is missing or not a {kind.__name__}; "
                             f"rerun python -m shared.jobs.study")
    settings, methods = study["settings"], study["methods"]
    for name, method in methods.items():
        if not isinstance(method, dict) or not _number_or_none(method.get("chosen_lr")):
            raise ValueError(f"{path}: methods.{name} is not an object whose chosen_lr is a "
                             f"number or null")
    if settings.get("target_method") not in methods:
        raise ValueError(f"{path}: settings.target_method {settings.get('target_method')!r} "
                         f"is not one of the methods ({', '.join(methods)})")
    if ev.number(settings.get("target_fraction")) is None or \
            not 0 < settings["target_fraction"] <= 1:
        raise ValueError(f"{path}: settings.target_fraction "
                         f"{settings.get('target_fraction')!r} must be a number in (0, 1]")
    for k, entry in enumerate(study["runs"]):
        lacking = [f for f in RUN_FIELDS if f not in entry] if isinstance(entry, dict) else ["all"]
        if lacking:
            raise ValueError(f"{path}: runs[{k}] lacks field(s) {', '.join(lacking)}")
        if entry["stage"] not in STAGES or entry["method"] not in methods:
            raise ValueError(f"{path}: runs[{k}] has stage {entry['stage']!r} and method "
                             f"{entry['method']!r}; stages are {', '.join(STAGES)}, methods "
                             f"{', '.join(methods)}")
        if not isinstance(entry["seed"], int) or not _number_or_none(entry["lr"]):
            raise ValueError(f"{path}: runs[{k}] has seed {entry['seed']!r} and lr "
                             f"{entry['lr']!r}; the seed must be an integer, lr a number or null")
    return study


def _number_or_none(value) -> bool:
    return value is None or ev.number(value) is not None


def read_runs(study_dir: Path, study: dict) -> tuple[list[StudyRun], list[dict]]:
    """The finished runs, checked comparable and aligned by validation id; the others."""
    reported = [e for e in study["runs"] if e["stage"] in REPORTED]
    finished = [e for e in reported if e["status"] == "finished"]
    missing = [{**{key: e[key] for key in RUN_FIELDS}, "error": e.get("error")}
               for e in reported if e["status"] != "finished"]
    if not finished:
        raise ValueError(f"{study_dir / STUDY_JSON}: no run has status 'finished'; nothing to "
                         f"report yet")
    seen: dict[tuple, str] = {}
    for entry in finished:
        key = (entry["stage"], entry["method"], entry["lr"], entry["seed"], entry.get("budget"))
        if key in seen:
            raise ValueError(f"{study_dir / STUDY_JSON}: runs {seen[key]} and "
                             f"{entry['run_dir']} are the same {entry['stage']} trial of "
                             f"{entry['method']} (lr {entry['lr']}, seed {entry['seed']})")
        seen[key] = entry["run_dir"]
    names = [e["run_dir"] for e in finished]
    aligned = ev.align_runs([read_run(study_dir / name) for name in names], names)
    return [StudyRun(e["stage"], e["method"], e["lr"], e["seed"], e["run_dir"], run,
                     e.get("budget") if e["stage"] == "select" else None)
            for e, run in zip(finished, aligned)], missing


def method_order(study: dict) -> list[str]:
    """The target method first (every comparison is read against it), then the study's order."""
    target = study["settings"]["target_method"]
    return [target] + [m for m in study["methods"] if m != target]


def manifest_numbers(manifest: dict) -> dict:
    """What the trainer recorded about its dev evaluations; None where it recorded nothing (a
    tf_baseline run has no dev part)."""
    best = manifest.get("best") if isinstance(manifest.get("best"), dict) else {}
    stopped = manifest.get("stopped") if isinstance(manifest.get("stopped"), dict) else {}
    return {"best_step": ev.number(best.get("step")),
            "best_dev_accuracy": ev.number(best.get("dev_accuracy")),
            "best_dev_loss": ev.number(best.get("dev_loss")),
            "steps": ev.number(manifest.get("steps")), "stopped": stopped.get("reason")}


# ---- numbers ----------------------------------------------------------------------------

def summarize(study: dict, runs: list[StudyRun], missing: list[dict], *, bootstrap: int,
              seed: int, data_dir=None) -> dict:
    """Every number of the report (JSON-ready)."""
    frame = runs[0].run.predictions
    labels, languages = frame["label"].to_numpy(), frame["language"].to_numpy()
    order = method_order(study)
    finals = [r for r in runs if r.stage == "final"]
    correct = {m: {r.seed: r.correct(labels) for r in finals if r.method == m} for m in order}
    correct = {m: by_seed for m, by_seed in correct.items() if by_seed}
    methods = [method_row(study, m, [r for r in finals if r.method == m], labels)
               for m in order]
    curves = {m: study_curves.dev_curve({r.seed: r.run.evals for r in finals if r.method == m})
              for m in order}
    curves = {m: curve for m, curve in curves.items() if curve is not None}
    equivalence = equivalence_plan(study)
    margin = equivalence["margin"]
    pairs = [pooled_pair(a, b, correct[a], correct[b], bootstrap, seed, margin)
             for a, b in method_pairs([m for m in order if m in correct])]
    selection = selection_rows(study, [r for r in runs if r.stage == "select"], order)
    return {
        "study": {"command": study.get("command"), "code": study.get("code") or {},
                  "settings": study["settings"], "timing": study.get("timing") or {}},
        "split": {"fingerprint": runs[0].run.split_fingerprint, "n_val": int(len(labels))},
        "options": {"bootstrap_resamples": bootstrap, "seed": seed,
                    "confidence": stats.CONFIDENCE},
        "baselines": ev.trivial_baselines(labels), "missing": missing,
        "other_code": other_code(study, runs),
        "methods": methods,
        "pairs": pairs, "equivalence": equivalence,
        "cross_framework": cross_framework(study, methods, pairs),
        "selection": selection,
        "selection_checks": selection_checks(selection),
        "curves": {m: curve.to_dict("records") for m, curve in curves.items()},
        "wall_clock": study_curves.wall_clock(study, list(curves)),
        "time_to_target": study_curves.time_to_target(study, methods, curves),
        "per_language": per_language(correct, labels, languages, methods),
        "english_pairs": english_pairs(correct, languages, bootstrap, seed, margin),
        "premise": premise_table(finals, correct, labels, languages, data_dir),
        "compute": compute_used(runs, order)}


def equivalence_plan(study: dict) -> dict:
    """The equivalence margin and primary pair the study's plan fixed before its final runs
    (study.json settings), or the report's default margin, marked as not fixed in advance."""
    settings = study["settings"]
    margin = ev.number(settings.get("equivalence_margin"))
    if margin is not None and not 0 < margin < 1:
        raise ValueError(f"settings.equivalence_margin {margin}: must lie in (0, 1)")
    primary = settings.get("primary")
    return {"margin": DEFAULT_MARGIN if margin is None else margin,
            "fixed_in_plan": margin is not None,
            "dev_part_per_seed": bool(settings.get("dev_seed_per_seed")),
            "primary": primary if isinstance(primary, list) and len(primary) == 2 else None}


def other_code(study: dict, runs: list[StudyRun]) -> list[dict]:
    """The finished runs whose manifest records another commit than the study's: a study
    continued from another checkout, or a trainer that imported another checkout's code."""
    code = study.get("code") or {}
    own = None if code.get("commit") is None else code["commit"][:12] + (
        "+dirty" if code.get("dirty") else "")
    commits = ev.code_versions([r.run for r in runs], [r.name for r in runs])["commits"]
    return [{"run_dir": name, "commit": commit} for name, commit in commits.items()
            if commit is not None and own is not None and commit != own]


def method_row(study: dict, method: str, finals: list[StudyRun], labels: np.ndarray) -> dict:
    finals = sorted(finals, key=lambda r: r.seed)
    per_seed = [{"seed": r.seed, "run_dir": r.name,
                 "accuracy": stats.accuracy(labels, r.run.predictions["pred"]),
                 "macro_f1": stats.macro_f1(labels, r.run.predictions["pred"]),
                 **manifest_numbers(r.run.manifest),
                 "stalled_from": study_curves.stalled_from(r.run.evals),
                 "evaluated_to": None if r.run.evals is None or r.run.evals.empty
                 else int(r.run.evals["step"].max())} for r in finals]
    scores = pd.DataFrame(per_seed, columns=["accuracy", "macro_f1", "best_step",
                                             "best_dev_accuracy"], dtype=float)
    first = finals[0].run.manifest if finals else {}
    return {"method": method, "trainer": study["methods"][method].get("trainer"),
            "chosen_lr": study["methods"][method].get("chosen_lr"),
            "recipe_lr": ev.recipe(first)["learning_rate"] if finals else None,
            "seeds": [r.seed for r in finals],
            "trainable_params": ev.resources(first)["trainable_params"],
            "per_seed": per_seed, "accuracy": t_interval(scores["accuracy"]),
            "macro_f1_mean": mean_of(scores["macro_f1"]),
            "best_step_mean": mean_of(scores["best_step"]),
            "best_dev_accuracy_mean": mean_of(scores["best_dev_accuracy"])}


def compute_used(runs: list[StudyRun], order: list[str]) -> list[dict]:
    """Hours of the finished selection and final runs, per stage and method: the sum of their
    manifests' epoch seconds (training, dev evaluations and checkpoints, as recorded: time
    lost to an interruption, start-up and the final prediction are not in it)."""
    rows = []
    for stage in REPORTED:
        for method in order:
            mine = [r for r in runs if r.stage == stage and r.method == method]
            if mine:
                seconds = sum(ev.number(epoch.get("seconds")) or 0.0
                              for r in mine for epoch in r.run.manifest.get("epochs") or []
                              if isinstance(epoch, dict))
                rows.append({"stage": stage, "method": method, "runs": len(mine),
                             "hours": seconds / 3600})
    return rows


def selection_rows(study: dict, selects: list[StudyRun], order: list[str]) -> list[dict]:
    rows = []
    for r in sorted(selects, key=lambda r: (order.index(r.method), r.budget or 0, r.lr or 0.0,
                                            r.seed)):
        chosen = study["methods"][r.method].get("chosen_lr")
        budget = study["methods"][r.method].get("chosen_budget")
        rows.append({"method": r.method, "lr": r.lr, "seed": r.seed, "run_dir": r.name,
                     **({} if r.budget is None else {"budget": r.budget}),
                     **manifest_numbers(r.run.manifest), "dev_rows": dev_rows(r.run.manifest),
                     "chosen": None not in (chosen, r.lr) and math.isclose(r.lr, chosen)
                     and budget in (None, r.budget)})
    return rows


def dev_rows(manifest: dict) -> int | None:
    """Rows of the run's dev part (manifest data.dev.n_dev); None without one."""
    dev = (manifest.get("data") or {}).get("dev") or {}
    n = dev.get("n_dev") if isinstance(dev, dict) else None
    return n if isinstance(n, int) and n > 0 else None


def selection_checks(selection: list[dict]) -> dict:
    """What the trials could not tell. Per method with two or more finished trials: the
    chosen rate's best dev accuracy minus the best of its other rates, beside the widest 95 %
    half-width of one accuracy on the dev rows; a smaller margin does not separate the two
    rates. Over all trials: those whose best dev accuracy came at their last step when the
    step budget stopped them, whose curves still rose: a short budget favours the rates that
    learn fast early over those that end higher."""
    margins = []
    for method in dict.fromkeys(row["method"] for row in selection):
        trials = [r for r in selection
                  if r["method"] == method and r["best_dev_accuracy"] is not None]
        chosen = [r for r in trials if r["chosen"]]
        others = sorted((r for r in trials if not r["chosen"]),
                        key=lambda r: r["best_dev_accuracy"], reverse=True)
        if not chosen or not others:
            continue
        margin = chosen[0]["best_dev_accuracy"] - others[0]["best_dev_accuracy"]
        n = chosen[0]["dev_rows"]
        half = widest_half_width(n) if n else None
        margins.append({"method": method, "chosen_lr": chosen[0]["lr"],
                        "runner_up_lr": others[0]["lr"], "margin": margin, "dev_rows": n,
                        "widest_half_width": half,
                        "within_noise": None if half is None else bool(abs(margin) < half)})
    rising = [r["run_dir"] for r in selection
              if r["stopped"] == "max_steps" and r["best_step"] is not None
              and r["best_step"] == r["steps"]]
    return {"trials": len(selection), "still_rising": rising, "margins": margins}


def per_language(correct: dict, labels, languages, methods: list[dict]) -> dict:
    """Mean accuracy over seeds per language (= accuracy of the rows' mean correctness, as
    every seed scores the same rows), with the language's own majority-class accuracy."""
    overall = {"n": int(len(labels)), "accuracy": {},
               "majority_accuracy": ev.trivial_baselines(labels)["majority"]["accuracy"]}
    if not correct:
        return {"rows": [], "all": overall}
    mean_right = pd.DataFrame({m: np.mean(list(by_seed.values()), axis=0)
                               for m, by_seed in correct.items()})
    grouped = mean_right.groupby(languages)
    means, sizes = grouped.mean(), grouped.size()
    majority = pd.Series(labels).groupby(languages).agg(
        lambda part: ev.trivial_baselines(part.to_numpy())["majority"]["accuracy"])
    rows = [{"language": language, "n": int(sizes[language]),
             "majority_accuracy": float(majority[language]),
             "widest_half_width": widest_half_width(int(sizes[language])),
             "accuracy": {m: float(v) for m, v in means.loc[language].items()}}
            for language in means.index]
    overall["accuracy"] = {row["method"]: row["accuracy"]["mean"] for row in methods
                           if row["method"] in correct}
    others = np.asarray(languages) != "English"
    non_english = None
    if others.any() and not others.all():  # the 14 languages beside English, pooled
        non_english = {"n": int(others.sum()),
                       "widest_half_width": widest_half_width(int(others.sum())),
                       "majority_accuracy": ev.trivial_baselines(
                           np.asarray(labels)[others])["majority"]["accuracy"],
                       "accuracy": {m: float(mean_right[m].to_numpy()[others].mean())
                                    for m in mean_right.columns}}
    return {"rows": rows, "non_english": non_english, "all": overall}


def widest_half_width(n: int) -> float:
    """Half-width of the normal 95 % interval of an accuracy near 0.5 on n rows (its widest):
    how far apart two accuracies on this language's rows can be by chance alone."""
    return float(norm.ppf(0.5 + stats.CONFIDENCE / 2) * math.sqrt(0.25 / n))


def premise_table(finals: list[StudyRun], correct: dict, labels, languages,
                  data_dir) -> dict:
    """Accuracy on validation rows whose premise the run trained on vs the rest, per method
    (mean over seeds), pooled and within English and within the other languages. Seen rows are
    mostly English (its premises repeat most), so the pooled gap mixes the language effect into
    the premise effect (Simpson's paradox); only the within-language gaps say what seeing a
    premise does. Runs are grouped by their recorded data spec: the dev part's seed may differ
    between seeds, and with it the rows each run trained on."""
    if not finals:
        return {"available": False, "note": "no final run finished", "methods": []}
    groups: dict[str, list[StudyRun]] = {}
    for r in finals:
        spec = (r.run.manifest.get("data") or {}).get("spec")
        groups.setdefault(json.dumps(spec, sort_keys=True, default=str), []).append(r)
    masks, notes = {}, []
    for members in groups.values():
        seen, note = ev.premise_seen([r.run for r in members], data_dir)
        if seen is None:
            return {"available": False, "note": note, "methods": []}
        masks.update({(r.method, r.seed): seen for r in members})
        notes.append(note)
    english = np.asarray(languages) == "English"
    strata = {"all": np.ones(len(labels), bool), "English": english,
              "other languages": ~english}
    rows = []
    for method, by_seed in correct.items():
        row = {"method": method}
        for stratum, keep in strata.items():
            parts = pd.DataFrame([_seen_scores(right[keep], masks[method, s][keep], labels[keep])
                                  for s, right in by_seed.items()])
            scores = {part: mean_of(parts[part]) for part in
                      ("seen", "unseen", "majority_seen", "majority_unseen")}
            gap = (None if None in (scores["seen"], scores["unseen"])
                   else scores["seen"] - scores["unseen"])
            counts = {"n_seen": sorted({int(n) for n in parts["n_seen"]}),
                      "n_unseen": sorted({int(keep.sum()) - int(n) for n in parts["n_seen"]})}
            if stratum == "all":
                row.update(counts, **scores, gap=gap)
            else:
                row.setdefault("strata", []).append({"rows": stratum, **counts, **scores,
                                                     "gap": gap})
        rows.append(row)
    # The share of English among seen and unseen rows, over every run's mask: min and max.
    english_share = {}
    for part, flip in (("seen", False), ("unseen", True)):
        shares = [float(english[mask != flip].mean()) for mask in masks.values()
                  if (mask != flip).any()]
        english_share[part] = [min(shares), max(shares)] if shares else None
    return {"available": True, "note": "; ".join(sorted(set(notes))), "methods": rows,
            "english_share": english_share}


def _seen_scores(right: np.ndarray, seen: np.ndarray, labels: np.ndarray) -> dict:
    scores = {"n_seen": int(seen.sum())}
    for part, mask in (("seen", seen), ("unseen", ~seen)):
        scores[part] = float(right[mask].mean()) if mask.any() else np.nan
        scores[f"majority_{part}"] = (ev.trivial_baselines(labels[mask])["majority"]["accuracy"]
                                      if mask.any() else np.nan)
    return scores


# ---- writing ----------------------------------------------------------------------------

def write_report(out_dir: Path, result: dict, markdown: str, pngs: dict[str, bytes]) -> None:
    """Each file atomically; everything is rendered before the first write. report.json goes
    first, so the folder is recognised as a report (check_out_dir) whatever happens next."""
    atomic_write_text(out_dir / report.REPORT_JSON,
                      json.dumps(result, indent=2, allow_nan=False) + "\n")
    for name, figure in result["figures"].items():
        if "file" in figure:
            atomic_write_bytes(out_dir / figure["file"], pngs[name])
        else:   # an older report's figure would contradict this one's "skipped"
            (out_dir / f"{name}.png").unlink(missing_ok=True)
    atomic_write_text(out_dir / report.REPORT_MD, markdown)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shared.evaluation.study_report",
        description="Summarise a study folder (python -m shared.jobs.study): writes report.md "
                    "(per-method table over seeds with Student-t intervals and baselines, "
                    "pooled paired comparisons, learning-rate selection, time to target, "
                    "per-language and premise seen/unseen accuracy), report.json (every "
                    "number in report.md) and PNG figures (dev accuracy per step and per "
                    "second, accuracy per trainable parameters).")
    parser.add_argument("study_dir", type=Path, metavar="STUDY_DIR",
                        help="folder holding study.json and the runs it names")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="report folder; created, or replaced if it holds an older report "
                             "[default: STUDY_DIR/report]")
    parser.add_argument("--bootstrap", type=int, default=ev.DEFAULT_BOOTSTRAP, metavar="N",
                        help=f"paired bootstrap resamples of the validation rows, at least "
                             f"{ev.MIN_BOOTSTRAP} [default: {ev.DEFAULT_BOOTSTRAP}]")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="bootstrap seed [default: 0]")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="folder with the runs' train.csv, for the premise seen/unseen "
                             "section [default: the data_dir recorded in each manifest]")
    args = parser.parse_args(argv)
    out = args.study_dir / "report" if args.out is None else args.out
    with exit_on_bad_input():
        build_study_report(args.study_dir, out, bootstrap=args.bootstrap, seed=args.seed,
                           data_dir=args.data_dir)
    print(out / report.REPORT_MD)


if __name__ == "__main__":
    main()
