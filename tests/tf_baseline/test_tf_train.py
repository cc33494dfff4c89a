"""Whole runs of train.py on a tiny random preset: the run directory, predictions reloaded,
the bool padding-mask workaround, kill -9 and resume, and bad input."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

from shared.data.spec import DataSpec, load
from shared.data.watson import SAMPLE_DATA_DIR, file_sha256, load_test
from shared.runs.lock import EXIT_LOCKED
from shared.runs.presets import describe_preset
from shared.runs.reuse import code_version
from shared.runs.run_dir import (EMBEDDINGS, HISTORY, LOCK, MANIFEST, PREDICTIONS,
                                 PROB_COLUMNS, SUBMISSION, read_run)
from tf_baseline.config import TrainConfig, parse_config
from tf_baseline.train import BACKUP_DIR, main, predict
from tests.tf_baseline.conftest import REPO, TINY_FLAGS

TINY_DATA = DataSpec(limit=160)  # the rows the tiny runs use


def test_mirrored_run_writes_the_run_directory(mirrored_run, tiny_preset):
    run = read_run(mirrored_run)
    manifest = run.manifest
    data = load(TINY_DATA)
    assert manifest["trainer"] == "tf_baseline" and manifest["status"] == "finished"
    assert manifest["devices"]["strategy"] == "MirroredStrategy"
    assert manifest["devices"]["replicas"] == 2 and len(manifest["devices"]["devices"]) == 2
    # The notebook's scaling: batch 8 x 2 replicas, Adam at 1e-3 x 2.
    assert manifest["training"] == {"optimizer": "Adam", "learning_rate": 2e-3, "global_batch": 16,
                                    "steps_per_epoch": 7, "loss": "CategoricalCrossentropy",
                                    "from_logits": True}
    assert manifest["preprocessing"]["sequence_length"] == 32
    assert manifest["preprocessing"]["truncate"] == "round_robin"
    assert manifest["split"]["n_train"] == 112 and manifest["split"]["n_val"] == 48
    assert manifest["split"]["fingerprint"] == data.split.fingerprint
    assert manifest["weights"] == describe_preset(str(tiny_preset))
    assert manifest["weights"]["files"]["model.weights.h5"] == file_sha256(
        tiny_preset / "model.weights.h5")
    assert manifest["code"] == code_version() and len(manifest["code"]["commit"]) == 40
    assert manifest["data"]["spec"] == DataSpec(limit=160).resolved().to_dict()
    params = manifest["params"]
    assert params["total"] == params["trainable"] > 20_000 and params["trainable_pct"] == 100.0
    assert [e["epoch"] for e in manifest["epochs"]] == [1, 2]
    for epoch in manifest["epochs"]:
        assert epoch["seconds"] > epoch["train_seconds"] > 0
        assert epoch["examples_per_s"] == pytest.approx(112 / epoch["seconds"])
    assert manifest["peak_host_rss_mb"] > 100 and manifest["peak_accelerator_mem_mb"] is None

    # Predictions and [CLS] vectors cover every validation row, in split order (48 rows is 3
    # global batches exactly; fit's validation drops nothing here either).
    assert run.predictions["id"].tolist() == data.val["id"].tolist()
    assert run.predictions["label"].tolist() == data.val["label"].tolist()
    probs = run.predictions[list(PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (run.predictions["pred"] == probs.argmax(axis=1)).all()
    hidden_dim = json.loads((tiny_preset / "config.json").read_text())["config"]["hidden_dim"]
    assert run.embeddings.shape == (48, hidden_dim)
    accuracy = (run.predictions["pred"] == run.predictions["label"]).mean()
    assert run.history["val_accuracy"].iloc[-1] == pytest.approx(accuracy, abs=1e-6)
    assert run.history["epoch"].tolist() == [1, 2]
    assert run.history["train_loss"].iloc[1] < run.history["train_loss"].iloc[0]

    submission = pd.read_csv(mirrored_run / SUBMISSION, dtype=str)
    assert submission["id"].tolist() == load_test(SAMPLE_DATA_DIR)["id"].tolist()  # all 87
    assert set(submission["prediction"]) <= {"0", "1", "2"}
    assert not (mirrored_run / BACKUP_DIR).exists()


def test_predictions_equal_a_separate_predict_on_the_saved_classifier(mirrored_run):
    # Reloaded from preset/ and run on one device in batches of 64, not two replicas of 8.
    saved = read_run(mirrored_run).predictions
    probs = predict(mirrored_run, load(TINY_DATA).val)
    np.testing.assert_allclose(probs, saved[list(PROB_COLUMNS)].to_numpy(), rtol=0, atol=1e-6)
    assert (probs.argmax(axis=1) == saved["pred"].to_numpy()).all()


def test_int32_padding_mask_gives_the_same_logits(tiny_preset):
    import keras_hub
    import tensorflow as tf

    from tf_baseline.data import text_dataset
    # The notebook's way: the preprocessor attached, raw text pairs in, a bool padding_mask.
    classifier = keras_hub.models.BertTextClassifier.from_preset(str(tiny_preset), num_classes=3)
    frame = load(TINY_DATA).val
    pairs = (frame["premise"].tolist(), frame["hypothesis"].tolist())
    mask = classifier.preprocessor(tuple(map(tf.constant, pairs)), None)["padding_mask"]
    assert mask.dtype == tf.bool and 0 < mask.numpy().mean() < 1  # padding where it matters
    expected = classifier.predict(pairs, batch_size=16, verbose=0)
    # Ours: the same preprocessor in the tf.data pipeline, padding_mask cast to int32.
    preprocessor, classifier.preprocessor = classifier.preprocessor, None
    piped = text_dataset(frame, preprocessor, 16, labels=False, drop_remainder=False)
    assert next(iter(piped))["padding_mask"].dtype == tf.int32
    np.testing.assert_array_equal(classifier.predict(piped, verbose=0), expected)


def test_killed_run_resumes_to_the_uninterrupted_result(mirrored_runs, run_train):
    run_dir, killed = mirrored_runs.killed, mirrored_runs.killed_result
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    manifest = json.loads((run_dir / MANIFEST).read_text())
    assert manifest["status"] == "running" and [e["epoch"] for e in manifest["epochs"]] == [1]
    backup = json.loads((run_dir / BACKUP_DIR / "keras" / "training_metadata.json").read_text())
    assert backup["epoch"] == 1
    assert not (run_dir / PREDICTIONS).exists()

    resumed = run_train(mirrored_runs.flags + ["--run-dir", run_dir])  # the same command again
    assert "resuming from" in resumed.stdout
    manifest = json.loads((run_dir / MANIFEST).read_text())
    assert manifest["status"] == "finished" and len(manifest["resumed_at"]) == 1
    # Weights, optimizer state, dropout seeds and data order are all restored, and CPU kernels
    # are deterministic: the resumed run computes exactly what the uninterrupted one did.
    for name in (PREDICTIONS, HISTORY, SUBMISSION):
        assert (run_dir / name).read_text() == (mirrored_runs.clean / name).read_text(), name
    np.testing.assert_array_equal(np.load(run_dir / EMBEDDINGS),
                                  np.load(mirrored_runs.clean / EMBEDDINGS))
    assert not (run_dir / BACKUP_DIR).exists()


# Runs train.py's `train`, SIGKILLed when Keras' BackupAndRestore, having written the weights
# after epoch 1, opens its metadata file for writing: the two-write window (issue 31).
KILL_BETWEEN_KERAS_WRITES = textwrap.dedent("""
    import os, signal, sys
    import keras.src.callbacks.backup_and_restore as backup_and_restore
    from tf_baseline.config import parse_config
    from tf_baseline.train import train

    keras_file = backup_and_restore.file_utils.File

    def file(path, mode="r"):
        if mode == "w" and str(path).endswith("training_metadata.json"):
            os.kill(os.getpid(), signal.SIGKILL)
        return keras_file(path, mode)

    backup_and_restore.file_utils.File = file
    train(parse_config(sys.argv[1:]))
""")


def test_kill_between_keras_two_writes_resumes_at_the_right_epoch(mirrored_runs, run_train,
                                                                  tmp_path):
    """Keras alone would load epoch 1's weights, find no metadata, and train epoch 1 again on
    them. The rerun says what happened in one line and ends as the uninterrupted run; the same
    state with ExactResume's file cut stops in one line naming it."""
    run_dir = tmp_path / "window"
    killed = subprocess.run([sys.executable, "-c", KILL_BETWEEN_KERAS_WRITES,
                             *map(str, mirrored_runs.flags), "--run-dir", str(run_dir)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    keras_dir = run_dir / BACKUP_DIR / "keras"
    assert sorted(p.name for p in keras_dir.iterdir()) == ["latest.weights.h5"]

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    npz = broken / BACKUP_DIR / "exact" / "epoch_1.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    stopped = run_train(mirrored_runs.flags + ["--run-dir", broken], check=False)
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("error: ")]
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr[-2000:]
    assert len(errors) == 1 and f"{npz} cannot be read" in errors[0] and "--restart" in errors[0]
    assert "killed between Keras' two writes" in errors[0]

    resumed = run_train(mirrored_runs.flags + ["--run-dir", run_dir])
    warnings = [line for line in resumed.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "Traceback" not in resumed.stderr, resumed.stderr[-2000:]
    assert warnings[0].startswith(f"warning: resume state: {keras_dir / 'latest.weights.h5'} "
                                  f"holds the weights after epoch 1 but ")
    assert "named epoch 0 (killed between Keras' two writes)" in warnings[0]
    epochs = json.loads((run_dir / MANIFEST).read_text())["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for name in (PREDICTIONS, HISTORY, SUBMISSION):
        assert (run_dir / name).read_text() == (mirrored_runs.clean / name).read_text(), name


def test_a_run_directory_another_process_holds_is_refused(tiny_preset, tmp_path, capsys):
    """tf_baseline takes the run directory's lock (shared/runs/lock.py, tested with two
    processes there and with two jax_lora trainers) before it writes: held by a live process,
    the command stops in one line naming it, exit code 3."""
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        run_dir = tmp_path / "held"
        run_dir.mkdir()
        (run_dir / LOCK).write_text(json.dumps({"pid": owner.pid, "start": None, "token": "t",
                                                "host": socket.gethostname()}))
        with pytest.raises(SystemExit) as info:
            main(["--preset", str(tiny_preset), *TINY_FLAGS, "--run-dir", str(run_dir)])
        assert info.value.code == EXIT_LOCKED
        assert capsys.readouterr().err.splitlines() == [
            f"error: --run-dir {run_dir}: in use by process {owner.pid} on host "
            f"{socket.gethostname()} ({run_dir / LOCK}); wait for it to finish or stop it, or "
            f"pass another --run-dir"]
        assert [p.name for p in run_dir.iterdir()] == [LOCK]
    finally:
        owner.kill()
        owner.wait()


def test_rerunning_a_finished_run_keeps_it_and_check_writes_nothing(mirrored_runs, run_train):
    run_dir = mirrored_runs.clean
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    kept = run_train(mirrored_runs.flags + ["--run-dir", run_dir])
    assert "holds this run, finished; kept" in kept.stdout
    checked = run_train(mirrored_runs.flags + ["--run-dir", run_dir, "--check", "--restart"])
    assert "check passed" in checked.stdout and "would train from scratch" in checked.stdout
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def bad_input_cases(tiny_preset, finished_run, tmp_path):
    other_run = tmp_path / "other"
    other_run.mkdir()
    (other_run / MANIFEST).write_text(json.dumps(
        {"trainer": "tf_baseline", "status": "running", "config": TrainConfig(epochs=5).to_dict()}))
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("x")
    tiny = ["--preset", tiny_preset, "--limit", "160", "--quiet"]
    return [
        (["--preset", tmp_path / "missing"], "no such folder"),
        (["--preset", tmp_path], "neither model.safetensors"),
        (["--preset", "no_such_preset_name"], "--preset no_such_preset_name: cannot fetch it"),
        (tiny + ["--epochs", "0"], "--epochs 0: must be >= 1"),
        (tiny + ["--data-dir", tmp_path / "nowhere"], "--data-dir"),
        (tiny + ["--batch-per-replica", "64"], "global batch of 64 rows exceeds the 48 validation"),
        (tiny + ["--sequence-length", "65"], "position table holds 64"),
        (tiny + ["--run-dir", finished_run], "holds a finished run with other inputs"),
        (tiny + ["--run-dir", other_run], "epochs 5 -> 3"),
        (tiny + ["--run-dir", junk], "holds files but no run"),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny_preset, mirrored_run, tmp_path,
                                                            capsys):
    cases = bad_input_cases(tiny_preset, mirrored_run, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    finished = {p: p.stat().st_mtime_ns for p in mirrored_run.rglob("*")}
    for argv, message in cases:
        run_dir = tmp_path / "new-run"
        if "--run-dir" not in argv:
            argv = argv + ["--run-dir", run_dir]
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2, argv
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], (argv, err)
        assert not run_dir.exists()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before
    assert {p: p.stat().st_mtime_ns for p in mirrored_run.rglob("*")} == finished


def test_lora_counts_keras_hubs_factors_and_resumes_exactly(tiny_preset, tmp_path):
    import keras

    from tf_baseline.train import train

    class Snapshot(keras.callbacks.Callback):
        """Copies the run directory after each epoch's backup: what a kill right after it
        leaves behind (the kill test above does it for real)."""

        def on_epoch_end(self, epoch, logs=None):
            # Not the run's lock: it names this (live) process, where a killed trainer's
            # names a dead one, which the resume takes over (tests/shared/runs/test_lock.py).
            shutil.copytree(clean_dir, tmp_path / f"after-epoch-{epoch + 1}",
                            ignore=shutil.ignore_patterns(LOCK))

    # 96 rows: 67 train (4 steps of 16) / 29 validation.
    flags = ["--preset", str(tiny_preset), "--lora-rank", "2", "--epochs", "2", "--limit", "96",
             "--lr-per-replica", "1e-2", "--quiet"]
    clean_dir = tmp_path / "clean"
    clean = read_run(train(parse_config(flags + ["--run-dir", str(clean_dir)]), [Snapshot()]))
    # Keras' backup alone brings back A = B = 0 (it saves W + BA and zeroes the factors on
    # loading), so epoch 2 would not move the adapters and the predictions would differ.
    for snapshot in ("after-epoch-1", "after-epoch-2"):
        resumed = read_run(train(parse_config(flags + ["--run-dir", str(tmp_path / snapshot)])))
        assert (resumed.run_dir / PREDICTIONS).read_text() == \
            (clean_dir / PREDICTIONS).read_text(), snapshot
        assert resumed.history.equals(clean.history)
    # preset/ holds the merged kernels W + BA: a plain classifier that predicts the same.
    np.testing.assert_allclose(predict(clean_dir, load(DataSpec(limit=96)).val),
                               clean.predictions[list(PROB_COLUMNS)].to_numpy(), rtol=0, atol=1e-6)

    # keras-hub factors the query/value kernels [hidden, heads, head_dim] as A [hidden, heads,
    # rank] times B [rank, head_dim], B shared by the heads: not standard LoRA's [hidden, rank]
    # and [rank, hidden]. The query/value biases and the head (hidden x 3 + 3) train too.
    config = json.loads((tiny_preset / "config.json").read_text())["config"]
    hidden, heads, layers, rank = (config["hidden_dim"], config["num_heads"],
                                   config["num_layers"], 2)
    adapters = layers * 2 * (hidden * heads * rank + rank * hidden // heads)
    params = clean.manifest["params"]
    assert params["trainable"] == adapters + layers * 2 * hidden + hidden * 3 + 3
    assert params["total"] - adapters == hidden * 3 + 3 + _backbone_params(tiny_preset)
    assert params["trainable_pct"] == pytest.approx(100 * params["trainable"] / params["total"],
                                                    abs=1e-4)


def _backbone_params(preset) -> int:
    return json.loads((preset / "metadata.json").read_text())["parameter_count"]


@pytest.mark.slow
def test_minilm_one_short_epoch_on_real_rows(watson_dir, tmp_path):
    from shared.runs.presets import minilm_dir
    from tf_baseline.train import train
    # 200 rows: 140 train (8 steps of 16) / 60 validation, 200 test rows predicted.
    config = parse_config(["--preset", str(minilm_dir()), "--data-dir", str(watson_dir),
                           "--limit", "200", "--sequence-length", "32", "--epochs", "1",
                           "--run-dir", str(tmp_path / "run"), "--quiet"])
    run = read_run(train(config))
    assert run.manifest["weights"]["kind"] == "hf"
    assert run.manifest["params"]["total"] == 22_713_216 + 384 * 3 + 3  # backbone + head
    # MiniLM is uncased: its own normaliser lowercases and strips accents before WordPiece.
    assert run.manifest["preprocessing"]["text_normalizer"]["lowercase"] is True
    assert len(run.predictions) == 60 and run.embeddings.shape == (60, 384)
    assert np.isfinite(run.history[["train_loss", "val_loss"]].to_numpy()).all()


def test_extra_rows_join_the_training_steps(tiny_preset, run_train, tmp_path):
    """--extra-train (issue #18), the rows prepared from a mocked tfds multi_nli: they train, the
    planted copies of test pairs do not, the validation rows stay the split's."""
    from tests.conftest import extra_rows
    from tests.tfds_mocks import nli, planted, prepare

    rows = extra_rows(SAMPLE_DATA_DIR)
    examples = [nli(r.premise, r.hypothesis, r.label) for r in rows.itertuples()]
    prepared = tmp_path / "prepared"
    with planted({"multi_nli": examples}):
        assert prepare("--extra-train", "multi_nli:train", "--out", prepared) == 0
    run_dir = tmp_path / "extra"
    flags = [*TINY_FLAGS, "--epochs", "1"]
    done = run_train(["--preset", tiny_preset, *flags, "--extra-train", prepared,
                      "--run-dir", run_dir])
    assert (f"data: extra rows: {len(rows)} from multi_nli:train; 2 exact and 1 near copies of "
            f"validation/test pairs dropped; {len(rows) - 3} joined the training part"
            ) in done.stdout
    manifest = read_run(run_dir).manifest
    assert manifest["training"]["steps_per_epoch"] == (112 + len(rows) - 3) // 8
    assert manifest["data"]["extra"]["joined"] == len(rows) - 3
    assert manifest["data"]["extra"]["sources"][0]["builder"] == "multi_nli"
    assert manifest["split"]["fingerprint"] == load(TINY_DATA).split.fingerprint
    assert manifest["epochs"][0]["examples_per_s"] == pytest.approx(
        (112 + len(rows) - 3) // 8 * 8 / manifest["epochs"][0]["seconds"])
