"""The report's PNG figures.

Figures are built with matplotlib's object API (`Figure`, not pyplot): PNGs render through
Agg without a display, and nothing global (backend, open figures) changes for the caller.

Each function draws one figure into a path and returns None, or returns the reason it was
skipped (e.g. no run saved embeddings) so the report can say so.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from shared.data.watson import LABEL_NAMES

DPI = 120
TSNE_MAX_ROWS = 1000   # t-SNE is quadratic-ish; 1,000 points show the structure in seconds
TSNE_PCA_DIMS = 50     # PCA first (the usual t-SNE recipe): faster, and drops noise dims
RUN_COLORS = matplotlib.colormaps["tab10"].colors
LABEL_COLORS = ("tab:green", "tab:gray", "tab:red")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def _grouped_bars(ax, groups: list[str], values_by_run: dict[str, list], fmt: str) -> None:
    """One bar per run in each group; a None value is an empty bar labelled 'n/a'."""
    width = 0.8 / max(len(values_by_run), 1)
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(values_by_run.items()):
        offsets = x - 0.4 + width * (k + 0.5)
        heights = [0.0 if v is None else v for v in values]
        bars = ax.bar(offsets, heights, width, label=name, color=RUN_COLORS[k % 10])
        labels = ["n/a" if v is None else format(v, fmt) for v in values]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
    ax.set_xticks(x, groups)


def per_language_accuracy(result: dict, path: Path) -> str | None:
    languages = [f"all\n({result['n_val']})"] + [f"{row['language']}\n({row['n']})"
                                                 for row in result["runs"][0]["per_language"]]
    values = {run["name"]: [run["metrics"]["accuracy"]] + [row["accuracy"]
                                                           for row in run["per_language"]]
              for run in result["runs"]}
    fig = Figure(figsize=(max(8.0, 0.45 * len(languages) * (len(values) + 1)), 4.5))
    ax = fig.subplots()
    _grouped_bars(ax, languages, values, ".2f")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("validation accuracy")
    ax.set_xlabel("language (validation rows)")
    ax.set_title("Accuracy per language")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend(loc="upper right", fontsize=8)
    _save(fig, path)
    return None


def confusion_matrices(result: dict, path: Path) -> str | None:
    runs = result["runs"]
    fig = Figure(figsize=(4.2 * len(runs), 4.0))
    axes = fig.subplots(1, len(runs), squeeze=False)
    for ax, run in zip(axes[0], runs):
        counts = np.asarray(run["metrics"]["confusion_matrix"], dtype=float)
        # Colour by row share (recall per class) so classes of different sizes compare.
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
        for (row, col), count in np.ndenumerate(counts):
            ax.text(col, row, f"{int(count)}\n{shares[row, col]:.0%}", ha="center", va="center",
                    color="white" if shares[row, col] > 0.5 else "black", fontsize=9)
        ax.set_xticks(range(len(LABEL_NAMES)), LABEL_NAMES, rotation=20)
        ax.set_yticks(range(len(LABEL_NAMES)), LABEL_NAMES)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{run['name']} (accuracy {run['metrics']['accuracy']:.3f})", fontsize=10)
    _save(fig, path)
    return None


def training_curves(names: list[str], histories: list, path: Path) -> str | None:
    curves = [(k, name, h) for k, (name, h) in enumerate(zip(names, histories))
              if h is not None and len(h)]
    if not curves:
        return "no run has a history.csv with rows"
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for k, name, history in curves:
            color = RUN_COLORS[k % 10]
            ax.plot(history["epoch"], history[f"train_{metric}"], "--o", color=color,
                    label=f"{name} train")
            # Empty where the run evaluated a dev part instead (jax_lora --dev-fraction).
            validation = pd.to_numeric(history[f"val_{metric}"], errors="coerce")
            if validation.notna().any():
                ax.plot(history["epoch"], validation, "-o", color=color,
                        label=f"{name} validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(f"{metric.capitalize()} per epoch")
        ax.legend(fontsize=8)
    _save(fig, path)
    return None


RESOURCE_PANELS = (("trainable_pct", "trainable parameters (%)", ".2f"),
                   ("epoch_seconds_median", "seconds per epoch (median)", ".1f"),
                   ("examples_per_s_median", "training examples / s", ".1f"),
                   ("peak_host_rss_mb", "peak host RSS (MB)", ".0f"),
                   ("peak_accelerator_mem_mb", "peak accelerator memory (MB)", ".0f"))


def resources(result: dict, path: Path) -> str | None:
    runs = result["runs"]
    panels = [(key, title, fmt) for key, title, fmt in RESOURCE_PANELS
              if any(run["resources"][key] is not None for run in runs)]
    if not panels:
        return "no run recorded parameters, timings or memory"
    fig = Figure(figsize=(3.2 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, title, fmt) in zip(axes[0], panels):
        values = [run["resources"][key] for run in runs]
        for k, (run, value) in enumerate(zip(runs, values)):
            bars = ax.bar([k], [0.0 if value is None else value], color=RUN_COLORS[k % 10])
            ax.bar_label(bars, labels=["n/a" if value is None else format(value, fmt)],
                         fontsize=8)
        ax.set_xticks(range(len(runs)), [run["name"] for run in runs], rotation=20)
        ax.set_title(title, fontsize=10)
        ax.margins(y=0.15)
        if key == "trainable_pct":
            ax.set_yscale("log")  # LoRA trains well under 1 % of what full fine-tuning does
    _save(fig, path)
    return None


def tsne(names: list[str], embeddings: list, labels, seed: int, path: Path) -> str | None:
    panels = [(name, e) for name, e in zip(names, embeddings) if e is not None]
    if not panels:
        return "no run saved cls_embeddings.npy"
    labels = np.asarray(labels)
    if len(labels) < 5:
        return f"only {len(labels)} validation rows; t-SNE needs at least 5"
    rows = np.arange(len(labels))
    if len(rows) > TSNE_MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, TSNE_MAX_ROWS, replace=False))
    fig = Figure(figsize=(4.5 * len(panels), 4.3))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, vectors) in zip(axes[0], panels):
        points = _tsne_points(np.asarray(vectors, dtype=np.float64)[rows], seed)
        for label, (label_name, color) in enumerate(zip(LABEL_NAMES, LABEL_COLORS)):
            mask = labels[rows] == label
            ax.scatter(points[mask, 0], points[mask, 1], s=8, alpha=0.7, color=color,
                       label=label_name)
        ax.set_title(f"{name} ({len(rows)} validation rows)", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=8, markerscale=2)
    fig.suptitle("t-SNE of validation [CLS] embeddings, coloured by true label", fontsize=11)
    _save(fig, path)
    return None


def _tsne_points(vectors: np.ndarray, seed: int) -> np.ndarray:
    if vectors.shape[1] > TSNE_PCA_DIMS and len(vectors) > TSNE_PCA_DIMS:
        vectors = PCA(TSNE_PCA_DIMS, random_state=seed).fit_transform(vectors)
    perplexity = float(min(30, len(vectors) - 1))
    # One OpenMP thread: Barnes-Hut's threads spin-wait when the cores are busy (training
    # beside it, or other jobs) and then run ~25x slower than one thread (measured).
    with threadpool_limits(limits=1, user_api="openmp"):
        return TSNE(2, perplexity=perplexity, init="pca",
                    random_state=seed).fit_transform(vectors)
