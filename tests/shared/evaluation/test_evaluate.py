"""The evaluator end to end on synthetic run directories written with RunWriter."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from shared.evaluation import evaluate as ev
from shared.evaluation import report as report_module
from shared.data.spec import DataSpec, load
from shared.data.watson import SAMPLE_DATA_DIR
from shared.runs.run_dir import RunWriter, predictions_frame, read_run

SECTIONS = ("## Summary", "## Pairwise comparisons", "## Per-language results",
            "## Per-class results", "## Premise memorisation", "## Resources", "## Figures")
FIGURES = ("per_language_accuracy", "confusion_matrices", "training_curves", "resources", "tsne")


def sample_data(split="stratified", seed=0, limit=None):
    """The embedded sample, split as a trainer would split it."""
    return load(DataSpec(data_dir=SAMPLE_DATA_DIR, split=split, train_fraction=0.7,
                         split_seed=seed, limit=limit))


def write_run(run_dir, data, *, rate, seed, trainable, seconds, accel_mb=None, limit=None):
    """A finished run whose predictions are right with probability `rate`."""
    rng = np.random.default_rng(seed)
    labels = data.val["label"].to_numpy()
    n = len(labels)
    preds = np.where(rng.random(n) < rate, labels, (labels + rng.integers(1, 3, n)) % 3)
    probs = np.full((n, 3), 0.1)
    probs[np.arange(n), preds] = 0.8
    writer = RunWriter(run_dir)
    writer.start(trainer=f"unit-{seed}", config={"lr": 1e-4, "limit": limit}, weights={},
                 split=data.split.describe(), data=data.describe(), versions={},
                 devices={"replicas": 2}, params={"total": 1000, "trainable": trainable,
                                                  "trainable_pct": trainable / 10})
    writer.write_predictions(predictions_frame(data.val, probs))
    writer.write_history(pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.7],
                                       "train_accuracy": [0.4, 0.6], "val_loss": [1.0, 0.9],
                                       "val_accuracy": [0.45, rate]}))
    # Embeddings that cluster by label, so the t-SNE has something to show.
    writer.write_embeddings(np.eye(3)[labels].repeat(4, axis=1) * 3 + rng.normal(size=(n, 12)))
    for epoch in (1, 2):
        writer.add_epoch(epoch, seconds=seconds * epoch, examples=len(data.train))
    writer.finish(peak_accelerator_mem_mb=accel_mb)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    data = sample_data()
    return (write_run(root / "full", data, rate=0.6, seed=1, trainable=1000, seconds=30.0),
            write_run(root / "lora", data, rate=0.8, seed=2, trainable=4, seconds=10.0,
                      accel_mb=512.0))


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reports") / "report"
    out.mkdir()
    (out / "report.json").write_text("{}")   # an older report: replaced
    (out / "stale.png").write_text("old")
    result = ev.evaluate(runs, out, bootstrap=1000, seed=0)
    return result, out


def test_report_renders_every_section(report):
    result, out = report
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md", "report.json"] + [f"{name}.png" for name in FIGURES])
    markdown = (out / "report.md").read_text()
    for heading in SECTIONS:
        assert heading in markdown
    assert "Skipped" not in markdown
    for name in FIGURES:
        png = (out / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
        assert f"({name}.png)" in markdown
    assert json.loads((out / "report.json").read_text()) == result
    assert not list(out.parent.glob(".report.*"))   # no staging or retired folders left


def test_report_numbers_match_the_predictions(report, runs):
    result, _ = report
    full, lora = (read_run(d).predictions for d in runs)
    right_a = (full["pred"] == full["label"]).to_numpy()
    right_b = (lora["pred"] == lora["label"]).to_numpy()
    run_a, run_b = result["runs"]
    assert [run_a["name"], run_b["name"]] == ["full", "lora"]
    assert run_a["metrics"]["accuracy"] == pytest.approx(right_a.mean())
    low, high = run_b["metrics"]["accuracy_ci"]
    assert low < right_b.mean() < high and high - low < 0.2

    pair = result["pairs"][0]
    assert (pair["a"], pair["b"]) == ("full", "lora")
    assert pair["accuracy_diff"] == pytest.approx(right_b.mean() - right_a.mean())
    assert pair["mcnemar"]["only_a"] == int((right_a & ~right_b).sum())
    assert pair["mcnemar"]["only_b"] == int((~right_a & right_b).sum())
    thai = next(row for row in pair["per_language"] if row["language"] == "Thai")
    is_thai = (full["language"] == "Thai").to_numpy()
    assert thai["n"] == is_thai.sum()
    assert thai["delta"] == pytest.approx(right_b[is_thai].mean() - right_a[is_thai].mean())

    # Memorisation: recompute which validation premises occur in the training part.
    data = sample_data()
    seen = data.val["premise"].isin(set(data.train["premise"])).to_numpy()
    assert result["memorisation"]["n_seen"] == seen.sum() > 0
    assert run_b["memorisation"]["seen"]["accuracy"] == pytest.approx(right_b[seen].mean())
    assert run_b["memorisation"]["unseen"]["n"] == (~seen).sum()

    ratios = pair["resource_ratios"]
    assert ratios["speedup_per_epoch"] == pytest.approx(3.0)   # 2 epochs: 45 s vs 15 s means
    assert ratios["trainable_params"] == pytest.approx(0.004)
    assert ratios["peak_accelerator_mem"] is None               # full run recorded none
    markdown = (report[1] / "report.md").read_text()
    assert "**lora vs full**: lora trains 0.40 % of its parameters" in markdown
    assert "3.00× faster per epoch" in markdown
    assert "Not recorded for both: peak accelerator memory." in markdown


def test_epoch_medians_leave_out_the_first_of_three_or_more_epochs():
    epochs = [{"epoch": 1, "seconds": 100.0, "examples_per_s": 1.0},
              {"epoch": 2, "seconds": 10.0, "examples_per_s": 10.0},
              {"epoch": 3, "seconds": 12.0, "examples_per_s": 8.0}]
    three = ev.resources({"epochs": epochs})
    assert three["epoch_seconds"] == [100.0, 10.0, 12.0] and three["timed_epochs"] == [2, 3]
    assert (three["epoch_seconds_median"], three["examples_per_s_median"]) == (11.0, 9.0)
    two = ev.resources({"epochs": epochs[:2]})   # one later epoch: all epochs are timed
    assert two["timed_epochs"] == [1, 2] and two["epoch_seconds_median"] == 55.0
    assert ev.resources({})["epoch_seconds_median"] is None
    assert (report_module._epochs_cell(three), report_module._epochs_cell(two)) == (
        "3 (timed 2–3)", "2")


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ev.main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_cli_refuses_mismatched_fingerprints(runs, tmp_path, capsys):
    other = write_run(tmp_path / "other", sample_data(seed=1), rate=0.7, seed=3, trainable=4,
                      seconds=1.0)
    out = tmp_path / "report"
    code, err = run_cli([runs[0], other, "--out", out], capsys)
    assert code == 2 and err.startswith("error: split fingerprints differ")
    assert "\n" not in err and not out.exists()


def test_cli_refuses_different_labels_or_ids(runs, tmp_path, capsys):
    changed = tmp_path / "changed"
    shutil.copytree(runs[1], changed)
    frame = read_run(changed).predictions
    frame.loc[5, "label"] = (frame.loc[5, "label"] + 1) % 3
    frame.to_csv(changed / "predictions.csv", index=False)
    out = tmp_path / "report"
    code, err = run_cli([runs[0], changed, "--out", out], capsys)
    assert code == 2 and "validation labels differ" in err and frame.loc[5, "id"] in err
    frame.loc[5, "id"] = "not-an-id"
    frame.to_csv(changed / "predictions.csv", index=False)
    code, err = run_cli([runs[0], changed, "--out", out], capsys)
    assert code == 2 and "validation ids differ" in err and not out.exists()


def test_cli_refuses_bad_flags_and_foreign_out_dir(runs, tmp_path, capsys):
    assert "at least 1000" in run_cli([*runs, "--out", tmp_path / "r", "--bootstrap", "10"],
                                      capsys)[1]
    assert "--names has 1 name(s)" in run_cli([*runs, "--out", tmp_path / "r", "--names", "x"],
                                              capsys)[1]
    # A run directory is not a report: never replaced.
    code, err = run_cli([*runs, "--out", runs[0]], capsys)
    assert code == 2 and "holds no report.json" in err
    assert not (tmp_path / "r").exists()


def test_failure_keeps_the_old_report_and_leaves_no_staging(runs, tmp_path, monkeypatch):
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.json").write_text('{"old": true}')

    def broken(*args):
        raise RuntimeError("drawing failed")
    monkeypatch.setattr("shared.evaluation.figures.per_language_accuracy", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        ev.evaluate(runs, out, bootstrap=1000)
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    assert json.loads((out / "report.json").read_text()) == {"old": True}


def test_rows_are_aligned_by_id(runs, tmp_path):
    shuffled = tmp_path / "shuffled"
    shutil.copytree(runs[1], shuffled)
    run = read_run(shuffled)
    order = np.random.default_rng(0).permutation(len(run.predictions))
    run.predictions.iloc[order].to_csv(shuffled / "predictions.csv", index=False)
    np.save(shuffled / "cls_embeddings.npy", run.embeddings[order])
    names = ["a", "b"]
    aligned = ev.align_runs([read_run(runs[0]), read_run(shuffled)], names)
    pd.testing.assert_frame_equal(aligned[1].predictions, run.predictions)
    np.testing.assert_array_equal(aligned[1].embeddings, run.embeddings)


def test_premise_memorisation_follows_limit_and_reports_missing_data(tmp_path):
    for split, seed in (("grouped", 4), ("kaggle", 5)):
        data = sample_data(split, limit=200)
        limited = write_run(tmp_path / split, data, rate=0.7, seed=seed, trainable=4,
                            seconds=1.0, limit=200)
        run = read_run(limited)
        seen, note = ev.premise_seen([run])
        assert seen is not None and "first 200 rows" in note
        expected = data.val["premise"].isin(set(data.train["premise"])).to_numpy()
        np.testing.assert_array_equal(seen, expected)   # predictions are in validation order
        # Grouping by premise keeps every validation premise out of training; the Kaggle rule
        # (first 70 % in file order) lets some premises fall on both sides.
        assert seen.any() == (split == "kaggle")
    seen, note = ev.premise_seen([run], data_dir=tmp_path / "nowhere")
    assert seen is None and "cannot rebuild the split" in note and "nowhere" in note


def test_import_leaves_tensorflow_and_jax_out():
    code = ("import sys, shared.evaluation.evaluate; "
            "print(sorted(m for m in ('tensorflow', 'jax') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ev.__file__.rsplit("/shared/", 1)[0])
    assert output.stdout.strip() == "[]"
