"""Compare run directories written under the shared run contract (shared/runs/run_dir.py).

    python -m shared.evaluation RUN_DIR [RUN_DIR ...] --out REPORT_DIR \
        [--names A,B,...] [--bootstrap 2000] [--seed 0] [--data-dir DIR]

REPORT_DIR receives report.md (tables + figures), report.json (every number) and PNG figures.
Runs are compared only when they share the split fingerprint, validation ids and labels.
Pairs are every (A, B) with A listed before B; "B vs A" means B - A.
Imports neither TensorFlow nor JAX, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from shared.evaluation import report, stats
from shared.cli import exit_on_bad_input
from shared.runs.run_dir import Run, RunDirError, read_run, rebuild_data

DEFAULT_BOOTSTRAP = 2000
MIN_BOOTSTRAP = 1000   # fewer resamples make the 2.5 % / 97.5 % percentiles jumpy


def evaluate(run_dirs, out_dir, *, names=None, bootstrap: int = DEFAULT_BOOTSTRAP,
             seed: int = 0, data_dir=None) -> dict:
    """Compare the runs, write REPORT_DIR atomically, return the report.json content.

    Raises RunDirError / ValueError (one line) before writing anything when the inputs are
    bad or the runs are not comparable.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if bootstrap < MIN_BOOTSTRAP:
        raise ValueError(f"--bootstrap {bootstrap}: use at least {MIN_BOOTSTRAP} resamples")
    out_dir = Path(out_dir)
    report.check_out_dir(out_dir)
    names = run_names(run_dirs, names)
    runs = align_runs([read_run(d) for d in run_dirs], names)
    result = compare(runs, names, bootstrap=bootstrap, seed=seed, data_dir=data_dir)
    report.write_report_dir(out_dir, result, runs)
    return result


def run_names(run_dirs: list[Path], names) -> list[str]:
    names = [d.resolve().name for d in run_dirs] if names is None else list(names)
    if len(names) != len(run_dirs):
        raise ValueError(f"--names has {len(names)} name(s) for {len(run_dirs)} run "
                         f"directories; give one name per run, comma-separated")
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"run names {', '.join(names)} are empty or repeat; pass distinct "
                         f"--names A,B,...")
    return names


def align_runs(runs: list[Run], names: list[str]) -> list[Run]:
    """Check the runs are comparable; return them with rows in the first run's order."""
    for run in runs:
        _check_predictions(run)
    first, name_a = runs[0], names[0]
    aligned = [first]
    for run, name in zip(runs[1:], names[1:]):
        if run.split_fingerprint != first.split_fingerprint:
            raise RunDirError(f"split fingerprints differ: {name_a} {first.split_fingerprint[:12]}"
                              f" vs {name} {run.split_fingerprint[:12]}; runs must share the "
                              f"split (--split, --train-fraction, --split-seed, --limit, data)")
        ids_a, ids_b = first.predictions["id"], run.predictions["id"]
        if set(ids_a) != set(ids_b):
            raise RunDirError(f"validation ids differ between {name_a} and {name} "
                              f"({len(set(ids_a) ^ set(ids_b))} ids in only one of them)")
        positions = pd.Index(ids_b).get_indexer(ids_a)
        run = dataclasses.replace(
            run, predictions=run.predictions.iloc[positions].reset_index(drop=True),
            embeddings=None if run.embeddings is None else run.embeddings[positions])
        for column in ("label", "language"):
            differ = first.predictions[column].to_numpy() != run.predictions[column].to_numpy()
            if differ.any():
                raise RunDirError(f"validation {column}s differ between {name_a} and {name} "
                                  f"on {int(differ.sum())} rows (first id "
                                  f"{ids_a.to_numpy()[differ.argmax()]}); were they scored on "
                                  f"the same data?")
        aligned.append(run)
    return aligned


def _check_predictions(run: Run) -> None:
    frame = run.predictions
    where = run.run_dir / "predictions.csv"
    if len(frame) == 0:
        raise RunDirError(f"{where}: no rows")
    if frame["id"].duplicated().any():
        raise RunDirError(f"{where}: id {frame['id'][frame['id'].duplicated()].iat[0]} repeats")
    for column in ("label", "pred"):
        if not frame[column].isin(stats.LABELS).all():
            raise RunDirError(f"{where}: column {column} holds values other than "
                              f"{', '.join(map(str, stats.LABELS))}")
    if not isinstance(run.manifest["split"], dict) or "fingerprint" not in run.manifest["split"]:
        raise RunDirError(f"{run.run_dir / 'manifest.json'}: split has no fingerprint")


def compare(runs: list[Run], names: list[str], *, bootstrap: int, seed: int,
            data_dir=None) -> dict:
    """Every number of the report (JSON-ready), for aligned runs."""
    frame = runs[0].predictions
    labels, languages = frame["label"].to_numpy(), frame["language"].to_numpy()
    preds = [run.predictions["pred"].to_numpy() for run in runs]
    samples = stats.paired_bootstrap(labels, preds, bootstrap, seed)
    seen, memorisation_note = premise_seen(runs, data_dir)

    scored = []
    for k, (run, name) in enumerate(zip(runs, names)):
        metrics = stats.classification_metrics(labels, preds[k])
        metrics["accuracy_ci"] = stats.percentile_ci(samples["accuracy"][k])
        metrics["macro_f1_ci"] = stats.percentile_ci(samples["macro_f1"][k])
        scored.append({
            "name": name, "run_dir": str(run.run_dir), "trainer": run.manifest.get("trainer"),
            "metrics": metrics,
            "per_language": stats.group_metrics(labels, preds[k], languages, key="language"),
            "memorisation": None if seen is None else _memorisation(labels, preds[k], seen),
            "resources": resources(run.manifest), "recipe": recipe(run.manifest)})

    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            pairs.append(_pair(scored[i], scored[j], labels, preds[i], preds[j], samples, i, j))

    baselines = trivial_baselines(labels)
    for run in scored:
        run["verdict"] = verdict(run["metrics"], baselines)
    return {
        "split": runs[0].manifest["split"], "n_val": int(len(labels)),
        "baselines": baselines, "code": code_versions(runs, names),
        "training_sets": len({run["recipe"]["training_data"]["key"] for run in scored}),
        "options": {"bootstrap_resamples": bootstrap, "seed": seed,
                    "confidence": stats.CONFIDENCE},
        "memorisation": {"available": seen is not None, "note": memorisation_note,
                         "n_seen": None if seen is None else int(seen.sum()),
                         "n_unseen": None if seen is None else int((~seen).sum())},
        "runs": scored, "pairs": pairs}


def trivial_baselines(labels: np.ndarray) -> dict:
    """What a model must beat: guessing uniformly at random (expected accuracy 1/3 whatever the
    labels) and always answering the most frequent validation label (the best any constant
    answer can score on these rows)."""
    counts = np.bincount(labels, minlength=len(stats.LABELS))
    majority = int(counts.argmax())
    return {"chance": {"accuracy": 1.0 / len(stats.LABELS)},
            "majority": {"label": majority, "accuracy": float(counts[majority] / len(labels))}}


def verdict(metrics: dict, baselines: dict) -> dict:
    """Whether the run beat each baseline: 'above' when its whole accuracy interval lies above
    the baseline, 'below' when it lies below, else 'inconclusive' (the interval covers it)."""
    low, high = metrics["accuracy_ci"]
    verdicts = {}
    for name, baseline in baselines.items():
        level = baseline["accuracy"]
        verdicts[name] = "above" if low > level else "below" if high < level else "inconclusive"
    return verdicts


def code_versions(runs: list[Run], names: list[str]) -> dict:
    """Each run's code commit (manifest `code`), and whether they all agree."""
    commits = {}
    for run, name in zip(runs, names):
        code = run.manifest.get("code") or {}
        commit = code.get("commit")
        commits[name] = None if commit is None else commit[:12] + ("+dirty" if code.get("dirty")
                                                                  else "")
    known = set(commits.values()) - {None}
    return {"commits": commits, "same": len(known) <= 1 and None not in commits.values()}


def _pair(a: dict, b: dict, labels, preds_a, preds_b, samples: dict, i: int, j: int) -> dict:
    pair = {"a": a["name"], "b": b["name"]}
    for metric in ("accuracy", "macro_f1"):
        pair[f"{metric}_diff"] = b["metrics"][metric] - a["metrics"][metric]
        pair[f"{metric}_diff_ci"] = stats.percentile_ci(samples[metric][j] - samples[metric][i])
    pair["mcnemar"] = stats.mcnemar_exact(preds_a == labels, preds_b == labels)
    pair["per_language"] = [
        {"language": la["language"], "n": la["n"], "accuracy_a": la["accuracy"],
         "accuracy_b": lb["accuracy"], "delta": lb["accuracy"] - la["accuracy"]}
        for la, lb in zip(a["per_language"], b["per_language"])]
    pair["resource_ratios"] = resource_ratios(a["resources"], b["resources"])
    return pair


def _memorisation(labels, preds, seen: np.ndarray) -> dict:
    parts = {}
    for part, mask in (("seen", seen), ("unseen", ~seen)):
        score = stats.accuracy(labels[mask], preds[mask]) if mask.any() else None
        parts[part] = {"n": int(mask.sum()), "accuracy": score}
    gap = None
    if parts["seen"]["accuracy"] is not None and parts["unseen"]["accuracy"] is not None:
        gap = parts["seen"]["accuracy"] - parts["unseen"]["accuracy"]
    return {**parts, "gap": gap}


def premise_seen(runs: list[Run], data_dir=None) -> tuple[np.ndarray | None, str]:
    """Whether each validation row's premise also occurs in the training part: (mask in row
    order, source) or (None, reason). Run directories do not hold the training rows, so the
    split is rebuilt (shared.runs.run_dir.rebuild_data)."""
    data, reason = rebuild_data(runs, data_dir)
    if data is None:
        return None, reason
    premise_of = dict(zip(data.val["id"], data.val["premise"]))
    train_premises = set(data.train["premise"])
    limit = f", first {data.spec.limit} rows" if data.spec.limit else ""
    return (np.array([premise_of[i] in train_premises for i in runs[0].predictions["id"]]),
            f"training premises from {data.data_dir / 'train.csv'}{limit}")


def recipe(manifest: dict) -> dict:
    """What a run trained with, as the report states it beside its results: both trainers'
    configs name these differently (tf_baseline's learning rate is per replica)."""
    config, training = manifest.get("config") or {}, manifest.get("training") or {}
    lora = config.get("lora") or {}
    if manifest.get("trainer") == "jax_lora":
        method = _jax_method(config, lora, manifest.get("parent"))
    else:
        method = (f"keras-hub LoRA r={config['lora_rank']}" if config.get("lora_rank")
                  else "full fine-tune")
    epochs = manifest.get("epochs") or []
    stopped = manifest.get("stopped") if isinstance(manifest.get("stopped"), dict) else {}
    return {"method": method, "epochs": config.get("epochs"),
            "epochs_run": len(epochs),
            "stopped": {"reason": stopped.get("reason"), "step": number(stopped.get("step"))},
            "learning_rate": number(training.get("learning_rate", config.get("lr"))),
            "global_batch": number(training.get("global_batch", manifest.get("global_batch"))),
            "sequence_length": config.get("sequence_length"),
            "training_data": training_data(manifest)}


def training_data(manifest: dict) -> dict:
    """What a run trained on beyond the split: the dev carve and the extra rows (manifest
    `data`), as `key` (equal for runs that trained on the same rows) and `words`."""
    data = manifest.get("data") or {}
    dev, extra = data.get("dev"), data.get("extra")
    words = ["Watson training part"]
    if dev:
        words.append(f"minus a dev part of {dev.get('n_dev', '?')} rows")
    if extra:
        sources = ", ".join(source.get("spec", "?") for source in extra.get("sources") or [])
        words.append(f"+ {extra.get('joined', 0):,} extra rows ({sources or 'no source recorded'})")
        if extra.get("contaminated"):
            overlap = extra.get("overlap") or {}
            copies = overlap.get("exact", 0) + overlap.get("near_duplicate", 0)
            words.append(f"CONTAMINATED: {copies:,} of them repeat validation/test pairs")
        elif extra.get("dropped"):
            words.append(f"({extra['dropped']:,} overlapping validation/test pairs dropped)")
    key = json.dumps({"dev": (dev or {}).get("fingerprint"),
                      "extra": (extra or {}).get("fingerprint_joined")}, sort_keys=True)
    return {"key": key, "words": " ".join(words),
            "contaminated": bool((extra or {}).get("contaminated"))}


def _jax_method(config: dict, lora: dict, parent: dict | None) -> str:
    """jax_lora's --method in words; runs from before --method are LoRA or, without targets,
    a probe."""
    method = config.get("method") or ("lora" if lora.get("targets") else "probe")
    if method in ("lora", "dora"):
        words = (f"{'DoRA' if method == 'dora' else 'LoRA'} r={lora.get('rank')}"
                 f"{' rsLoRA' if lora.get('rslora') else ''} on {','.join(lora['targets'])}")
        if (config.get("lora_plus_ratio") or 1.0) != 1.0:
            words += f", LoRA+ ratio {config['lora_plus_ratio']:g}"
    else:
        words = {"full": "full fine-tune (JAX)", "probe": "linear probe (head only)"}[method]
    if config.get("pooling", "cls") != "cls":
        words += f", {config['pooling']} pooling"
    if parent:
        words += f", from a {parent.get('method')} run"
    return words


def resources(manifest: dict) -> dict:
    """Cost numbers from a manifest; anything missing or non-numeric becomes None."""
    params = manifest.get("params") or {}
    total, trainable = number(params.get("total")), number(params.get("trainable"))
    pct = number(params.get("trainable_pct"))
    if pct is None and total and trainable is not None:
        pct = 100.0 * trainable / total
    epochs = [e for e in (manifest.get("epochs") or []) if isinstance(e, dict)]
    seconds = [s for s in (number(e.get("seconds")) for e in epochs) if s is not None]
    # The first epoch also compiles (XLA, tf.function tracing). With 3 or more epochs the
    # medians cover those after the first; with 1 or 2 they cover all (with 2: the mean of
    # both, the first epoch's compilation included). `timed_epochs` says which.
    timed = epochs[1:] if len(epochs) >= 3 else epochs
    timed_seconds = [s for s in (number(e.get("seconds")) for e in timed) if s is not None]
    speeds = [s for s in (number(e.get("examples_per_s")) for e in timed) if s is not None]
    devices = manifest.get("devices") or {}
    return {"total_params": total, "trainable_params": trainable, "trainable_pct": pct,
            "epochs": len(epochs), "epoch_seconds": seconds,
            "timed_epochs": [number(e.get("epoch")) for e in timed],
            "epoch_seconds_median": float(np.median(timed_seconds)) if timed_seconds else None,
            "examples_per_s_median": float(np.median(speeds)) if speeds else None,
            "peak_host_rss_mb": number(manifest.get("peak_host_rss_mb")),
            "peak_accelerator_mem_mb": number(manifest.get("peak_accelerator_mem_mb")),
            "replicas": number(devices.get("replicas")) if isinstance(devices, dict) else None}


def resource_ratios(a: dict, b: dict) -> dict:
    """B relative to A; `speedup_per_epoch` > 1 means B's epochs are shorter."""
    return {"trainable_params": _ratio(b["trainable_params"], a["trainable_params"]),
            "speedup_per_epoch": _ratio(a["epoch_seconds_median"], b["epoch_seconds_median"]),
            "examples_per_s": _ratio(b["examples_per_s_median"], a["examples_per_s_median"]),
            "peak_host_rss": _ratio(b["peak_host_rss_mb"], a["peak_host_rss_mb"]),
            "peak_accelerator_mem": _ratio(b["peak_accelerator_mem_mb"],
                                           a["peak_accelerator_mem_mb"])}


def number(value) -> int | float | None:
    """A finite JSON number as it is; None for anything else (missing, text, bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _ratio(numerator, denominator) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shared.evaluation",
        description="Compare run directories (same split) and write report.md, report.json "
                    "and PNG figures into REPORT_DIR.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="finished run directories written under the shared run contract")
    parser.add_argument("--out", type=Path, required=True, metavar="REPORT_DIR",
                        help="report folder; created, or replaced if it holds an older report")
    parser.add_argument("--names", type=lambda text: [n.strip() for n in text.split(",")],
                        default=None, help="comma-separated run names [default: folder names]")
    parser.add_argument("--bootstrap", type=int, default=DEFAULT_BOOTSTRAP,
                        help=f"paired bootstrap resamples, at least {MIN_BOOTSTRAP} "
                             f"[default: {DEFAULT_BOOTSTRAP}]")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bootstrap and the t-SNE [default: 0]")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with the runs' train.csv, for the premise-memorisation "
                             "section [default: the data_dir recorded in each manifest]")
    args = parser.parse_args(argv)
    with exit_on_bad_input():
        evaluate(args.run_dirs, args.out, names=args.names, bootstrap=args.bootstrap,
                 seed=args.seed, data_dir=args.data_dir)
    print(args.out / report.REPORT_MD)


if __name__ == "__main__":
    main()
