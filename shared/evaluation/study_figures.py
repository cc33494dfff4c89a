"""The study report's PNG figures (shared.evaluation.study_report), in figures.py's style:
matplotlib's object API, so nothing global changes for the caller.

Each function returns a drawn Figure, or the reason it was skipped, which the report states.
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from shared.evaluation import figures

FIGURE_TITLES = {"dev_accuracy_steps": "Dev accuracy per optimizer step",
                 "accuracy_vs_parameters": "Validation accuracy per trainable parameters",
                 "dev_accuracy_seconds": "Dev accuracy per wall-clock second"}


def draw(result: dict) -> dict[str, bytes]:
    """PNG bytes of each drawn figure; records result["figures"] = {name: {"file": ...} or
    {"skipped": reason}}."""
    drawers = {"dev_accuracy_steps": lambda: dev_accuracy(result, seconds=False),
               "accuracy_vs_parameters": lambda: accuracy_vs_parameters(result),
               "dev_accuracy_seconds": lambda: dev_accuracy(result, seconds=True)}
    pngs, result["figures"] = {}, {}
    for name, drawer in drawers.items():
        drawn = drawer()
        if isinstance(drawn, str):
            result["figures"][name] = {"skipped": drawn}
            continue
        drawn.tight_layout()
        buffer = io.BytesIO()
        drawn.savefig(buffer, format="png", dpi=figures.DPI)
        pngs[name] = buffer.getvalue()
        result["figures"][name] = {"file": f"{name}.png"}
    return pngs


def _colors(result: dict) -> dict[str, tuple]:
    """One colour per method, the same in every figure."""
    return {row["method"]: figures.RUN_COLORS[k % 10] for k, row in enumerate(result["methods"])}


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def dev_accuracy(result: dict, *, seconds: bool) -> Figure | str:
    """Mean dev accuracy over seeds with its min–max band, against steps or, when every
    method was timed on the same machine, against step × that machine's step time."""
    if not result["curves"]:
        return "no final run wrote evals.csv"
    if seconds and result["wall_clock"]["skipped"]:
        return result["wall_clock"]["skipped"]
    timing, colors = result["study"]["timing"], _colors(result)
    fig = Figure(figsize=(7.5, 4.5))
    ax = fig.subplots()
    for method, points in result["curves"].items():
        scale = timing[method]["step_s"] if seconds else 1.0
        x = [p["step"] * scale for p in points]
        ax.plot(x, [p["mean"] for p in points], "-o", markersize=3, color=colors[method],
                label=f"{method} ({_seeds(points[0]['seeds'])})")
        ax.fill_between(x, [p["min"] for p in points], [p["max"] for p in points],
                        color=colors[method], alpha=0.2, linewidth=0)
    target = result["time_to_target"]["target"]
    if target is not None:
        ax.axhline(target, color="black", linestyle=":", linewidth=1,
                   label=f"target {target:.3f}")
    ax.axhline(result["baselines"]["chance"]["accuracy"], color="gray", linestyle="--",
               linewidth=1, label="chance (1/3)")
    ax.set_xlabel(f"seconds = steps × the step time measured on "
                  f"{result['wall_clock']['machine']}" if seconds else "optimizer steps")
    ax.set_ylabel("dev accuracy (mean over seeds, band min–max)")
    ax.set_title(FIGURE_TITLES["dev_accuracy_seconds" if seconds else "dev_accuracy_steps"])
    ax.legend(fontsize=8)
    return fig


def accuracy_vs_parameters(result: dict) -> Figure | str:
    points = [row for row in result["methods"]
              if row["trainable_params"] and row["accuracy"]["mean"] is not None]
    if not points:
        return "no method has both a finished final run and a recorded trainable count"
    colors = _colors(result)
    fig = Figure(figsize=(7.0, 4.5))
    ax = fig.subplots()
    for row in points:
        accuracy = row["accuracy"]
        ax.errorbar([row["trainable_params"]], [accuracy["mean"]], fmt="o", capsize=4,
                    yerr=None if accuracy["half_width"] is None else [[accuracy["half_width"]]] * 2,
                    color=colors[row["method"]], label=f"{row['method']} ({_seeds(accuracy['n'])})")
    baselines = result["baselines"]
    ax.axhline(baselines["majority"]["accuracy"], color="gray", linestyle="-.", linewidth=1,
               label="majority class")
    ax.axhline(baselines["chance"]["accuracy"], color="gray", linestyle="--", linewidth=1,
               label="chance (1/3)")
    ax.set_xscale("log")   # LoRA trains a few hundredths of what full fine-tuning does
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("validation accuracy (mean, 95 % t-interval)")
    ax.set_title(FIGURE_TITLES["accuracy_vs_parameters"])
    ax.legend(fontsize=8)
    return fig
