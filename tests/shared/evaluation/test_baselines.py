"""The report's first lines: trivial baselines beside each run, and whether it beat them."""

import numpy as np
import pytest

from shared.evaluation.evaluate import code_versions, recipe, trivial_baselines, verdict
from shared.evaluation.report import _epochs_trained, _provenance, _verdicts


def test_baselines_are_chance_and_the_most_frequent_label():
    labels = np.array([2, 2, 2, 0, 1, 2, 0, 1])
    baselines = trivial_baselines(labels)
    assert baselines["chance"]["accuracy"] == pytest.approx(1 / 3)
    assert baselines["majority"] == {"label": 2, "accuracy": 0.5}


@pytest.mark.parametrize("ci, chance, majority", [
    ((0.41, 0.52), "above", "above"),
    ((0.35, 0.45), "above", "inconclusive"),
    ((0.30, 0.39), "inconclusive", "below"),
    ((0.30, 0.45), "inconclusive", "inconclusive"),
    ((0.10, 0.30), "below", "below"),
])
def test_a_run_beats_a_baseline_when_its_interval_lies_above_it(ci, chance, majority):
    baselines = {"chance": {"accuracy": 1 / 3}, "majority": {"label": 0, "accuracy": 0.40}}
    assert verdict({"accuracy_ci": ci}, baselines) == {"chance": chance, "majority": majority}


def test_verdict_lines_name_each_run_and_its_interval():
    result = {"n_val": 127,
              "baselines": {"chance": {"accuracy": 1 / 3}, "majority": {"label": 1,
                                                                          "accuracy": 0.378}},
              "runs": [{"name": "good", "metrics": {"accuracy": 0.5, "accuracy_ci": (0.41, 0.59)},
                        "verdict": {"chance": "above", "majority": "above"}},
                       {"name": "bad", "metrics": {"accuracy": 0.2, "accuracy_ci": (0.13, 0.27)},
                        "verdict": {"chance": "below", "majority": "below"}}]}
    text = "\n".join(_verdicts(result))
    assert "majority class (always “neutral”) 0.3780" in text and "chance" in text
    assert "**good**: accuracy 0.5000 [0.4100, 0.5900]: beats both baselines." in text
    assert "**bad**: accuracy 0.2000 [0.1300, 0.2700]: does NOT beat chance: below chance" in text


def test_runs_from_different_commits_are_flagged():
    class Run:
        def __init__(self, code):
            self.manifest = {"code": code} if code else {}

    same = code_versions([Run({"commit": "a" * 40, "dirty": False})] * 2, ["x", "y"])
    assert same["same"] and "All runs come from code commit `aaaaaaaaaaaa`" in _provenance(
        {"code": same})[0]
    mixed = code_versions([Run({"commit": "a" * 40, "dirty": True}), Run(None)], ["x", "y"])
    assert not mixed["same"] and mixed["commits"] == {"x": "aaaaaaaaaaaa+dirty", "y": None}
    assert "different code commits" in _provenance({"code": mixed})[0]


@pytest.mark.parametrize("config, parent, words", [
    ({"method": "dora", "lora": {"rank": 8, "targets": ["query", "value"], "rslora": True},
      "lora_plus_ratio": 16.0}, None, "DoRA r=8 rsLoRA on query,value, LoRA+ ratio 16"),
    ({"method": "full", "lora": {"targets": []}}, {"method": "probe"},
     "full fine-tune (JAX), from a probe run"),
    ({"method": "probe", "pooling": "mean", "lora": {"targets": []}}, None,
     "linear probe (head only), mean pooling"),
    ({"lora": {"rank": 16, "targets": ["query"]}}, None, "LoRA r=16 on query"),  # before --method
])
def test_recipe_names_the_jax_method(config, parent, words):
    manifest = {"trainer": "jax_lora", "config": config, "parent": parent}
    assert recipe(manifest)["method"] == words


@pytest.mark.parametrize("stopped, cell", [
    ({"reason": "patience", "step": 2300}, "8 (stopped at step 2,300 in epoch 6: patience)"),
    ({"reason": "max_steps", "step": 30}, "8 (stopped at step 30 in epoch 6: max_steps)"),
    ({"reason": "epochs", "step": 3600}, "8"),   # ran every epoch it was asked for
    (None, "8"),                                 # tf_baseline records no "stopped"
])
def test_the_epochs_cell_says_where_a_run_stopped_early(stopped, cell):
    manifest = {"trainer": "jax_lora", "config": {"epochs": 8, "method": "lora",
                                                  "lora": {"rank": 4, "targets": ["query"]}},
                "epochs": [{"epoch": e} for e in range(1, 7)]}
    if stopped:
        manifest["stopped"] = stopped
    assert _epochs_trained(recipe(manifest)) == cell
