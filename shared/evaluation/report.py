"""Writes a comparison (shared.evaluation.evaluate.compare) as REPORT_DIR/{report.md, report.json, *.png}.

The folder is built under a temporary sibling name and renamed into place at the end, so a
failure never leaves a half-written report and an older report survives until then.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from shared.evaluation import figures
from shared.data.watson import LABEL_NAMES
from shared.runs.run_dir import Run

REPORT_MD = "report.md"
REPORT_JSON = "report.json"


def check_out_dir(out_dir: Path) -> None:
    """Refuse to replace anything but an empty folder or an older report."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder; choose a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / REPORT_JSON).is_file():
        raise ValueError(f"--out {out_dir}: folder exists and holds no {REPORT_JSON}; choose a "
                         f"new or empty folder (only an older report is replaced)")


def write_report_dir(out_dir: Path, result: dict, runs: list[Run]) -> None:
    """Draw the figures, write report.md and report.json; adds result["figures"]."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    retired = staging.with_name(staging.name.replace(".tmp-", ".old-"))
    try:
        staging.chmod(0o755)   # mkdtemp makes it owner-only; a report is for everyone
        result["figures"] = draw_figures(staging, result, runs)
        (staging / REPORT_JSON).write_text(
            json.dumps(result, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        (staging / REPORT_MD).write_text(render_markdown(result), encoding="utf-8")
        if out_dir.exists():
            os.replace(out_dir, retired)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired.exists() and not out_dir.exists():
            os.replace(retired, out_dir)   # the old report comes back
        raise
    shutil.rmtree(retired, ignore_errors=True)


def draw_figures(folder: Path, result: dict, runs: list[Run]) -> dict:
    """{figure: {"file": name.png} or {"skipped": reason}}."""
    names = [run["name"] for run in result["runs"]]
    labels = runs[0].predictions["label"].to_numpy()
    drawers = {
        "per_language_accuracy": lambda path: figures.per_language_accuracy(result, path),
        "confusion_matrices": lambda path: figures.confusion_matrices(result, path),
        "training_curves": lambda path: figures.training_curves(
            names, [run.history for run in runs], path),
        "resources": lambda path: figures.resources(result, path),
        "tsne": lambda path: figures.tsne(names, [run.embeddings for run in runs], labels,
                                          result["options"]["seed"], path),
    }
    drawn = {}
    for name, draw in drawers.items():
        skipped = draw(folder / f"{name}.png")
        drawn[name] = {"skipped": skipped} if skipped else {"file": f"{name}.png"}
    return drawn


# ---- formatting -----------------------------------------------------------------------

def fmt_num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_signed(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:+.{digits}f}"


def fmt_pct(value) -> str:
    return "n/a" if value is None else f"{value:.2f} %"


def fmt_count(value) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def fmt_ci(ci, signed: bool = False) -> str:
    fmt = fmt_signed if signed else fmt_num
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows] + [""]


# ---- sections ---------------------------------------------------------------------------

def render_markdown(result: dict) -> str:
    split, options = result["split"], result["options"]
    level = f"{options['confidence'] * 100:.0f} %"
    lines = ["# Run comparison", ""] + _verdicts(result) + _provenance(result) + [
             f"{len(result['runs'])} run(s) on the same validation split: rule "
             f"`{split.get('rule', 'n/a')}`, {result['n_val']:,} validation rows, fingerprint "
             f"`{split['fingerprint'][:16]}…`. Confidence intervals: {level} percentile "
             f"bootstrap, {options['bootstrap_resamples']:,} resamples of the validation rows "
             f"(seed {options['seed']}), the same resamples for every run.", ""]
    for section in (_summary, _recipes, _pairwise, _per_language, _per_class, _memorisation, _resources,
                    _figures):
        lines += section(result, level)
    return "\n".join(lines)


VERDICT_WORDS = {"above": "above", "below": "below", "inconclusive": "not distinguishable from"}


def _verdicts(result: dict) -> list[str]:
    """The report's first words: did each run beat the trivial baselines?"""
    baselines = result["baselines"]
    chance, majority = baselines["chance"]["accuracy"], baselines["majority"]
    lines = [f"Baselines on these {result['n_val']:,} rows: chance (uniform guessing) "
             f"{fmt_num(chance)}; majority class (always “{LABEL_NAMES[majority['label']]}”) "
             f"{fmt_num(majority['accuracy'])}. A run beats a baseline when its whole accuracy "
             f"interval lies above it.", ""]
    for run in result["runs"]:
        m, v = run["metrics"], run["verdict"]
        if v["chance"] == "above" and v["majority"] == "above":
            said = "beats both baselines"
        elif v["chance"] == "above":
            said = (f"beats chance; {VERDICT_WORDS[v['majority']]} the majority-class "
                    f"baseline")
        else:
            said = (f"does NOT beat chance: {VERDICT_WORDS[v['chance']]} chance and "
                    f"{VERDICT_WORDS[v['majority']]} the majority-class baseline")
        lines.append(f"- **{run['name']}**: accuracy {fmt_num(m['accuracy'])} "
                     f"{fmt_ci(m['accuracy_ci'])}: {said}.")
    return lines + [""]


def _provenance(result: dict) -> list[str]:
    code = result.get("code") or {}
    commits = code.get("commits") or {}
    if not commits or code.get("same"):
        shown = next(iter(commits.values()), None)
        return [f"All runs come from code commit `{shown}`.", ""] if shown else []
    listed = ", ".join(f"{name} `{commit or 'not recorded'}`" for name, commit in commits.items())
    return [f"**The runs come from different code commits** ({listed}): differences may come "
            f"from code changes as well as from the methods.", ""]


def _summary(result: dict, level: str) -> list[str]:
    rows = []
    for run in result["runs"]:
        m, r = run["metrics"], run["resources"]
        rows.append([run["name"], str(run["trainer"]),
                     f"{fmt_num(m['accuracy'])} {fmt_ci(m['accuracy_ci'])}",
                     f"{fmt_num(m['macro_f1'])} {fmt_ci(m['macro_f1_ci'])}",
                     fmt_pct(r["trainable_pct"]), fmt_num(r["epoch_seconds_median"], 1),
                     fmt_num(r["examples_per_s_median"], 1), fmt_num(r["peak_host_rss_mb"], 0)])
    baselines = result["baselines"]
    majority = baselines["majority"]
    rows += [["*majority class (baseline)*", f"always {LABEL_NAMES[majority['label']]}",
              fmt_num(majority["accuracy"]), "", "", "", "", ""],
             ["*chance (baseline)*", "uniform guessing", fmt_num(baselines["chance"]["accuracy"]),
              "", "", "", "", ""]]
    return ["## Summary", ""] + md_table(
        ["run", "trainer", f"accuracy [{level} CI]", f"macro-F1 [{level} CI]", "trainable",
         "epoch s (median)", "examples/s", "peak RSS MB"], rows)


def _recipes(result: dict, level: str) -> list[str]:
    rows = [[run["name"], run["recipe"]["method"], _epochs_trained(run["recipe"]),
             "n/a" if run["recipe"]["learning_rate"] is None
             else f"{run['recipe']['learning_rate']:g}",
             fmt_count(run["recipe"]["global_batch"]), str(run["recipe"]["sequence_length"]),
             (run["recipe"].get("training_data") or {}).get("words", "not recorded")]
            for run in result["runs"]]
    notes = []
    if result.get("training_sets", 1) > 1:
        notes = ["**The runs trained on different rows** (see “training data”): they are scored "
                 "on the same validation rows, so the comparisons below hold, but a difference "
                 "may come from the training data as well as from the method.", ""]
    contaminated = [run["name"] for run in result["runs"]
                    if (run["recipe"].get("training_data") or {}).get("contaminated")]
    if contaminated:
        notes += [f"**Contaminated: {', '.join(contaminated)}** trained on extra rows that "
                  f"repeat validation or test pairs (--allow-overlap): their validation scores "
                  f"overstate what they would score on unseen pairs.", ""]
    return ["## What each run trained", ""] + notes + md_table(
        ["run", "method", "epochs", "learning rate", "global batch", "sequence length",
         "training data"], rows)


def _epochs_trained(recipe: dict) -> str:
    """The epochs asked for, and where a run stopped before them (patience or a step cap)."""
    stopped = recipe.get("stopped") or {}
    if stopped.get("reason") not in ("patience", "max_steps") or stopped.get("step") is None:
        return str(recipe["epochs"])
    return (f"{recipe['epochs']} (stopped at step {stopped['step']:,.0f} in epoch "
            f"{recipe['epochs_run']}: {stopped['reason']})")


def _pairwise(result: dict, level: str) -> list[str]:
    if not result["pairs"]:
        return ["## Pairwise comparisons", "", "Only one run: nothing to compare.", ""]
    rows = []
    for pair in result["pairs"]:
        test = pair["mcnemar"]
        rows.append([f"{pair['b']} vs {pair['a']}",
                     f"{fmt_signed(pair['accuracy_diff'])} {fmt_ci(pair['accuracy_diff_ci'], True)}",
                     f"{fmt_signed(pair['macro_f1_diff'])} {fmt_ci(pair['macro_f1_diff_ci'], True)}",
                     f"{test['only_a']} / {test['only_b']}", f"{test['p_value']:.4g}"])
    return ["## Pairwise comparisons", "",
            "“B vs A” is B − A. McNemar: exact two-sided binomial test on the rows exactly "
            "one of the two runs gets right (A only / B only).", ""] + md_table(
        ["pair", f"Δ accuracy [{level} CI]", f"Δ macro-F1 [{level} CI]",
         "right: A only / B only", "McNemar p"], rows)


def _per_language(result: dict, level: str) -> list[str]:
    runs = result["runs"]
    header = ["language", "n"] + [f"{kind} {run['name']}" for run in runs
                                  for kind in ("accuracy", "macro-F1")]
    rows = [[row["language"], str(row["n"])] +
            [fmt_num(run["per_language"][k][key]) for run in runs for key in ("accuracy", "macro_f1")]
            for k, row in enumerate(runs[0]["per_language"])]
    rows.append(["**all**", f"{result['n_val']:,}"] +
                [fmt_num(run["metrics"][key]) for run in runs for key in ("accuracy", "macro_f1")])
    lines = ["## Per-language results", "",
             "Macro-F1 per language averages the classes that occur among that language's "
             "labels or predictions.", ""] + md_table(header, rows)
    by_name = {run["name"]: run["metrics"] for run in runs}
    for pair in result["pairs"]:
        a, b = pair["a"], pair["b"]
        lines += [f"### {b} vs {a}: accuracy per language", ""] + md_table(
            ["language", "n", f"acc {a}", f"acc {b}", "Δ"],
            [[row["language"], str(row["n"]), fmt_num(row["accuracy_a"]), fmt_num(row["accuracy_b"]),
              fmt_signed(row["delta"])] for row in pair["per_language"]] +
            [["**all**", f"{result['n_val']:,}", fmt_num(by_name[a]["accuracy"]),
              fmt_num(by_name[b]["accuracy"]), fmt_signed(pair["accuracy_diff"])]])
    return lines


def _per_class(result: dict, level: str) -> list[str]:
    lines = ["## Per-class results", ""]
    for run in result["runs"]:
        per_class = run["metrics"]["per_class"]
        matrix = run["metrics"]["confusion_matrix"]
        lines += [f"### {run['name']}", ""] + md_table(
            ["class", "precision", "recall", "F1", "support"],
            [[name, fmt_num(c["precision"]), fmt_num(c["recall"]), fmt_num(c["f1"]), str(c["support"])]
             for name, c in per_class.items()])
        lines += md_table(["true \\ predicted"] + list(LABEL_NAMES),
                        [[name] + [str(v) for v in row] for name, row in zip(LABEL_NAMES, matrix)])
    return lines


def _memorisation(result: dict, level: str) -> list[str]:
    info = result["memorisation"]
    lines = ["## Premise memorisation", ""]
    if not info["available"]:
        return lines + [f"Skipped: {info['note']}.", ""]
    lines += [f"Validation rows whose premise also occurs in the training part (seen) vs rows "
              f"whose premise does not (unseen); {info['note']}. A large gap means the model "
              f"leans on premises it has memorised.", ""]
    rows = [[run["name"], fmt_num(run["memorisation"]["seen"]["accuracy"]),
             fmt_num(run["memorisation"]["unseen"]["accuracy"]),
             fmt_signed(run["memorisation"]["gap"])] for run in result["runs"]]
    return lines + md_table(["run", f"accuracy seen (n = {info['n_seen']:,})",
                           f"accuracy unseen (n = {info['n_unseen']:,})", "seen − unseen"], rows)


def _resources(result: dict, level: str) -> list[str]:
    rows = []
    for run in result["runs"]:
        r = run["resources"]
        rows.append([run["name"], fmt_count(r["total_params"]), fmt_count(r["trainable_params"]),
                     fmt_pct(r["trainable_pct"]), _epochs_cell(r),
                     fmt_num(r["epoch_seconds_median"], 1), fmt_num(r["examples_per_s_median"], 1),
                     fmt_num(r["peak_host_rss_mb"], 0), fmt_num(r["peak_accelerator_mem_mb"], 0),
                     fmt_count(r["replicas"])])
    lines = ["## Resources", "",
             "From the manifests. An epoch's time covers its training steps and validation; "
             "the first epoch's also covers compilation. Epoch time and examples/s are medians "
             "over the epochs after the first when a run has 3 or more (the timed epochs are "
             "shown in brackets), else over all of them (with 2: their mean, compilation "
             "included).", ""] + md_table(
        ["run", "parameters", "trainable", "trainable %", "epochs", "epoch s", "examples/s",
         "peak RSS MB", "peak accel. MB", "replicas"], rows)
    by_name = {run["name"]: run["resources"] for run in result["runs"]}
    lines += [f"- {_ratio_sentence(pair, by_name)}" for pair in result["pairs"]]
    return lines + [""]


def _epochs_cell(r: dict) -> str:
    """The epoch count, and which epochs the medians cover when not all of them."""
    timed = [e for e in r.get("timed_epochs", []) if e is not None]
    if len(timed) == r["epochs"] or not timed:
        return str(r["epochs"])
    span = f"{timed[0]}" if len(timed) == 1 else f"{timed[0]}–{timed[-1]}"
    return f"{r['epochs']} (timed {span})"


def _ratio_sentence(pair: dict, by_name: dict) -> str:
    a, b, ratios = pair["a"], pair["b"], pair["resource_ratios"]
    parts, missing = [], []
    if by_name[b]["trainable_pct"] is not None:
        parts.append(f"trains {fmt_pct(by_name[b]['trainable_pct'])} of its parameters "
                     f"({a}: {fmt_pct(by_name[a]['trainable_pct'])})")
    if ratios["trainable_params"] is not None:
        parts.append(f"{ratios['trainable_params']:.3g}× {a}'s trainable parameter count")
    speedup = ratios["speedup_per_epoch"]
    if speedup is None:
        missing.append("epoch time")
    elif speedup >= 1:
        parts.append(f"{speedup:.2f}× faster per epoch")
    else:
        parts.append(f"{1 / speedup:.2f}× slower per epoch")
    for key, what in (("examples_per_s", "the examples/s"),
                      ("peak_host_rss", "the peak host memory"),
                      ("peak_accelerator_mem", "the peak accelerator memory")):
        if ratios[key] is None:
            missing.append(what.removeprefix("the "))
        else:
            parts.append(f"{ratios[key]:.2f}× {what}")
    said = ", ".join(parts) if parts else "has no comparable numbers"
    return f"**{b} vs {a}**: {b} {said}." + (
        f" Not recorded for both: {', '.join(missing)}." if missing else "")


FIGURE_TITLES = {"per_language_accuracy": "Accuracy per language",
                 "confusion_matrices": "Confusion matrices",
                 "training_curves": "Training curves (history.csv)",
                 "resources": "Resources",
                 "tsne": "t-SNE of validation CLS embeddings"}


def _figures(result: dict, level: str) -> list[str]:
    lines = ["## Figures", ""]
    for name, title in FIGURE_TITLES.items():
        figure = result["figures"][name]
        lines += [f"### {title}", ""]
        lines += [f"![{title}]({figure['file']})" if "file" in figure
                  else f"Skipped: {figure['skipped']}.", ""]
    return lines
