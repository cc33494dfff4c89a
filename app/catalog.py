"""What the app reads from disk, without TensorFlow or JAX: the run directories under a folder,
their validation predictions next to the rows' texts, and the evaluator's report folders."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from shared.data.watson import LABEL_NAMES
from shared.evaluation.evaluate import recipe
from shared.runs.run_dir import MANIFEST, Run, RunDirError, read_run, rebuild_data

REPORT_JSON = "report.json"
# Folders inside a run directory that hold weights or state, never another run.
RUN_SUBFOLDERS = ("adapter", "best", "checkpoints", "preset", "backup", "logs")


class CatalogError(ValueError):
    """A folder the app cannot show; the message says what to pass instead."""


@dataclass(frozen=True)
class RunEntry:
    """A run directory found under the app's folder: usable (`run` set) or not (`problem`)."""
    name: str                  # its path under the folder, e.g. "jax_lora" or "final/lora/seed_0"
    run_dir: Path
    run: Run | None
    problem: str | None = None

    @property
    def manifest(self) -> dict:
        return self.run.manifest if self.run else {}

    @property
    def label(self) -> str:
        """The run as a selector shows it: name, trainer and method."""
        if self.run is None:
            return self.name
        return f"{self.name} ({self.manifest['trainer']}: {recipe(self.manifest)['method']})"

    @property
    def split(self) -> str | None:
        return self.run.split_fingerprint if self.run else None


def find_runs(root: Path) -> list[RunEntry]:
    """Every run directory (a folder with manifest.json) under `root`, `root` itself included,
    sorted by name; a run that is unfinished or breaks the run contract comes with its
    problem. Raises CatalogError when `root` is not a folder or holds no run directory."""
    root = Path(root)
    if not root.is_dir():
        raise CatalogError(f"{root}: not a folder; pass the folder that holds your run "
                           f"directories (e.g. runs/compare after bash scripts/demo.sh)")
    entries = []
    for manifest in sorted(root.rglob(MANIFEST)):
        run_dir = manifest.parent
        relative = run_dir.relative_to(root)
        if any(part in RUN_SUBFOLDERS for part in relative.parts):
            continue
        name = str(relative) if relative.parts else run_dir.name
        try:
            entries.append(RunEntry(name, run_dir, read_run(run_dir)))
        except (RunDirError, ValueError, OSError) as err:
            entries.append(RunEntry(name, run_dir, None, str(err)))
    if not entries:
        raise CatalogError(f"{root}: no run directory (no {MANIFEST}) under it; run "
                           f"`bash scripts/demo.sh` or a trainer first, or pass another folder")
    return entries


def splits(entries: list[RunEntry]) -> dict[str, list[RunEntry]]:
    """The usable runs grouped by split fingerprint, the largest group first: only runs on the
    same validation rows can be set side by side row by row."""
    groups: dict[str, list[RunEntry]] = {}
    for entry in entries:
        if entry.run is not None:
            groups.setdefault(entry.split, []).append(entry)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def validation_table(entries: list[RunEntry], data_dir=None) -> tuple[pd.DataFrame, str]:
    """The validation rows of runs that share one split: id, language, gold label, premise and
    hypothesis (when the split can be rebuilt from the recorded data spec, else empty texts and
    the reason as the note), then one predicted-label column per run, and whether the runs
    disagree. Labels are names (entailment, neutral, contradiction)."""
    if len({entry.split for entry in entries}) != 1:
        raise CatalogError("runs from different splits cannot share one table; pick runs with "
                           "the same split fingerprint")
    first = entries[0].run.predictions
    table = pd.DataFrame({"id": first["id"], "language": first["language"],
                          "gold": [LABEL_NAMES[i] for i in first["label"]]})
    data, note = rebuild_data([entry.run for entry in entries], data_dir)
    texts = (data.val.set_index("id")[["premise", "hypothesis"]] if data is not None
             else pd.DataFrame(columns=["premise", "hypothesis"]))
    table = table.join(texts, on="id").fillna({"premise": "", "hypothesis": ""})
    for entry in entries:
        preds = entry.run.predictions.set_index("id")["pred"]
        table[entry.name] = [LABEL_NAMES[preds[i]] for i in table["id"]]
    names = [entry.name for entry in entries]
    table["disagree"] = table[names].nunique(axis=1) > 1
    return table, note


def filter_rows(table: pd.DataFrame, *, languages=(), gold=(), disagree_only: bool = False,
                wrong_for: str | None = None) -> pd.DataFrame:
    """The rows of a validation table in the chosen languages and gold labels (empty = all),
    only where the runs disagree, and/or only where run `wrong_for` is wrong."""
    keep = pd.Series(True, index=table.index)
    if languages:
        keep &= table["language"].isin(languages)
    if gold:
        keep &= table["gold"].isin(gold)
    if disagree_only:
        keep &= table["disagree"]
    if wrong_for:
        keep &= table[wrong_for] != table["gold"]
    return table[keep]


def confusion_by_language(table: pd.DataFrame, run: str) -> dict[str, pd.DataFrame]:
    """Per language (and "all"), run `run`'s confusion matrix: gold labels as rows, predicted
    as columns, counts, every label present even when no row has it."""
    def matrix(rows: pd.DataFrame) -> pd.DataFrame:
        counts = pd.crosstab(rows["gold"], rows[run])
        return counts.reindex(index=LABEL_NAMES, columns=LABEL_NAMES, fill_value=0).rename_axis(
            index="gold", columns="predicted")
    result = {"all": matrix(table)}
    for language, rows in table.groupby("language", sort=True):
        result[language] = matrix(rows)
    return result


def find_reports(root: Path) -> list[Path]:
    """Every evaluator report folder (holding report.json) under `root`, sorted."""
    return sorted(path.parent for path in Path(root).rglob(REPORT_JSON))


def read_report(report_dir: Path) -> dict:
    path = Path(report_dir) / REPORT_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CatalogError(f"{path}: unreadable ({err}); rerun the evaluator") from None
