"""The study's evidence to commit: finished runs' small files, nothing heavy, nothing partial."""

import json

import pytest

from shared.jobs.study_export import export


def run_dir(root, name, status):
    folder = root / name
    for sub in ("checkpoints/100", "best/100", "adapter"):
        (folder / sub).mkdir(parents=True)
        (folder / sub / "weights").write_bytes(b"x" * 100)
    (folder / "manifest.json").write_text(json.dumps({"status": status}))
    for name in ("evals.csv", "history.csv", "predictions.csv", "cls_embeddings.npy",
                 "submission.csv"):
        (folder / name).write_text("data")
    return folder


def test_export_keeps_what_the_report_reads(tmp_path):
    study = tmp_path / "study"
    run_dir(study, "final/lora/seed_0", "finished")
    run_dir(study, "final/lora/seed_1", "running")
    (study / "study.json").write_text("{}")
    (study / "logs/final/lora").mkdir(parents=True)
    (study / "logs/final/lora/seed_0.log").write_text("log")
    (study / "report").mkdir()
    (study / "report/report.md").write_text("# Study report")
    dest = tmp_path / "results"
    export(study, dest)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["final/lora/seed_0/evals.csv", "final/lora/seed_0/history.csv",
                     "final/lora/seed_0/manifest.json", "final/lora/seed_0/predictions.csv",
                     "report/report.md", "study.json"]
    export(study, dest)  # again, over the earlier copy
    with pytest.raises(FileNotFoundError, match="study.json: missing"):
        export(tmp_path / "nowhere", dest)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match="a_file: is a file"):
        export(study, tmp_path / "a_file")
