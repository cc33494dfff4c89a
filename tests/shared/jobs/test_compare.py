"""The main job end to end on a tiny random BERT: both trainers, the probe, the evaluator."""

import json
import subprocess
import sys

from shared.runs.run_dir import read_run

TINY_RUN = ["--sequence-length", "32", "--epochs", "1", "--limit", "120", "--quiet"]


def compare(preset, out, *extra):
    return subprocess.run([sys.executable, "-m", "shared.jobs.compare", "--preset", str(preset),
                           "--out", str(out), "--probe", *TINY_RUN, *extra],
                          capture_output=True, text=True)


def test_compare_isolates_a_failing_trainer_then_completes(tiny_hf_preset, tmp_path):
    out = tmp_path / "cmp"
    # A trainer that fails (here on a bad flag) is reported; the others run and are compared.
    first = compare(tiny_hf_preset, out, "--tf-args", "--lr-per-replica -1")
    assert first.returncode == 1, first.stderr[-2000:]
    assert "tf_full: FAILED (exit code 2)" in first.stderr
    assert not (out / "tf_full").exists()
    partial = json.loads((out / "report" / "report.json").read_text())
    assert sorted(run["name"] for run in partial["runs"]) == ["jax_lora", "jax_probe"]

    # Rerun: finished runs are kept, the missing one trains, the report covers all three.
    second = compare(tiny_hf_preset, out)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "jax_lora: " in second.stdout and "holds this run, finished; kept" in second.stdout
    assert "tf_full: finished" in second.stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert sorted(run["name"] for run in report["runs"]) == ["jax_lora", "jax_probe", "tf_full"]
    runs = {run["name"]: read_run(out / run["name"]) for run in report["runs"]}
    assert len({run.split_fingerprint for run in runs.values()}) == 1
    assert {run.manifest["trainer"] for run in runs.values()} == {"tf_baseline", "jax_lora"}
    probe = runs["jax_probe"].manifest
    assert probe["config"]["lora"]["targets"] == []
    assert probe["params"]["trainable"] == 32 * 3 + 3  # the head alone: hidden 32 -> 3 classes
    report_md = (out / "report" / "report.md").read_text()
    assert len(report_md) > 1000 and "majority class" in report_md.split("## Summary")[0]
    assert "All runs come from code commit" in report_md

    # Other inputs: nothing is reused silently; one line names what differs, nothing trains.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    third = compare(tiny_hf_preset, out, "--jax-args", "--lr 2e-3")
    assert third.returncode == 2, third.stderr[-2000:]
    error = [line for line in third.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "--rerun" in error[0], third.stderr[-2000:]
    assert "jax_lora: " in error[0] and "lr 0.001 -> 0.002" in error[0]  # demo recipe: 1e-3
    assert "jax_probe: " in error[0] and "tf_full" not in error[0]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # --rerun retrains exactly those runs from scratch, keeps the other.
    fourth = compare(tiny_hf_preset, out, "--jax-args", "--lr 2e-3", "--rerun")
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    assert "tf_full: " in fourth.stdout and "finished; kept" in fourth.stdout
    for name in ("jax_lora", "jax_probe"):
        manifest = read_run(out / name).manifest
        assert manifest["config"]["lr"] == 2e-3 and "resumed_at" not in manifest


def test_compare_rejects_bad_data_before_training(tmp_path):
    (tmp_path / "train.csv").write_text("id,premise\n1,x\n")
    result = subprocess.run([sys.executable, "-m", "shared.jobs.compare", "--data-dir", str(tmp_path),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "missing column(s) hypothesis" in result.stderr
    assert not (tmp_path / "out").exists()


def test_kept_runs_that_cannot_be_compared_end_in_one_line(tiny_hf_preset, tmp_path, monkeypatch,
                                                           capsys):
    """The evaluator's bad input (here: two kept runs on other splits) is a one-line error."""
    import pytest

    from shared.data.spec import DataSpec, load
    from shared.jobs import compare as job
    from shared.runs.run_dir import RunWriter, predictions_frame

    out = tmp_path / "out"
    for name, limit in (("tf_full", 120), ("jax_lora", 150)):
        data = load(DataSpec(limit=limit))
        writer = RunWriter(out / name)
        writer.start(trainer="unit", config={}, weights={}, split=data.split.describe(),
                     data=data.describe(), versions={}, devices={}, params={})
        writer.write_predictions(predictions_frame(data.val, [[0.5, 0.3, 0.2]] * len(data.val)))
        writer.finish()
    monkeypatch.setattr(job, "check_runs", lambda commands, out, rerun: commands)
    monkeypatch.setattr(job, "run_trainers",
                        lambda commands, out: {name: "kept" for name in commands})
    with pytest.raises(SystemExit) as exit_info:
        job.main(["--out", str(out), "--preset", str(tiny_hf_preset)])
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(error) == 1
    assert error[0].startswith("error: split fingerprints differ")
    assert not (out / "report").exists()


def test_every_data_flag_reaches_both_trainers(extra_train, tmp_path):
    """The data spec the trainers get is the one compare was given (dev part and extra rows
    included), flag for flag."""
    from shared.cli import config_from_flags
    from shared.data.spec import DataSpec
    from shared.jobs.compare import parse_args, trainer_commands
    from jax_lora.config import parse_config as jax_config

    argv = ["--out", str(tmp_path), "--split", "grouped", "--dev-fraction", "0.2", "--dev-seed",
            "3", "--train-subset", "50", "--extra-train", str(extra_train), "--allow-overlap",
            "--limit", "120", "--probe"]
    args = parse_args(argv)
    expected = config_from_flags(DataSpec, vars(args))
    commands = trainer_commands(args)
    assert set(commands) == {"tf_full", "jax_lora", "jax_probe"}
    for name in ("jax_lora", "jax_probe"):
        assert jax_config(commands[name][2:]).data == expected
    tf_flags = commands["tf_full"][2:]
    for flag in ("--dev-fraction", "--dev-seed", "--train-subset", "--extra-train"):
        assert tf_flags[tf_flags.index(flag) + 1] == argv[argv.index(flag) + 1]
    assert "--allow-overlap" in tf_flags
