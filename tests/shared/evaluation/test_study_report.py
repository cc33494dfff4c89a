"""The study report end to end on a synthetic study: run directories written with RunWriter on
the embedded sample's split, with predictions and dev curves whose numbers the tests know."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from shared.data.spec import DataSpec, load
from shared.data.watson import SAMPLE_DATA_DIR
from shared.evaluation import study_markdown as sm
from shared.evaluation import study_pairs as sp
from shared.evaluation import study_report as sr
from shared.runs.run_dir import EVAL_COLUMNS, RunDirError, RunWriter, predictions_frame

AMD = "AMD EPYC 7B13 (2 cores)"
T_3_SEEDS = 4.303   # t_{0.975, 2}, from a printed table
BOOTSTRAP = 1000
# Final runs: (method, seed) -> (validation rows right, dev accuracy per evaluated step).
# lora seed 1 stops at step 20 (patience); lora seed 2 failed; tf_full has no dev part.
FINALS = {("full", 0): (150, {10: 0.40, 20: 0.60, 30: 0.70, 40: 0.72}),
          ("full", 1): (165, {10: 0.42, 20: 0.58, 30: 0.70, 40: 0.70}),
          ("full", 2): (171, {10: 0.38, 20: 0.62, 30: 0.71, 40: 0.74}),
          ("lora", 0): (180, {10: 0.50, 20: 0.66, 30: 0.70}),
          ("lora", 1): (160, {10: 0.52, 20: 0.60}),
          ("tf_full", 0): (140, None)}
SELECTS = {("full", 1e-5): 0.55, ("full", 3e-5): 0.72, ("full", 1e-4): 0.60,
           ("lora", 5e-4): 0.61, ("lora", 1e-3): 0.66}
CHOSEN = {"full": 3e-5, "lora": 1e-3, "tf_full": None}
TRAINABLE = {"full": 10_000, "lora": 100, "tf_full": 10_000}


def sample_data(split_seed=0):
    return load(DataSpec(data_dir=SAMPLE_DATA_DIR, split="stratified", train_fraction=0.7,
                         split_seed=split_seed))


def right_mask(n, k, seed):
    """Exactly k of n rows right, which ones seeded."""
    right = np.zeros(n, bool)
    right[np.random.default_rng(seed).permutation(n)[:k]] = True
    return right


def write_run(run_dir, data, *, right, method, lr, curve=None):
    labels = data.val["label"].to_numpy()
    preds = np.where(right, labels, (labels + 1) % 3)
    probs = np.full((len(labels), 3), 0.1)
    probs[np.arange(len(labels)), preds] = 0.8
    writer = RunWriter(run_dir)
    writer.start(trainer="tf_baseline" if method == "tf_full" else "jax_lora",
                 config={"lr": lr or 1e-4}, weights={}, split=data.split.describe(),
                 data=data.describe(), versions={}, devices={},
                 params={"total": 10_000, "trainable": TRAINABLE[method]})
    writer.write_predictions(predictions_frame(data.val, probs))
    extra = {}
    if curve:
        steps, accuracies = list(curve), list(curve.values())
        writer.write_evals(pd.DataFrame({
            "step": steps, "epoch": [s / 20 for s in steps], "examples": [16 * s for s in steps],
            "train_loss": 1.0, "dev_loss": [1 - a for a in accuracies],
            "dev_accuracy": accuracies, "train_seconds": [2.0 * s for s in steps]},
            columns=EVAL_COLUMNS))
        best = max(curve, key=curve.get)
        extra = {"best": {"step": best, "dev_accuracy": curve[best], "dev_loss": 1 - curve[best]},
                 "stopped": {"reason": "patience" if len(curve) < 4 else "max_steps",
                             "step": steps[-1]}, "steps": steps[-1]}
    writer.finish(**extra)


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    data = sample_data()
    n = len(data.val)
    runs = []
    for k, ((method, lr), best) in enumerate(SELECTS.items()):
        name = f"select/{method}/lr_{lr:.0e}"
        write_run(root / name, data, right=right_mask(n, 150, 100 + k), method=method, lr=lr,
                  curve={10: best - 0.1, 20: best, 30: best - 0.01})
        runs.append({"stage": "select", "method": method, "lr": lr, "seed": 0,
                     "run_dir": name, "status": "finished"})
    for (method, seed), (k, curve) in FINALS.items():
        name = f"final/{method}/seed_{seed}"
        write_run(root / name, data, right=right_mask(n, k, 10 * len(runs) + seed),
                  method=method, lr=CHOSEN[method], curve=curve)
        runs.append({"stage": "final", "method": method, "lr": CHOSEN[method], "seed": seed,
                     "run_dir": name, "status": "finished"})
    runs.append({"stage": "final", "method": "lora", "lr": 1e-3, "seed": 2,
                 "run_dir": "final/lora/seed_2", "status": "failed", "error": "exit code 1"})
    study = {"version": 1, "command": "python -m shared.jobs.study --seeds 0,1,2",
             "code": {"commit": "abcdef0123456789" * 2, "dirty": True},
             "settings": {"preset": "minilm", "sequence_length": 128, "seeds": [0, 1, 2],
                          "target_method": "full", "target_fraction": 0.95, "unknown": 1},
             "methods": {m: {"trainer": "tf_baseline" if m == "tf_full" else "jax_lora",
                             "args": [], "grid": [], "chosen_lr": CHOSEN[m]} for m in CHOSEN},
             "timing": {"full": {"step_s": 2.0, "machine": AMD, "batch": 16},
                        "lora": {"step_s": 0.5, "machine": AMD, "batch": 16}},
             "runs": runs}
    (root / "study.json").write_text(json.dumps(study))
    return root


@pytest.fixture(scope="module")
def built(study_dir):
    return sr.build_study_report(study_dir, bootstrap=BOOTSTRAP), study_dir / "report"


def right_of(study_dir, run_dir):
    frame = pd.read_csv(study_dir / run_dir / "predictions.csv", dtype={"id": str})
    return (frame["pred"] == frame["label"]).to_numpy()


def md_line(markdown, start):
    return next(line for line in markdown.splitlines() if line.startswith(start))


def variant(study_dir, tmp_path, edit):
    """A copy of the study with study.json changed by `edit`."""
    copy = tmp_path / "study"
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns("report"))
    study = json.loads((copy / "study.json").read_text())
    edit(study)
    (copy / "study.json").write_text(json.dumps(study))
    return copy


def test_writes_report_files_that_agree(built):
    result, out = built
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.md", "report.json"] + [f"{name}.png" for name in sr.study_figures.FIGURE_TITLES])
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text()) == result
    markdown = (out / "report.md").read_text()
    assert "Skipped" not in markdown
    assert "- Code: commit `abcdef012345` (uncommitted changes)" in markdown
    assert f"- Step timings measured on: {AMD} (full, lora)" in markdown
    assert "final lora lr 0.001 seed 2 (`final/lora/seed_2`): failed (exit code 1)" in markdown
    assert result["missing"] == [{"stage": "final", "method": "lora", "lr": 1e-3, "seed": 2,
                                  "run_dir": "final/lora/seed_2", "status": "failed",
                                  "error": "exit code 1"}]


def test_t_interval_is_the_hand_computation_and_one_seed_has_none(built):
    result, _ = built
    full, lora, tf_full = result["methods"]
    accuracies = [FINALS["full", s][0] / 280 for s in (0, 1, 2)]
    mean, sd = np.mean(accuracies), np.std(accuracies, ddof=1)
    accuracy = full["accuracy"]
    assert accuracy["mean"] == pytest.approx(mean)
    assert accuracy["t"] == pytest.approx(T_3_SEEDS, abs=5e-4)
    assert accuracy["half_width"] == pytest.approx(T_3_SEEDS * sd / math.sqrt(3), rel=2e-4)
    assert accuracy["ci"] == pytest.approx([mean - accuracy["half_width"],
                                            mean + accuracy["half_width"]])
    assert (accuracy["min"], accuracy["max"]) == (150 / 280, 171 / 280)
    assert full["best_dev_accuracy_mean"] == pytest.approx(0.72)
    assert full["best_step_mean"] == pytest.approx(40 * 2 / 3 + 30 / 3)   # 40, 30, 40
    assert lora["seeds"] == [0, 1] and lora["accuracy"]["t"] == pytest.approx(12.706, abs=1e-3)
    assert tf_full["accuracy"]["n"] == 1 and tf_full["accuracy"]["ci"] is None
    assert tf_full["accuracy"]["half_width"] is None and tf_full["best_dev_accuracy_mean"] is None
    assert (full["trainable_params"], lora["trainable_params"]) == (10_000, 100)


def test_markdown_method_rows_equal_the_json(built):
    result, out = built
    markdown = (out / "report.md").read_text()
    assert "with 2 seeds t = 12.71; with 3 seeds t = 4.30" in markdown
    for row in result["methods"]:
        line = md_line(markdown, f"| {row['method']} |")
        acc = row["accuracy"]
        assert f"| {acc['min']:.4f}–{acc['max']:.4f} |" in line
        assert f"| {row['macro_f1_mean']:.4f} |" in line
        if acc["half_width"] is None:
            assert f"| {acc['mean']:.4f} (1 seed, no interval) |" in line
        else:
            assert (f"| {acc['mean']:.4f} ± {acc['half_width']:.4f} "
                    f"[{acc['ci'][0]:.4f}, {acc['ci'][1]:.4f}] |") in line
            assert f"| {row['best_dev_accuracy_mean']:.4f} |" in line
    assert "| full | jax_lora | 3e-05 | 0, 1, 2 | 10,000 |" in markdown
    assert "| tf_full | tf_baseline | 0.0001 (recipe, not selected) | 0 |" in markdown


def test_baselines_are_rows_of_the_accuracy_tables(built, study_dir):
    result, out = built
    markdown = (out / "report.md").read_text()
    labels = sample_data().val["label"].to_numpy()
    majority = np.bincount(labels).max() / len(labels)
    assert result["baselines"]["majority"]["accuracy"] == pytest.approx(majority)
    assert f"| {majority:.4f} |" in md_line(markdown, "| *majority class (baseline)* |")
    assert "| 0.3333 |" in md_line(markdown, "| *chance (baseline)* |")
    assert "| language | n | ± | majority class | full | lora | tf_full |" in markdown
    assert f"| **all** | 280 |  | {majority:.4f} |" in markdown
    assert "majority class seen | majority class unseen |" in markdown


def test_pooled_pair_pairs_seeds_by_value_and_resamples_rows(built, study_dir):
    result, _ = built
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [
        ("full", "lora"), ("full", "tf_full"), ("lora", "tf_full")]
    pair = result["pairs"][0]
    assert pair["seeds"] == [0, 1]   # lora's seed 2 failed
    full = np.stack([right_of(study_dir, f"final/full/seed_{s}") for s in (0, 1)])
    lora = np.stack([right_of(study_dir, f"final/lora/seed_{s}") for s in (0, 1)])
    assert pair["accuracy_diff"] == pytest.approx((180 + 160 - 150 - 165) / 560)
    low, high = pair["accuracy_diff_ci"]
    assert low < pair["accuracy_diff"] < high
    assert pair["mcnemar"]["only_a"] == int((full & ~lora).sum())
    assert pair["mcnemar"]["only_b"] == int((~full & lora).sum())
    # The bootstrap's point estimate is the pooled difference, and rows are the unit: a
    # second seed identical to the first adds no information, so nothing changes.
    samples = sp.pooled_difference_samples(full[:1], lora[:1], 4000, 0)
    assert samples.mean() == pytest.approx((lora[0].mean() - full[0].mean()), abs=0.005)
    twice = sp.pooled_difference_samples(full[[0, 0]], lora[[0, 0]], 4000, 0)
    np.testing.assert_allclose(twice, samples)


def test_pairs_also_let_the_seeds_vary(built):
    """Beside the row bootstrap (models fixed), the t-interval over the per-seed differences:
    lora − full is +30/280 on seed 0 and −5/280 on seed 1; with 2 seeds t = 12.706."""
    result, out = built
    pair = result["pairs"][0]
    assert pair["seed_diffs"] == pytest.approx([30 / 280, -5 / 280])
    t = pair["seed_diff_t"]
    half = 12.706 * (35 / 280 / math.sqrt(2)) / math.sqrt(2)   # t · sd / √n = 0.794
    assert (t["n"], t["mean"]) == (2, pytest.approx(12.5 / 280))
    assert t["ci"] == pytest.approx([12.5 / 280 - half, 12.5 / 280 + half], abs=1e-3)
    markdown = (out / "report.md").read_text()
    assert "| +0.1071, -0.0179; +0.0446 [-0.7495, +0.8388] |" in md_line(markdown,
                                                                        "| lora vs full |")
    assert "(1 seed, no interval) |" in md_line(markdown, "| tf_full vs full |")


def test_selection_marks_the_chosen_rate(built):
    result, out = built
    chosen = [(row["method"], row["lr"]) for row in result["selection"] if row["chosen"]]
    assert chosen == [("full", 3e-5), ("lora", 1e-3)]
    full = [row for row in result["selection"] if row["method"] == "full"]
    assert [row["lr"] for row in full] == [1e-5, 3e-5, 1e-4]
    assert [(row["best_dev_accuracy"], row["best_step"], row["steps"]) for row in full] == [
        (0.55, 20, 30), (0.72, 20, 30), (0.60, 20, 30)]
    markdown = (out / "report.md").read_text()
    assert "| full | 3e-05 | 0 | 0.7200 | 0.2800 | 20 | 30 | patience | **chosen** |" in markdown
    # lora's 1e-3 tops its grid (5e-4, 1e-3); full's 3e-5 lies inside (1e-5 ... 1e-4)
    assert ("- **At the edge of its grid:** lora's chosen rate 0.001 is the highest it tried; "
            "its best rate may lie above it") in markdown
    assert "full's chosen rate" not in markdown


def test_selection_says_what_its_trials_could_not_tell():
    """The chosen rate's margin over the runner-up beside one accuracy's 95 % half-width on
    the dev rows (the margin the study's full trials had), and the trials whose best step was
    the last one the step budget allowed."""
    def trial(method, lr, accuracy, *, chosen=False, best_step=300, stopped="max_steps",
              dev_rows=1279):
        return {"method": method, "lr": lr, "seed": 0, "run_dir": f"select/{method}/lr_{lr:.0e}",
                "best_step": best_step, "best_dev_accuracy": accuracy, "best_dev_loss": 1.0,
                "steps": 300, "stopped": stopped, "dev_rows": dev_rows, "chosen": chosen}
    selection = [trial("full", 1e-5, 0.4222), trial("full", 3e-5, 0.4543, chosen=True),
                 trial("full", 1e-4, 0.4394, best_step=250),
                 trial("lora", 5e-4, 0.50, chosen=True), trial("lora", 2e-3, 0.40),
                 trial("dora", 2e-3, 0.44, chosen=True, dev_rows=None, stopped="patience"),
                 trial("dora", 5e-4, 0.43, dev_rows=None),
                 trial("probe", 1e-3, 0.40, chosen=True)]
    checks = sr.selection_checks(selection)
    margins = {m["method"]: m for m in checks["margins"]}
    assert list(margins) == ["full", "lora", "dora"]  # the probe has no other rate
    half = 1.96 * math.sqrt(0.25 / 1279)               # 0.0274
    assert margins["full"]["runner_up_lr"] == 1e-4
    assert margins["full"]["margin"] == pytest.approx(0.0149)
    assert margins["full"]["widest_half_width"] == pytest.approx(half, abs=1e-4)
    assert [margins[m]["within_noise"] for m in margins] == [True, False, None]
    # Rising: best step 300 of 300, stopped by the budget (not full 1e-4's 250, not dora's
    # patience stop).
    assert checks["still_rising"] == ["select/full/lr_1e-05", "select/full/lr_3e-05",
                                      "select/lora/lr_5e-04", "select/lora/lr_2e-03",
                                      "select/dora/lr_5e-04", "select/probe/lr_1e-03"]
    lines = sm._selection_checks(checks)
    assert len(lines) == 2
    assert lines[0].startswith("- **Within dev noise:**")
    assert "(full 3e-05 vs 0.0001: +0.0149) is less than" in lines[0]
    assert "1,279 dev rows (up to ±0.027)" in lines[0] and "lora" not in lines[0]
    assert lines[1].startswith("- **Still rising when the budget ended:** 6 of 8 trials")
    # lora alone, stopped by patience: its margin 0.10 separates its rates; nothing to say.
    patient = [dict(t, stopped="patience") for t in selection[3:5]]
    assert sm._selection_checks(sr.selection_checks(patient)) == []


def test_time_to_target_picks_the_first_step_of_the_mean_curve(built):
    result, out = built
    target = result["time_to_target"]
    assert target["target"] == pytest.approx(0.95 * 0.72)   # 0.684
    rows = {row["method"]: row for row in target["methods"]}
    # full's mean: 0.40, 0.60, 0.7033 (step 30), 0.72; at 2.0 s a step: 60 s.
    assert (rows["full"]["step"], rows["full"]["seconds"]) == (30, 60.0)
    # lora's seed 1 stopped at step 20 with 0.60 and keeps it: the mean at step 30 is 0.65,
    # though seed 0 alone (0.70) would pass.
    assert rows["lora"]["step"] is None and rows["lora"]["evaluated_to"] == 30
    assert result["curves"]["lora"][-1]["mean"] == pytest.approx(0.65)
    assert rows["tf_full"]["evaluated_to"] is None
    markdown = (out / "report.md").read_text()
    assert f"| full | 30 | 60.0 | {AMD} |" in markdown
    assert "| lora | not reached within 30 steps |" in markdown
    assert "| tf_full | no evals.csv |" in markdown


def test_per_language_and_premise_seen_are_means_over_seeds(built, study_dir):
    result, _ = built
    data = sample_data()
    full = np.stack([right_of(study_dir, f"final/full/seed_{s}") for s in (0, 1, 2)])
    english = (data.val["language"] == "English").to_numpy()
    row = next(r for r in result["per_language"]["rows"] if r["language"] == "English")
    assert row["n"] == english.sum()
    assert row["accuracy"]["full"] == pytest.approx(np.mean([f[english].mean() for f in full]))
    other = result["per_language"]["non_english"]
    assert other["n"] == (~english).sum()
    assert other["accuracy"]["full"] == pytest.approx(np.mean([f[~english].mean() for f in full]))
    # ± at 0.5 from a printed table: z_0.975 = 1.96 (1.95996), half of it over √n.
    assert row["widest_half_width"] == pytest.approx(0.979982 / math.sqrt(english.sum()))
    seen = data.val["premise"].isin(set(data.train["premise"])).to_numpy()
    assert seen.any()
    premise = next(r for r in result["premise"]["methods"] if r["method"] == "full")
    assert premise["seen"] == pytest.approx(np.mean([f[seen].mean() for f in full]))
    assert premise["unseen"] == pytest.approx(np.mean([f[~seen].mean() for f in full]))
    assert premise["n_seen"] == [int(seen.sum())]


def test_each_method_against_the_target_on_english_and_the_rest(built, study_dir):
    """lora − full on the English rows and on the others, seeds 0 and 1 (lora's 2 failed)."""
    result, out = built
    english = (sample_data().val["language"] == "English").to_numpy()
    right = {(m, s): right_of(study_dir, f"final/{m}/seed_{s}") for m in ("full", "lora")
             for s in (0, 1)}
    pairs = [p for p in result["english_pairs"] if p["b"] == "lora"]
    assert [(p["rows"], p["n"], p["seeds"]) for p in pairs] == [
        ("English", english.sum(), [0, 1]), ("all but English", (~english).sum(), [0, 1])]
    for pair, keep in zip(pairs, (english, ~english)):
        diffs = [right["lora", s][keep].mean() - right["full", s][keep].mean() for s in (0, 1)]
        assert pair["seed_diffs"] == pytest.approx(diffs)
        assert pair["accuracy_diff"] == pytest.approx(np.mean(diffs))
        low, high = pair["accuracy_diff_ci"]
        assert low <= pair["accuracy_diff"] <= high
    assert [p["b"] for p in result["english_pairs"]] == ["lora", "lora", "tf_full", "tf_full"]
    line = md_line((out / "report.md").read_text(), "| lora vs full | all but English |")
    assert f"| {(~english).sum():,} | 0, 1 | {sm.fmt_signed(pairs[1]['accuracy_diff'])} [" in line


def test_wall_clock_figure_is_refused_across_machines(study_dir, tmp_path):
    copy = variant(study_dir, tmp_path,
                   lambda study: study["timing"]["lora"].update(machine="Intel Xeon (4 cores)"))
    result = sr.build_study_report(copy, bootstrap=BOOTSTRAP)
    skipped = result["figures"]["dev_accuracy_seconds"]["skipped"]
    assert AMD in skipped and "Intel Xeon (4 cores)" in skipped
    assert not (copy / "report" / "dev_accuracy_seconds.png").exists()
    markdown = (copy / "report" / "report.md").read_text()
    assert f"Skipped: {skipped}." in markdown
    assert "compare seconds only within one machine" in markdown
    assert (copy / "report" / "dev_accuracy_steps.png").exists()


def test_different_split_fingerprints_are_refused(study_dir, tmp_path, capsys):
    copy = variant(study_dir, tmp_path, lambda study: None)
    shutil.rmtree(copy / "final/lora/seed_0")
    other = sample_data(split_seed=1)
    write_run(copy / "final/lora/seed_0", other, right=right_mask(len(other.val), 150, 0),
              method="lora", lr=1e-3)
    with pytest.raises(RunDirError, match="split fingerprints differ: select/full/lr_1e-05 .* "
                                          "vs final/lora/seed_0 "):
        sr.build_study_report(copy, bootstrap=BOOTSTRAP)
    with pytest.raises(SystemExit) as exit_info:
        sr.main([str(copy), "--bootstrap", str(BOOTSTRAP)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("error: split fingerprints differ")
    assert "\n" not in err and not (copy / "report").exists()


def test_a_study_with_only_selection_trials_still_reports(study_dir, tmp_path):
    def fail_finals(study):
        for run in study["runs"]:
            if run["stage"] == "final":
                run["status"] = "failed"
    copy = variant(study_dir, tmp_path, fail_finals)
    result = sr.build_study_report(copy, bootstrap=BOOTSTRAP)
    assert [row["accuracy"]["n"] for row in result["methods"]] == [0, 0, 0]
    assert len(result["missing"]) == 7 and len(result["selection"]) == 5
    markdown = (copy / "report" / "report.md").read_text()
    assert "| full | jax_lora | 3e-05 | none | n/a | no finished final run |" in markdown
    assert "Skipped: no final run wrote evals.csv." in markdown
    assert "Skipped: the target method full has no finished final run" in markdown


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(version=2), "version is not 1"),
    (lambda s: s["settings"].update(target_method="dora"), "settings.target_method 'dora'"),
    (lambda s: s["runs"][0].pop("run_dir"), "runs[0] lacks field(s) run_dir"),
    (lambda s: [r.update(status="failed") for r in s["runs"]], "no run has status 'finished'"),
    (lambda s: s["runs"][2].update(seed="0"), "runs[2] has seed '0'"),
])
def test_cli_refuses_bad_study_json(study_dir, tmp_path, capsys, edit, message):
    copy = variant(study_dir, tmp_path, edit)
    with pytest.raises(SystemExit) as exit_info:
        sr.main([str(copy)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and message in err and "\n" not in err
    assert not (copy / "report").exists()


def test_cli_help_says_what_it_writes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sr.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    assert "report.md" in help_text and "report.json" in help_text and "PNG" in help_text


def test_a_run_whose_loss_stays_at_ln3_is_called_stalled(study_dir, tmp_path):
    """A run that never left the uniform prediction (training loss ln 3 for its last evals)
    is named under the method table; a learning curve, however flat in accuracy, is not."""
    assert not any(run["stalled_from"] for row in sr.build_study_report(
        study_dir, tmp_path / "plain", bootstrap=BOOTSTRAP)["methods"] for run in row["per_seed"])
    copy = variant(study_dir, tmp_path, lambda study: None)
    evals_path = copy / "final/full/seed_1/evals.csv"
    evals = pd.read_csv(evals_path)
    evals["train_loss"] = [1.05, math.log(3) + 0.004, math.log(3) - 0.009, math.log(3)]
    evals.to_csv(evals_path, index=False)
    result = sr.build_study_report(copy, bootstrap=BOOTSTRAP)
    stalled = {(row["method"], run["seed"]): run["stalled_from"]
               for row in result["methods"] for run in row["per_seed"]}
    assert stalled[("full", 1)] == 20 and stalled[("full", 0)] is None
    markdown = (copy / "report" / "report.md").read_text()
    assert md_line(markdown, "- **Stalled at chance:**") == (
        "- **Stalled at chance:** full seed 1: its training loss stayed within 0.01 of ln 3 = "
        "1.0986 (the loss of predicting 1/3 for every label) from step 20 to its last "
        "evaluation at step 40. It did not learn: its figures measure a failed run, not full "
        "at its best.")
    # Two evals near ln 3 are not yet a stall (a run may leave the plateau, as lora did here).
    evals["train_loss"] = [1.05, 1.02, math.log(3), math.log(3)]
    evals.to_csv(evals_path, index=False)
    result = sr.build_study_report(copy, bootstrap=BOOTSTRAP)
    assert "Stalled" not in (copy / "report" / "report.md").read_text()


def test_runs_whose_manifest_records_another_commit_are_named(study_dir, tmp_path):
    """The header names every finished run that ran other code than the study's commit (the
    study's TF runs once imported another checkout's packages); the same commit, or none
    recorded, is not named."""
    assert sr.build_study_report(study_dir, tmp_path / "plain",
                                 bootstrap=BOOTSTRAP)["other_code"] == []
    copy = variant(study_dir, tmp_path, lambda study: None)
    study_commit = "abcdef0123456789" * 2
    for run_dir, code in (("final/tf_full/seed_0", {"commit": "7d37ed76e53b" * 3, "dirty": False}),
                          ("final/full/seed_0", {"commit": study_commit, "dirty": True}),
                          ("final/lora/seed_0", {"commit": study_commit, "dirty": False})):
        path = copy / run_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        path.write_text(json.dumps({**manifest, "code": code}))
    result = sr.build_study_report(copy, bootstrap=BOOTSTRAP)
    assert result["other_code"] == [{"run_dir": "final/lora/seed_0", "commit": "abcdef012345"},
                                    {"run_dir": "final/tf_full/seed_0", "commit": "7d37ed76e53b"}]
    markdown = (copy / "report" / "report.md").read_text()
    assert md_line(markdown, "- Code:") == (
        "- Code: commit `abcdef012345` (uncommitted changes); runs whose manifest records "
        "another commit: `final/lora/seed_0` (`abcdef012345`), `final/tf_full/seed_0` "
        "(`7d37ed76e53b`)")


def test_cross_framework_check_places_the_copy_among_the_source_seeds(study_dir, tmp_path):
    """A method with `recipe_from` (tf_full_tuned: the replica at full's recipe) is placed
    against the source's seeds: inside their min–max and t-interval or not, with the paired
    difference oriented as the copy − the source."""
    plain = sr.build_study_report(study_dir, tmp_path / "plain", bootstrap=BOOTSTRAP)
    assert plain["cross_framework"] == []
    assert "Cross-framework" not in (tmp_path / "plain" / "report.md").read_text()

    def add(study):
        study["methods"]["tf_full_tuned"] = {"trainer": "tf_baseline", "args": [], "grid": [],
                                             "recipe_from": "full", "chosen_lr": 3e-5}
        study["runs"] += [{"stage": "final", "method": "tf_full_tuned", "lr": 3e-5, "seed": s,
                           "run_dir": f"final/tf_full_tuned/seed_{s}", "status": "finished"}
                          for s in (0, 1)]
    copy = variant(study_dir, tmp_path, add)
    data = sample_data()
    n = len(data.val)
    # full's seeds have 150, 165, 171 right: t-interval 162 ± 26.9 rows, min–max 150–171.
    for seed, k in ((0, 160), (1, 190)):
        write_run(copy / f"final/tf_full_tuned/seed_{seed}", data,
                  right=right_mask(n, k, 70 + seed), method="tf_full", lr=3e-5)
    [check] = sr.build_study_report(copy, bootstrap=BOOTSTRAP)["cross_framework"]
    assert (check["method"], check["source"], check["trainer"]) == (
        "tf_full_tuned", "full", "tf_baseline")
    assert [(r["seed"], r["in_range"], r["in_interval"]) for r in check["runs"]] == [
        (0, True, True), (1, False, False)]
    assert check["runs"][1]["accuracy"] == pytest.approx(190 / n)
    tuned = [right_of(copy, f"final/tf_full_tuned/seed_{s}").mean() for s in (0, 1)]
    full = [right_of(copy, f"final/full/seed_{s}").mean() for s in (0, 1)]
    paired = check["paired"]
    assert paired["seeds"] == [0, 1]
    assert paired["diff"] == pytest.approx(np.mean(tuned) - np.mean(full))
    assert paired["ci"][0] < paired["diff"] < paired["ci"][1]
    markdown = (copy / "report" / "report.md").read_text()
    row = md_line(markdown, "| tf_full_tuned (tf_baseline) | full (jax_lora) | 1 |")
    assert "| no | no |" in row and f"{190 / n:.4f}" in row

    # The pair listed the other way round (source as B) gives the same oriented difference.
    pair = {"a": "tf_full_tuned", "b": "full", "seeds": [0, 1], "accuracy_diff": -paired["diff"],
            "accuracy_diff_ci": [-paired["ci"][1], -paired["ci"][0]]}
    study = json.loads((copy / "study.json").read_text())
    rows = sr.build_study_report(copy, bootstrap=BOOTSTRAP)["methods"]
    [flipped] = sp.cross_framework(study, rows, [pair])
    assert flipped["paired"]["diff"] == pytest.approx(paired["diff"])
    assert flipped["paired"]["ci"] == pytest.approx(paired["ci"])


def test_compute_used_sums_the_recorded_epoch_seconds(study_dir, tmp_path):
    """Hours per stage and method are the sum of the finished runs' epoch seconds; a run with
    no recorded epochs adds nothing, a failed run is not counted."""
    copy = variant(study_dir, tmp_path, lambda study: None)
    for run_dir, seconds in (("final/full/seed_0", [1800.0, 1800.0]),
                             ("final/full/seed_1", [900.0]), ("select/full/lr_3e-05", [360.0])):
        path = copy / run_dir / "manifest.json"
        manifest = json.loads(path.read_text())
        manifest["epochs"] = [{"epoch": i + 1, "seconds": s} for i, s in enumerate(seconds)]
        path.write_text(json.dumps(manifest))
    result = sr.build_study_report(copy, bootstrap=BOOTSTRAP)
    hours = {(row["stage"], row["method"]): (row["runs"], row["hours"])
             for row in result["compute"]}
    assert hours[("final", "full")] == (3, pytest.approx(1.25))
    assert hours[("select", "full")] == (3, pytest.approx(0.1))
    assert hours[("final", "lora")] == (2, 0.0)   # seed 2 failed: 2 finished runs
    markdown = (copy / "report" / "report.md").read_text()
    assert md_line(markdown, "1.4 hours of training").startswith(
        "1.4 hours of training in the finished selection trials and final runs")
    assert "| final | full | 3 | 1.25 |" in markdown and AMD in markdown.split("## Compute")[1]


def test_tost_is_the_hand_computation():
    """Per-seed differences 0.01, 0.00, 0.02, 0.01, 0.005 (5 seeds): mean 0.009, sd 0.0074162,
    se 0.0033166. H0 mean <= -0.02: t = 0.029 / se = 8.744; H0 mean >= +0.02: t = -0.011 / se
    = -3.317; with 4 degrees of freedom the larger one-sided p is P(T4 > 3.317) = 0.01471
    (t table: t_{0.975,4} = 2.776, t_{0.99,4} = 3.747, so 0.01 < p < 0.025), and the 90 %
    interval 0.009 ± 2.1318 se = [0.00193, 0.01607] lies inside ±0.02."""
    diffs = [0.01, 0.0, 0.02, 0.01, 0.005]
    test = sp.tost(diffs, 0.02)
    se = np.std(diffs, ddof=1) / math.sqrt(5)
    assert se == pytest.approx(0.0033166, rel=1e-4)
    assert test["p"] == pytest.approx(0.01471, abs=2e-4) and 0.01 < test["p"] < 0.025
    assert test["p_upper"] == test["p"] and test["p_lower"] < 1e-3
    assert test["ci_90"] == pytest.approx([0.009 - 2.1318 * se, 0.009 + 2.1318 * se], abs=1e-5)
    assert test["ci_95"] == pytest.approx([0.009 - 2.7764 * se, 0.009 + 2.7764 * se], abs=1e-5)
    assert test["verdict"] == "equivalent within ±2 points"
    # The same spread around 0.03: the 95 % interval excludes 0 and the margin: different.
    assert sp.tost([d + 0.021 for d in diffs], 0.02)["verdict"] == "different"
    # MiniLM's three per-seed differences (RESULTS.md): wide, neither equivalent nor different.
    minilm = sp.tost([-0.0063, -0.0011, -0.0380], 0.02)
    assert minilm["verdict"] == "not shown equivalent" and minilm["p"] > 0.3
    assert sp.tost([0.01], 0.02)["verdict"] is None   # one seed: no test


def test_report_states_the_margin_and_whether_the_plan_fixed_it(built, study_dir, tmp_path):
    result, out = built
    assert result["equivalence"]["margin"] == sp.DEFAULT_MARGIN
    assert not result["equivalence"]["fixed_in_plan"]
    pair = result["pairs"][0]
    assert pair["tost"]["ci_95"] == pytest.approx(pair["seed_diff_t"]["ci"])
    line = md_line((out / "report.md").read_text(), "| all | lora vs full |")
    assert line.endswith(f"| {pair['tost']['verdict']} |")
    assert "not fixed in this study's plan" in (out / "report.md").read_text()

    def fix(study):
        study["settings"].update(equivalence_margin=0.5, primary=["full", "lora"])
    planned = sr.build_study_report(variant(study_dir, tmp_path, fix), bootstrap=BOOTSTRAP)
    assert planned["equivalence"] == {"margin": 0.5, "fixed_in_plan": True,
                                      "dev_part_per_seed": False, "primary": ["full", "lora"]}
    assert planned["pairs"][0]["tost"]["margin"] == 0.5


def test_premise_gap_is_given_within_english_and_within_the_rest(built, study_dir):
    result, out = built
    data = sample_data()
    english = (data.val["language"] == "English").to_numpy()
    seen = data.val["premise"].isin(set(data.train["premise"])).to_numpy()
    full = np.stack([right_of(study_dir, f"final/full/seed_{s}") for s in (0, 1, 2)])
    row = next(r for r in result["premise"]["methods"] if r["method"] == "full")
    for stratum, keep in zip(row["strata"], (english, ~english)):
        assert stratum["n_seen"] == [int((seen & keep).sum())]
        assert stratum["n_unseen"] == [int((~seen & keep).sum())]
        if (seen & keep).any():
            assert stratum["seen"] == pytest.approx(np.mean([f[seen & keep].mean() for f in full]))
        assert stratum["unseen"] == pytest.approx(np.mean([f[~seen & keep].mean() for f in full]))
    assert result["premise"]["english_share"]["seen"] == [pytest.approx(english[seen].mean())] * 2
    markdown = (out / "report.md").read_text()
    assert "| full | English |" in markdown and "| full | other languages |" in markdown
    assert "Simpson's paradox" in markdown


def test_halving_trials_of_one_rate_at_two_budgets_are_both_reported(study_dir, tmp_path):
    """Successive halving trains a rate at 300 and again at 900 steps: two trials of one rate,
    told apart by their budget; the chosen one is the chosen budget's."""
    def halve(study):
        trial = next(r for r in study["runs"] if r["run_dir"] == "select/full/lr_3e-05")
        trial["budget"] = 300
        study["runs"].append({**trial, "budget": 900})
        study["methods"]["full"]["chosen_budget"] = 900
    result = sr.build_study_report(variant(study_dir, tmp_path, halve), bootstrap=BOOTSTRAP)
    rows = [r for r in result["selection"] if r["method"] == "full" and r["lr"] == 3e-5]
    assert [(r["budget"], r["chosen"]) for r in rows] == [(300, False), (900, True)]
    markdown = (tmp_path / "study" / "report" / "report.md").read_text()
    assert "| method | learning rate | budget (steps) | seed |" in markdown
    assert "| full | 3e-05 | 900 | 0 |" in markdown
