"""The run-directory contract: what the writer writes, the reader reads back and checks."""

import json

import numpy as np
import pandas as pd
import pytest

from shared.runs.run_dir import (MANIFEST, PREDICTION_COLUMNS, RunDirError, RunWriter,
                            atomic_write_text, predictions_frame, read_run, submission_frame)

VAL = pd.DataFrame({"id": ["v1", "v2", "v3"], "language": ["English", "Thai", "English"],
                    "label": [0, 2, 1]})


def start(writer):
    writer.start(trainer="unit", config={"lr": 1e-5}, weights={"source": "x", "sha256": "y"},
                 split={"fingerprint": "f" * 64}, data={}, versions={}, devices={"replicas": 1},
                 params={"total": 10, "trainable": 1, "trainable_pct": 10.0})


def write_run(run_dir):
    writer = RunWriter(run_dir)
    start(writer)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.3, 0.2]])
    writer.write_predictions(predictions_frame(VAL, probs))
    writer.write_history(pd.DataFrame({"epoch": [1], "train_loss": [1.0], "train_accuracy": [0.3],
                                       "val_loss": [1.1], "val_accuracy": [0.33]}))
    writer.write_embeddings(np.ones((3, 4)))
    writer.add_epoch(1, seconds=2.0, examples=10)
    return writer


def test_round_trip(tmp_path):
    writer = write_run(tmp_path)
    with pytest.raises(RunDirError, match="status is 'running'"):
        read_run(tmp_path)
    writer.finish()
    run = read_run(tmp_path)
    assert run.predictions.columns.tolist() == list(PREDICTION_COLUMNS)
    assert run.predictions["pred"].tolist() == [0, 2, 0]
    assert run.predictions["id"].tolist() == ["v1", "v2", "v3"]
    assert run.manifest["epochs"] == [{"epoch": 1, "seconds": 2.0, "examples_per_s": 5.0}]
    assert run.manifest["peak_host_rss_mb"] > 10
    assert run.embeddings.shape == (3, 4) and run.split_fingerprint == "f" * 64
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_restart_keeps_start_time_and_epochs(tmp_path):
    write_run(tmp_path).finish()
    first = json.loads((tmp_path / MANIFEST).read_text())
    writer = RunWriter(tmp_path)
    start(writer)
    assert writer.manifest["status"] == "running"
    assert writer.manifest["started_at"] == first["started_at"]
    assert len(writer.manifest["resumed_at"]) == 1
    writer.add_epoch(1, seconds=4.0, examples=10)
    assert writer.manifest["epochs"][0]["examples_per_s"] == 2.5 and len(writer.manifest["epochs"]) == 1


def test_reader_rejects_broken_dirs(tmp_path):
    with pytest.raises(RunDirError, match="no manifest.json"):
        read_run(tmp_path)
    write_run(tmp_path).finish()
    (tmp_path / "predictions.csv").unlink()
    with pytest.raises(RunDirError, match="predictions.csv: missing"):
        read_run(tmp_path)
    (tmp_path / MANIFEST).write_text("{")
    with pytest.raises(RunDirError, match="not valid JSON"):
        read_run(tmp_path)


def test_writer_checks_shapes_and_columns(tmp_path):
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        predictions_frame(VAL, np.ones((3, 2)))
    with pytest.raises(RunDirError, match="missing column"):
        RunWriter(tmp_path).write_history(pd.DataFrame({"epoch": [1]}))
    frame = submission_frame(pd.DataFrame({"id": ["t2", "t1"]}), np.array([[0, 1, 0], [1, 0, 0]]))
    assert frame.values.tolist() == [["t2", 1], ["t1", 0]]


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def broken_replace(*args):
        raise OSError("disk gone")
    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]
