"""Metrics, bootstrap and McNemar against hand-worked cases and scipy/sklearn."""

import numpy as np
import pytest
from scipy.stats import binomtest

from shared.evaluation import stats

# Worked example: 10 rows, 7 right.
#   class 0: tp 2, fp 1 (row 9), fn 1 (row 2)  -> P = R = F1 = 2/3
#   class 1: tp 2, fp 1 (row 2), fn 1 (row 5)  -> P = R = F1 = 2/3
#   class 2: tp 3, fp 1 (row 5), fn 1 (row 9)  -> P = R = F1 = 3/4
#   macro-F1 = (2/3 + 2/3 + 3/4) / 3 = 25/36
LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
PREDS = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])


def test_worked_example():
    metrics = stats.classification_metrics(LABELS, PREDS)
    assert metrics["accuracy"] == pytest.approx(0.7)
    assert metrics["macro_f1"] == pytest.approx(25 / 36)
    assert metrics["per_class"]["entailment"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert metrics["per_class"]["contradiction"] == pytest.approx(
        {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4})
    assert metrics["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 3]]


def test_class_never_predicted_counts_zero_and_absent_class_is_dropped():
    # Class 1 occurs but is never predicted: F1 0, precision undefined (None in JSON).
    metrics = stats.classification_metrics([0, 0, 1, 1], [0, 0, 0, 0])
    assert metrics["per_class"]["neutral"] == {"precision": None, "recall": 0.0, "f1": 0.0,
                                               "support": 2}
    # Class 2 occurs nowhere: averaged over classes 0 (F1 2*2/(4+2)) and 1 (F1 0).
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_group_metrics_by_language():
    groups = np.array(["en"] * 6 + ["th"] * 4)
    rows = stats.group_metrics(LABELS, PREDS, groups)
    assert [(r["group"], r["n"]) for r in rows] == [("en", 6), ("th", 4)]
    # en: rows 0-5, right 0, 1, 3, 4 -> 4/6; th: rows 6-9, right 6, 7, 8 -> 3/4.
    assert rows[0]["accuracy"] == pytest.approx(4 / 6)
    assert rows[1]["accuracy"] == pytest.approx(0.75)
    # th: class 2 tp 3, fn 1 -> F1 6/7; class 0 fp 1 -> F1 0; class 1 absent -> dropped.
    assert rows[1]["macro_f1"] == pytest.approx((6 / 7 + 0.0) / 2)


def test_vectorised_confusions_match_sklearn():
    rng = np.random.default_rng(1)
    labels, preds = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    indices = rng.integers(0, 50, size=(40, 6))   # small resamples often miss a class
    confusions = stats.confusion_counts(labels, preds, indices)
    f1 = stats.macro_f1_from_confusions(confusions)
    acc = stats.accuracy_from_confusions(confusions)
    for k, rows in enumerate(indices):
        assert f1[k] == pytest.approx(stats.macro_f1(labels[rows], preds[rows]))
        assert acc[k] == pytest.approx(stats.accuracy(labels[rows], preds[rows]))


def test_mcnemar_exact_against_hand_value_and_scipy():
    # 1 row only A gets right, 6 rows only B: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125.
    correct_a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    correct_b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    result = stats.mcnemar_exact(correct_a, correct_b)
    assert (result["only_a"], result["only_b"]) == (1, 6)
    assert result["p_value"] == pytest.approx(0.125)
    assert result["p_value"] == pytest.approx(binomtest(1, 7, 0.5).pvalue)
    assert stats.mcnemar_exact(correct_b, correct_a)["p_value"] == pytest.approx(0.125)
    assert stats.mcnemar_exact(correct_a, correct_a) == {"only_a": 0, "only_b": 0, "p_value": 1.0}


def test_percentile_ci():
    assert stats.percentile_ci(np.arange(1001) / 1000) == pytest.approx([0.025, 0.975])


def simulate(rng, n, rate_a, rate_b):
    """Labels and the predictions of two runs right with the given probabilities."""
    labels = rng.integers(0, 3, n)

    def predictions(rate):
        wrong = (labels + rng.integers(1, 3, n)) % 3
        return np.where(rng.random(n) < rate, labels, wrong)
    return labels, predictions(rate_a), predictions(rate_b)


def test_bootstrap_is_deterministic_under_its_seed():
    labels, a, b = simulate(np.random.default_rng(0), 300, 0.6, 0.7)
    first = stats.paired_bootstrap(labels, [a, b], 1000, seed=3)
    again = stats.paired_bootstrap(labels, [a, b], 1000, seed=3)
    other = stats.paired_bootstrap(labels, [a, b], 1000, seed=4)
    assert first["accuracy"].shape == (2, 1000)
    np.testing.assert_array_equal(first["macro_f1"], again["macro_f1"])
    assert not np.array_equal(first["accuracy"], other["accuracy"])
    # Resample means sit on the observed accuracy.
    assert first["accuracy"][1].mean() == pytest.approx(stats.accuracy(labels, b), abs=0.005)


def test_paired_bootstrap_ci_covers_true_difference():
    true_diff = 0.78 - 0.70
    rng = np.random.default_rng(7)
    covered = []
    for _ in range(100):
        labels, a, b = simulate(rng, 400, 0.70, 0.78)
        samples = stats.paired_bootstrap(labels, [a, b], 1000, seed=int(rng.integers(1 << 31)))
        low, high = stats.percentile_ci(samples["accuracy"][1] - samples["accuracy"][0])
        covered.append(low <= true_diff <= high)
    # A 95 % interval: ~95 of 100 cover; 88 is three binomial standard deviations below.
    assert covered[0] and sum(covered) >= 88
