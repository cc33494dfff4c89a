"""Dev evaluations during training (--dev-fraction, --eval-every, --patience, --max-steps):
the curve, the best step the outputs come from, early stopping, and extending a finished run."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import safetensors.numpy

from jax_lora.adapter import ADAPTER, ADAPTER_WEIGHTS
from jax_lora.config import parse_config
from jax_lora.dev_eval import BEST, DevTracker
from shared.data.spec import DataSpec, load
from shared.data.watson import SAMPLE_DATA_DIR
from shared.evaluation.evaluate import evaluate
from shared.runs.run_dir import EVALS, MANIFEST, read_run
from tests.jax_lora.trainer_process import run_trainer

FLAGS = ["--data-dir", str(SAMPLE_DATA_DIR), "--limit", "100", "--batch-per-device", "4",
         "--sequence-length", "32", "--lr", "3e-3", "--quiet"]
DEV = ["--dev-fraction", "0.3", "--eval-every", "3"]


def train(preset, run_dir, *flags, env, check=True) -> subprocess.CompletedProcess:
    return run_trainer(preset, run_dir, *FLAGS, *flags, env=env, check=check)


def row(step, accuracy):
    return {"step": step, "dev_accuracy": accuracy, "dev_loss": 1.0}


def test_best_is_the_earliest_highest_and_patience_counts_evaluations_after_it():
    tracker = DevTracker(patience=2)
    assert tracker.best is None and not tracker.exhausted()
    assert tracker.record(row(3, 0.5))
    assert not tracker.record(row(6, 0.4))
    assert not tracker.record(row(9, 0.5))  # a tie is not better: the earlier step stays
    assert tracker.best["step"] == 3 and tracker.since_best() == 2 and tracker.exhausted()
    tracker.truncate(6)  # a resume from step 6 redoes step 9
    assert [r["step"] for r in tracker.evals] == [3, 6] and not tracker.exhausted()
    assert tracker.record(row(6, 0.6))  # an evaluation redone replaces the recorded one
    assert [r["step"] for r in tracker.evals] == [3, 6] and tracker.summary()["step"] == 6


@pytest.mark.parametrize("flags, field", [
    (["--eval-every", "5"], "eval-every"), (["--patience", "2"], "patience"),
    (["--max-steps", "-1"], "max-steps")])
def test_dev_flags_need_a_dev_part(flags, field):
    with pytest.raises(ValueError, match=f"--{field}"):
        parse_config(flags)


def test_outputs_come_from_the_best_dev_step_and_patience_stops(tiny_hf_preset, tmp_path,
                                                                run_env):
    run_dir = tmp_path / "patient"
    train(tiny_hf_preset, run_dir, *DEV, "--patience", "2", "--epochs", "6", env=run_env)
    run = read_run(run_dir)
    manifest, evals = run.manifest, run.evals
    data = load(DataSpec(data_dir=SAMPLE_DATA_DIR, limit=100, dev_fraction=0.3))
    steps_per_epoch = len(data.train) // 4
    # Every 3 steps and at each epoch end; the validation rows are never evaluated as dev.
    expected = sorted({s for s in range(3, manifest["steps"] + 1)
                       if s % 3 == 0 or s % steps_per_epoch == 0})
    assert evals["step"].tolist() == expected
    assert manifest["data"]["dev"]["n_dev"] == len(data.dev)
    assert not set(data.dev["id"]) & set(run.predictions["id"])
    best = evals.loc[evals["dev_accuracy"].idxmax()]  # idxmax: the first of equals
    assert manifest["best"] == {"step": int(best["step"]), "dev_accuracy": best["dev_accuracy"],
                                "dev_loss": best["dev_loss"]}
    assert manifest["stopped"] == {"reason": "patience", "step": manifest["steps"]}
    assert (evals["step"] > best["step"]).sum() == 2 and manifest["steps"] < 6 * steps_per_epoch
    assert [p.name for p in (run_dir / BEST).iterdir()] == [str(int(best["step"]))]

    # A run stopped at the best step (same seed, same batches and dropout keys) predicts
    # what the patient run's outputs say.
    short = tmp_path / "short"
    train(tiny_hf_preset, short, *DEV, "--epochs", "6", "--max-steps", str(int(best["step"])),
          env=run_env)
    assert json.loads((short / MANIFEST).read_text())["best"]["step"] == int(best["step"])
    pd.testing.assert_frame_equal(read_run(short).predictions, run.predictions)
    # The validation rows were evaluated once, from the best step: history.csv's validation
    # columns are empty, and the evaluator's report copes.
    history = pd.read_csv(run_dir / "history.csv")
    assert history["val_accuracy"].isna().all() and history["train_loss"].notna().all()
    result = evaluate([run_dir, short], tmp_path / "report", bootstrap=1000)
    assert result["runs"][0]["metrics"]["accuracy"] == result["runs"][1]["metrics"]["accuracy"]
    assert (tmp_path / "report" / "report.md").is_file()


def test_a_finished_run_at_a_constant_rate_extends_to_what_a_longer_run_gives(
        tiny_hf_preset, tmp_path, run_env):
    extended, straight = tmp_path / "extended", tmp_path / "straight"
    train(tiny_hf_preset, extended, *DEV, "--epochs", "3", "--max-steps", "7", env=run_env)
    rerun = train(tiny_hf_preset, extended, *DEV, "--epochs", "3", "--max-steps", "16",
                  env=run_env)
    assert "resumed from step 7" in rerun.stdout
    train(tiny_hf_preset, straight, *DEV, "--epochs", "3", "--max-steps", "16", env=run_env)
    a, b = (pd.read_csv(d / EVALS) for d in (extended, straight))
    # The same curve, plus the evaluation at the first run's last step (7).
    assert sorted(set(b["step"]) | {7}) == a["step"].tolist()
    columns = ["step", "examples", "dev_loss", "dev_accuracy"]
    pd.testing.assert_frame_equal(a[a["step"] != 7][columns].reset_index(drop=True),
                                  b[columns])
    # The extension's outputs are the longer run's, bitwise.
    first, second = (safetensors.numpy.load_file(str(d / ADAPTER / ADAPTER_WEIGHTS))
                     for d in (extended, straight))
    for name in second:
        assert np.array_equal(first[name], second[name]), name
    assert json.loads((extended / MANIFEST).read_text())["steps"] == 16

    # A schedule that depends on the run's length cannot be extended: one line, exit 2.
    linear = tmp_path / "linear"
    train(tiny_hf_preset, linear, "--schedule", "linear", "--max-steps", "4", env=run_env)
    done = train(tiny_hf_preset, linear, "--schedule", "linear", "--max-steps", "8",
                 env=run_env, check=False)
    assert done.returncode == 2 and "max_steps 4 -> 8" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_no_predict_test_writes_no_submission_and_keeps_the_run(tiny_hf_preset, tmp_path,
                                                                run_env):
    run_dir = tmp_path / "trial"
    train(tiny_hf_preset, run_dir, "--max-steps", "2", "--no-predict-test", env=run_env)
    assert (run_dir / "predictions.csv").is_file() and not (run_dir / "submission.csv").exists()
    again = train(tiny_hf_preset, run_dir, "--max-steps", "2", env=run_env)
    assert "holds this run, finished; kept" in again.stdout  # result-neutral
