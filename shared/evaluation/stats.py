"""Metrics, paired bootstrap and exact McNemar for runs scored on the same validation rows.

Macro-F1 averages over the classes that occur in the labels or the predictions of the rows
scored: a class absent from both has no defined F1 (sklearn's zero_division=nan drops it),
which matters for per-language scores on small languages; on the whole validation split all
three classes occur, so this is plain macro-F1 over labels 0, 1, 2.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from shared.data.watson import LABEL_NAMES

LABELS = tuple(range(len(LABEL_NAMES)))
CONFIDENCE = 0.95
# Rows of resampled indices handled at once: bounds memory at ~chunk x n int64s.
BOOTSTRAP_CHUNK = 250


def accuracy(labels, preds) -> float:
    return float(accuracy_score(labels, preds))


def macro_f1(labels, preds) -> float:
    return float(f1_score(labels, preds, labels=list(LABELS), average="macro",
                          zero_division=np.nan))


def classification_metrics(labels, preds) -> dict:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix
    (rows true label, columns prediction, in LABEL_NAMES order)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=list(LABELS), zero_division=np.nan)
    per_class = {name: {"precision": _number(precision[k]), "recall": _number(recall[k]),
                        "f1": _number(f1[k]), "support": int(support[k])}
                 for k, name in enumerate(LABEL_NAMES)}
    return {"accuracy": accuracy(labels, preds), "macro_f1": macro_f1(labels, preds),
            "per_class": per_class,
            "confusion_matrix": confusion_matrix(labels, preds, labels=list(LABELS)).tolist()}


def group_metrics(labels, preds, groups, key: str = "group") -> list[dict]:
    """Accuracy and macro-F1 per group (e.g. language, named `key`), groups sorted."""
    labels, preds, groups = np.asarray(labels), np.asarray(preds), np.asarray(groups)
    rows = []
    for group in sorted(set(groups.tolist())):
        mask = groups == group
        rows.append({key: group, "n": int(mask.sum()),
                     "accuracy": accuracy(labels[mask], preds[mask]),
                     "macro_f1": macro_f1(labels[mask], preds[mask])})
    return rows


def confusion_counts(labels, preds, indices) -> np.ndarray:
    """[b, k, k] confusion matrices of the rows picked by each row of `indices` [b, m]."""
    k = len(LABELS)
    codes = np.asarray(labels) * k + np.asarray(preds)
    indices = np.atleast_2d(indices)
    offsets = np.arange(len(indices))[:, None] * k * k
    counts = np.bincount((codes[indices] + offsets).ravel(), minlength=len(indices) * k * k)
    return counts.reshape(len(indices), k, k)


def accuracy_from_confusions(confusions: np.ndarray) -> np.ndarray:
    return np.trace(confusions, axis1=1, axis2=2) / confusions.sum(axis=(1, 2))


def macro_f1_from_confusions(confusions: np.ndarray) -> np.ndarray:
    """Macro-F1 of each [k, k] matrix; F1 = 2tp / (2tp + fp + fn), as sklearn computes it."""
    tp = np.diagonal(confusions, axis1=1, axis2=2).astype(np.float64)
    denominator = 2 * tp + (confusions.sum(axis=1) - tp) + (confusions.sum(axis=2) - tp)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denominator > 0, 2 * tp / denominator, np.nan)
    return np.nanmean(f1, axis=1)


def paired_bootstrap(labels, preds_by_run, resamples: int, seed: int) -> dict:
    """Accuracy and macro-F1 of every run on the same `resamples` row resamples.

    Every run sees the same resampled indices, so differences between runs taken resample
    by resample form the paired bootstrap distribution of the difference.
    Returns {"accuracy": [runs, resamples], "macro_f1": [runs, resamples]}.
    """
    if resamples < 1:
        raise ValueError(f"bootstrap resamples {resamples}: must be at least 1")
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng(seed)
    out = {"accuracy": np.empty((len(preds_by_run), resamples)),
           "macro_f1": np.empty((len(preds_by_run), resamples))}
    for start in range(0, resamples, BOOTSTRAP_CHUNK):
        stop = min(start + BOOTSTRAP_CHUNK, resamples)
        indices = rng.integers(0, n, size=(stop - start, n))
        for r, preds in enumerate(preds_by_run):
            confusions = confusion_counts(labels, preds, indices)
            out["accuracy"][r, start:stop] = accuracy_from_confusions(confusions)
            out["macro_f1"][r, start:stop] = macro_f1_from_confusions(confusions)
    return out


def percentile_ci(samples, confidence: float = CONFIDENCE) -> list[float]:
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.nanpercentile(np.asarray(samples), [tail, 100.0 - tail])
    return [float(low), float(high)]


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test: two-sided binomial test (p = 0.5) on the discordant rows.

    `only_a` rows A got right and B wrong, `only_b` the reverse; with no discordant rows
    the runs are indistinguishable and p = 1.
    """
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a = int((correct_a & ~correct_b).sum())
    only_b = int((~correct_a & correct_b).sum())
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p_value}


def _number(value) -> float | None:
    """JSON-safe float: NaN (undefined metric) becomes None."""
    return None if np.isnan(value) else float(value)
