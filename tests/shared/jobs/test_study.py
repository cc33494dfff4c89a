"""The study job: its plan and flags in process, its orchestration with a fake trainer (failures,
skips, reruns), then a tiny real study end to end on the sample and the tiny random BERT."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from jax_lora.config import parse_config as jax_config
from shared.data.spec import DataSpec, file_checksums, load
from shared.data.watson import SAMPLE_DATA_DIR
from shared.jobs import study as job
from shared.jobs import study_design as design
from shared.jobs import study_plan as plan
from shared.jobs.study_plan import FAILED, FINISHED, PENDING, Run
from shared.runs.presets import describe_preset
from shared.runs.run_dir import MANIFEST, read_run
from tf_baseline.config import parse_config as tf_config

REPO = Path(__file__).resolve().parents[3]
STUDY_KEYS = {"version", "command", "code", "settings", "methods", "timing", "runs"}
SETTINGS_KEYS = {"preset", "data_dir", "sequence_length", "seeds", "select_rows", "select_steps",
                 "dev_fraction", "dev_seed", "eval_every", "patience", "max_epochs",
                 "batch_per_device", "target_method", "target_fraction"}
RUN_KEYS = {"stage", "method", "lr", "seed", "run_dir", "status", "dev_accuracy", "minutes"}


def make_study(preset, out, *flags):
    argv = ["--out", str(out), "--preset", str(preset), *flags]
    return job.build_study(job.parse_args(argv), argv)


# ---------------------------------------------------------------- plan and flags, in process

def test_method_table_runs_as_the_trainers_require(tiny_hf_preset, tmp_path):
    # Every run of every method, at each stage, parses with its trainer's own flags.
    out = tmp_path / "study"
    study = make_study(tiny_hf_preset, out, "--methods", ",".join(plan.METHODS), "--seeds", "1")
    (out / plan.final_dir("full", 0)).mkdir(parents=True)  # tf_full_tuned's recipe source
    (out / plan.final_dir("full", 0) / "manifest.json").write_text('{"best": {"step": 1}}')
    for method in study.methods.values():
        method.chosen_lr = method.grid[0] if method.grid else None
    for method in study.methods.values():  # tf_full_tuned: at full's chosen rate
        if method.method.recipe_from is not None:
            method.chosen_lr = study.methods[method.method.recipe_from].chosen_lr
    runs = study.runs + [plan.timing_run(name, method.chosen_lr)
                         for name, method in study.methods.items()]
    parsers = {"jax_lora": jax_config, "tf_baseline": tf_config}
    for run in runs:
        run.lr = study.methods[run.method].chosen_lr
        args = plan.trainer_args(study, run, out)
        config = parsers[study.methods[run.method].method.trainer](args)
        assert Path(config.run_dir) == out / run.run_dir, args
        assert config.seed == run.seed and config.preset == str(tiny_hf_preset), args
    assert {run.method for run in runs} == set(plan.METHODS)
    for name, method in plan.METHODS.items():
        assert len(method.grid) in (0, 3), name  # three rates per grid, or the recipe
        if method.parent is not None:
            parent = plan.METHODS[method.parent]
            # --init-from refuses a parent whose head reads another pooling.
            pooling = [m.args[m.args.index("--pooling") + 1] if "--pooling" in m.args else "cls"
                       for m in (method, parent)]
            assert pooling[0] == pooling[1] and parent.grid, name
    assert plan.METHODS["tf_full"].grid == () and plan.METHODS["tf_full"].trainer == "tf_baseline"


def test_flag_parsers_and_run_dir_names():
    assert plan.parse_methods("lp_lora,lora,probe") == ["lora", "probe", "lp_lora"]
    assert plan.parse_grid("lora", "1e-4,5e-4") == (1e-4, 5e-4)
    assert plan.parse_method_args("lora", "--rank 4 --targets query") == (
        "--rank", "4", "--targets", "query")
    assert [plan.lr_text(lr) for lr in (5e-4, 2.5e-4, 1e-5, 0.1)] == [
        "5e-04", "2.5e-04", "1e-05", "1e-01"]
    assert plan.select_dir("lora", 3e-5) == "select/lora/lr_3e-05"
    bad = [(plan.parse_methods, ("lora,bogus",), "choose from"),
           (plan.parse_methods, ("lp_lora",), "add probe"),
           (plan.parse_methods, ("lora,lora",), "twice"),
           (plan.parse_grid, ("lora", "1e-4,fast"), "comma-separated"),
           (plan.parse_grid, ("lora", "1e-4,-1"), "positive"),
           (plan.parse_grid, ("lora", "1e-4,0.0001"), "twice"),
           (plan.parse_grid, ("tf_full", "1e-5"), "recipe"),
           (plan.parse_method_args, ("lora", "--rank 4 --lr=1"), "--lr is set by the study"),
           (plan.parse_method_args, ("lora", "--targets 'query"), "quotation"),
           (plan.parse_assignments, ("--grid", ["lora"], ["lora"]), "METHOD=..."),
           (plan.parse_assignments, ("--grid", ["dora=1"], ["lora"]), "one of --methods"),
           (plan.parse_assignments, ("--grid", ["lora=1", "lora=2"], ["lora"]), "twice")]
    for parse, args, problem in bad:
        with pytest.raises(ValueError, match=problem):
            parse(*args)


def test_method_seeds_trim_final_runs_and_follow_the_parent(tiny_hf_preset, tmp_path):
    study = make_study(tiny_hf_preset, tmp_path / "study", "--methods", "lora,probe,lp_lora",
                       "--seeds", "3", "--method-seeds", "probe=1")
    finals = [(r.method, r.seed) for r in study.runs if r.stage == "final"]
    # lp_lora starts from the probe's final runs, so it has the probe's one seed too.
    assert finals == [("lora", 0), ("probe", 0), ("lp_lora", 0), ("lora", 1), ("lora", 2)]
    assert study.methods["probe"].record()["seeds"] == 1
    for text, problem in (("4", "from 1 to --seeds"), ("0", "from 1 to --seeds"),
                          ("x", "whole number")):
        with pytest.raises(ValueError, match=problem):
            plan.parse_seeds("lora", text, 3, None)
    with pytest.raises(ValueError, match="probe's final runs, which has 1 seed"):
        plan.parse_seeds("lp_lora", "2", 3, 1)


def test_tf_full_tuned_takes_full_fine_tunings_rate_and_epochs(tiny_hf_preset, tmp_path):
    out = tmp_path / "study"
    study = make_study(tiny_hf_preset, out, "--methods", "tf_full_tuned,full", "--seeds", "1")
    assert list(study.methods) == ["full", "tf_full_tuned"]
    with pytest.raises(ValueError, match="add full"):
        plan.parse_methods("tf_full_tuned")
    run = next(r for r in study.runs if r.method == "tf_full_tuned" and r.stage == "final")
    run.lr = 3e-5
    with pytest.raises(ValueError, match="run full's final runs first"):
        plan.trainer_args(study, run, out)
    steps_per_epoch = study.n_train // 16
    (out / "final/full/seed_0").mkdir(parents=True)
    (out / "final/full/seed_0/manifest.json").write_text(
        json.dumps({"best": {"step": steps_per_epoch + 1}}))
    args = plan.trainer_args(study, run, out)
    assert args[args.index("--lr-per-replica") + 1] == "3e-05" and "--lr" not in args
    assert args[args.index("--epochs") + 1] == "2"  # one step into the second epoch
    assert plan.max_steps(study, run, None) is None  # unknown until full's finals


def test_choose_lr_takes_the_best_dev_accuracy_then_lower_loss_then_smaller_lr():
    def trial(lr, accuracy, loss, status=FINISHED):
        return Run("select", "lora", 0, plan.select_dir("lora", lr), lr, status, accuracy, loss)

    assert plan.choose_lr([trial(1e-4, 0.50, 0.9), trial(5e-4, 0.60, 1.2),
                           trial(2e-3, 0.70, 0.5, FAILED)]) == 5e-4
    assert plan.choose_lr([trial(1e-4, 0.60, 0.9), trial(5e-4, 0.60, 0.8)]) == 5e-4
    assert plan.choose_lr([trial(2e-3, 0.60, 0.8), trial(5e-4, 0.60, 0.8)]) == 5e-4
    assert plan.choose_lr([trial(1e-4, None, None, FAILED),
                           trial(5e-4, None, None, PENDING)]) is None


def test_trainer_flags_per_stage(tiny_hf_preset, tmp_path):
    out = tmp_path / "study"
    study = make_study(tiny_hf_preset, out, "--methods", "lp_lora,probe,tf_full", "--seeds", "2",
                       "--select-rows", "100000", "--select-steps", "40",
                       "--method-args", "lp_lora=--rank 4", "--dev-fraction", "0.2")
    assert list(study.methods) == ["probe", "tf_full", "lp_lora"]  # the parent first
    assert study.settings.eval_every == 10 and study.settings.target_method == "probe"
    assert study.select_subset == study.n_train == len(load(DataSpec(dev_fraction=0.2)).train)
    assert [(r.stage, r.method, r.seed) for r in study.runs if r.stage == "final"] == [
        ("final", m, s) for s in (0, 1) for m in ("probe", "tf_full", "lp_lora")]
    study.methods["probe"].chosen_lr = 1e-2
    by_dir = {r.run_dir: r for r in study.runs}

    def flags(run, flag):
        args = plan.trainer_args(study, run, out)
        return args[args.index(flag) + 1] if flag in args else None

    select = by_dir["select/lp_lora/lr_5e-04"]
    args = plan.trainer_args(study, select, out)
    assert args.index("--rank") < args.index("--lr")  # the stage's flags come last
    assert flags(select, "--init-from") == str(out / "select/probe/lr_1e-02")
    assert flags(select, "--train-subset") == str(study.n_train)
    assert flags(select, "--max-steps") == "40" and flags(select, "--eval-every") == "10"
    final = by_dir["final/lp_lora/seed_1"]
    final.lr = 5e-4
    assert flags(final, "--init-from") == str(out / "final/probe/seed_1")
    assert flags(final, "--seed") == "1" and flags(final, "--patience") == "4"
    assert flags(final, "--dev-fraction") == "0.2" and flags(final, "--lr") == "0.0005"
    timing = plan.timing_run("lp_lora", 5e-4)
    assert flags(timing, "--init-from") is None and flags(timing, "--dev-fraction") is None
    assert flags(timing, "--max-steps") == str(plan.TIMING_STEPS)
    tf_final, tf_timing = by_dir["final/tf_full/seed_0"], plan.timing_run("tf_full", None)
    assert flags(tf_final, "--batch-per-replica") == "16" and flags(tf_final, "--lr") is None
    assert flags(tf_final, "--epochs") is None and flags(tf_final, "--dev-seed") == "0"
    assert flags(tf_timing, "--train-subset") == str(plan.TIMING_STEPS * 16)
    assert flags(tf_final, "--run-dir") == str(out / "final/tf_full/seed_0")


@pytest.mark.parametrize("flags, problem", [
    (["--methods", "lora,bogus"], "--methods lora,bogus: choose from"),
    (["--methods", "lora", "--grid", "lora=1e-4;5e-4"], "--grid lora=1e-4;5e-4: expected"),
    (["--methods", "lora", "--grid", "lora"], "--grid lora: expected METHOD="),
    (["--methods", "lora", "--method-args", "lora=--seed 3"], "--seed is set by the study"),
    (["--dev-fraction", "0"], "--dev-fraction 0.0: must lie in (0, 1)"),
    (["--seeds", "x"], "argument --seeds: invalid int value"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tiny_hf_preset, tmp_path, capsys,
                                                          flags, problem):
    with pytest.raises(SystemExit) as exit_info:
        job.main(["--out", str(tmp_path / "study"), "--preset", str(tiny_hf_preset), *flags])
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(error) == 1 and error[0].startswith("error: ")
    assert problem in error[0]
    assert not (tmp_path / "study").exists()


def test_out_must_be_a_study_or_new(tiny_hf_preset, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        job.main(["--out", str(tmp_path), "--preset", str(tiny_hf_preset)])
    assert exit_info.value.code == 2
    assert "holds files but no study.json" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


# ---------------------------------------------------------------- orchestration, fake trainer

# Stands in for jax_lora/train.py, in milliseconds: writes a finished manifest (dev accuracy
# peaks at lr 1e-3, checksums from the environment) or fails as a trainer does; appends its
# --run-dir to calls.txt.
FAKE_TRAINER = textwrap.dedent('''
    import argparse, json, math, os, sys
    from pathlib import Path
    parser = argparse.ArgumentParser()
    for flag in ("--run-dir", "--method", "--lr", "--seed", "--preset", "--data-dir",
                 "--sequence-length", "--patience", "--init-from"):
        parser.add_argument(flag)
    args, _ = parser.parse_known_args()
    with open(Path(__file__).parent / "calls.txt", "a") as calls:
        calls.write(args.run_dir + "\\n")
    if args.method == "dora" or (args.method == "probe" and args.seed == "1" and args.patience):
        print("error: --method " + args.method + ": fake failure", file=sys.stderr)
        sys.exit(2)
    lr = float(args.lr) if args.lr else 1e-3
    manifest = {"status": "finished", "trainer": "jax_lora", "argv": sys.argv[1:],
                "config": {"lr": lr, "sequence_length": int(args.sequence_length)},
                "weights": {"sha256": os.environ["FAKE_WEIGHTS_SHA256"]},
                "data": {"sha256": json.loads(os.environ["FAKE_DATA_SHA256"])},
                "best": {"step": 4, "dev_accuracy": 0.5 - abs(math.log10(lr) + 3) / 10,
                         "dev_loss": 1.0},
                "epochs": [{"epoch": 1, "train_seconds": 3.0, "compile_seconds": 1.0}],
                "steps": 8, "global_batch": 16, "devices": {"devices": ["TFRT_CPU_0"]}}
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.run_dir) / "manifest.json").write_text(json.dumps(manifest))
''')


@pytest.fixture
def fake_repo(tmp_path, monkeypatch, tiny_hf_preset):
    repo = tmp_path / "repo"
    (repo / "jax_lora").mkdir(parents=True)
    (repo / "jax_lora" / "train.py").write_text(FAKE_TRAINER)
    monkeypatch.setattr(job, "REPO", repo)
    monkeypatch.setenv("FAKE_WEIGHTS_SHA256", describe_preset(str(tiny_hf_preset))["sha256"])
    monkeypatch.setenv("FAKE_DATA_SHA256", json.dumps(file_checksums(SAMPLE_DATA_DIR)))
    monkeypatch.setattr(job, "write_report", lambda out: True)  # its own tests cover it
    return repo


def test_failures_are_recorded_and_skip_only_what_depends_on_them(fake_repo, tiny_hf_preset,
                                                                  tmp_path, capsys):
    out = tmp_path / "study"
    argv = ["--out", str(out), "--preset", str(tiny_hf_preset), "--methods",
            "lora,dora,probe,lp_lora", "--seeds", "2", "--grid", "lora=1e-4,1e-3,1e-2",
            "--grid", "probe=1e-3,1e-2", "--grid", "lp_lora=1e-4,1e-3"]
    assert job.main(argv) == 1
    captured = capsys.readouterr()
    study = json.loads((out / "study.json").read_text())
    runs = {r["run_dir"]: r for r in study["runs"]}
    assert set(study) == STUDY_KEYS and all(set(r) >= RUN_KEYS for r in study["runs"])
    assert {m: study["methods"][m]["chosen_lr"] for m in study["methods"]} == {
        "lora": 1e-3, "dora": None, "probe": 1e-3, "lp_lora": 1e-3}
    dora = runs["select/dora/lr_5e-04"]
    assert dora["status"] == FAILED and dora["error"].startswith("--method dora: fake failure")
    assert "select dora lr 5e-04 seed 0: FAILED" in captured.err
    assert runs["final/dora/seed_0"]["status"] == PENDING
    assert runs["final/dora/seed_0"]["error"] == "not run: no selection trial finished"
    assert runs["final/probe/seed_1"]["status"] == FAILED
    assert runs["final/lp_lora/seed_1"]["error"] == (
        "not run: probe's final run of seed 1 did not finish")
    assert runs["final/lp_lora/seed_0"]["status"] == runs["final/lora/seed_1"]["status"] == FINISHED
    argv_of = json.loads((out / "final/lp_lora/seed_0" / MANIFEST).read_text())["argv"]
    assert argv_of[argv_of.index("--init-from") + 1] == str(out / "final/probe/seed_0")
    argv_of = json.loads((out / "select/lp_lora/lr_1e-03" / MANIFEST).read_text())["argv"]
    assert argv_of[argv_of.index("--init-from") + 1] == str(out / "select/probe/lr_1e-03")
    assert set(study["timing"]) == {"lora", "probe", "lp_lora"}  # dora has no chosen rate
    assert study["timing"]["lora"]["step_s"] == pytest.approx((3.0 - 1.0) / 8)
    assert study["timing"]["lora"]["batch"] == 16 and "cores" in study["timing"]["lora"]["machine"]

    # Rerun: only the runs that did not finish start a trainer again.
    calls = fake_repo / "jax_lora" / "calls.txt"
    calls.write_text("")
    assert job.main(argv) == 1
    again = sorted(Path(line).relative_to(out).as_posix() for line in calls.read_text().split())
    assert again == ["final/probe/seed_1"] + [f"select/dora/lr_{lr}"
                                              for lr in ("1e-04", "2e-03", "5e-04")]


# ---------------------------------------------------------------- a real study, end to end

TINY_RUNS = ["--select-rows", "64", "--select-steps", "6", "--eval-every", "3", "--patience", "2",
             "--max-epochs", "1", "--dev-fraction", "0.2", "--sequence-length", "32",
             "--batch-per-device", "8", "--quiet"]
TINY_STUDY = ["--methods", "lora,probe", "--seeds", "2", "--grid", "lora=1e-3,1e-2",
              "--grid", "probe=1e-2,1e-1", *TINY_RUNS]


@pytest.fixture(scope="module")
def study_env(tmp_path_factory) -> dict:
    """Trainer subprocesses compile with LLVM optimisations off (several times faster on CPU)
    and share a compilation cache."""
    return {**os.environ, "PYTHONPATH": str(REPO),
            "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "")
                          + " --xla_backend_optimization_level=0").strip(),
            "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def run_study(env, *flags):
    return subprocess.run([sys.executable, "-m", "shared.jobs.study", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_tiny_study_selects_on_dev_only_and_reruns_nothing(tiny_hf_preset, tmp_path, study_env):
    out = tmp_path / "study"
    flags = ["--out", str(out), "--preset", str(tiny_hf_preset), *TINY_STUDY]
    done = run_study(study_env, *flags)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    study = json.loads((out / "study.json").read_text())
    assert set(study) == STUDY_KEYS and set(study["settings"]) == SETTINGS_KEYS
    assert study["settings"]["seeds"] == [0, 1] and study["settings"]["eval_every"] == 3
    assert all(set(r) >= RUN_KEYS and r["status"] == FINISHED for r in study["runs"])
    assert len(done.stdout.strip().splitlines()) == len(study["runs"]) + 2 + 1  # + timing, report

    for method, grid in (("lora", [1e-3, 1e-2]), ("probe", [1e-2, 1e-1])):
        trials = [r for r in study["runs"] if r["stage"] == "select" and r["method"] == method]
        assert sorted(r["lr"] for r in trials) == grid and study["methods"][method]["grid"] == grid
        best = max(trials, key=lambda r: (r["dev_accuracy"], -r["dev_loss"], -r["lr"]))
        assert study["methods"][method]["chosen_lr"] == best["lr"]
        finals = [r for r in study["runs"] if r["stage"] == "final" and r["method"] == method]
        assert [(r["seed"], r["lr"]) for r in finals] == [(0, best["lr"]), (1, best["lr"])]
        timing = study["timing"][method]
        assert timing["step_s"] > 0 and timing["batch"] == 8 and timing["sequence_length"] == 32

    # The scores are the dev part's, which never holds a validation row.
    for record in study["runs"]:
        run = read_run(out / record["run_dir"])
        evals = pd.read_csv(out / record["run_dir"] / "evals.csv")
        assert record["dev_accuracy"] == run.manifest["best"]["dev_accuracy"]
        assert record["dev_accuracy"] == pytest.approx(evals["dev_accuracy"].max())
        spec = run.manifest["data"]["spec"]
        assert spec["dev_fraction"] == 0.2
        assert spec["train_subset"] == (64 if record["stage"] == "select" else None)
        data = load(DataSpec.from_dict(spec))
        dev_ids, val_ids = set(data.dev["id"]), set(run.predictions["id"])
        assert val_ids == set(data.val["id"])
        assert len(dev_ids) == run.manifest["data"]["dev"]["n_dev"]
        assert dev_ids and not dev_ids & val_ids and not dev_ids & set(data.train["id"])
    # The study's report, over the same split and both methods' final runs.
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["split"]["n_val"] == len(data.val)
    assert {m["method"] for m in report["methods"]} == {"lora", "probe"}

    # The same command again: every run kept, no trainer started.
    files = {p: p.stat().st_mtime_ns for p in (out / "select").rglob("*")}
    files |= {p: p.stat().st_mtime_ns for p in (out / "final").rglob("*")}
    # A started trainer rewrites its run's log: untouched logs say none started (a wall-clock
    # bound said it before, and failed on a loaded machine).
    files |= {p: p.stat().st_mtime_ns for p in (out / "logs").rglob("*.log")}
    assert sum(p.suffix == ".log" for p in files) == len(study["runs"]) + 2  # + timing runs
    again = run_study(study_env, *flags)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count(": kept") == len(study["runs"]) + 2
    assert "finished in" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in files} == files

    # --dry-run on the study: its own timings, nothing written.
    everything = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    plan_only = run_study(study_env, *flags, "--dry-run")
    assert plan_only.returncode == 0, plan_only.stderr[-2000:]
    assert "lora study.json, probe study.json" in plan_only.stdout
    assert plan_only.stdout.count("[study] plan: ") == len(study["runs"]) + 2
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == everything


def test_dry_run_times_steps_elsewhere_and_writes_no_run(tiny_hf_preset, tmp_path, study_env):
    out = tmp_path / "study"
    done = run_study(study_env, "--out", str(out), "--preset", str(tiny_hf_preset),
                     "--methods", "probe", *TINY_RUNS, "--dry-run")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "probe timed now" in done.stdout and "[study] estimate: final " in done.stdout
    assert "chosen after select" in done.stdout
    assert not out.exists()


# ---------------------------------------------------------------- the e5 design (issue 33)


def test_e5_design_plans_halving_dev_seed_per_seed_and_linear_decay(tiny_hf_preset, tmp_path):
    out = tmp_path / "study"
    study = make_study(tiny_hf_preset, out, "--design", "e5")
    assert list(study.methods) == ["full", "lora", "dora", "lora_all", "qlora_nf4", "probe",
                                   "tf_full", "tf_full_tuned"]
    assert all(len(m.grid) == 5 for m in study.methods.values() if m.method.trainer == "jax_lora")
    assert all(m.args[m.args.index("--pooling") + 1] == "mean"
               for m in study.methods.values() if m.method.trainer == "jax_lora")
    seeds = {name: m.seeds for name, m in study.methods.items()}
    assert seeds == {"full": None, "lora": None, "dora": 1, "lora_all": 1, "qlora_nf4": 1,
                     "probe": 1, "tf_full_tuned": 2, "tf_full": 1}
    assert study.settings.seeds == (0, 1, 2, 3, 4) and study.settings.patience == 6
    selects = [r for r in study.runs if r.stage == "select"]
    assert {(r.rung, r.budget) for r in selects} == {(0, 300)}  # later rungs once ranked
    assert len(selects) == 5 * 6

    def flags(run, *names):
        args = plan.trainer_args(study, run, out)
        return [args[args.index(name) + 1] if name in args else None for name in names]

    trial = next(r for r in selects if r.method == "lora" and r.lr == 5e-4)
    assert trial.run_dir == "select/lora/steps_300/lr_5e-04"
    assert flags(trial, "--max-steps", "--schedule", "--warmup-steps", "--dev-seed",
                 "--targets") == ["300", "linear", "30", "0", "query,value"]
    study.methods["lora"].chosen_lr, study.methods["lora"].chosen_budget = 5e-4, 900
    final = next(r for r in study.runs if r.stage == "final" and r.method == "lora"
                 and r.seed == 3)
    final.lr = 5e-4
    assert flags(final, "--max-steps", "--warmup-steps", "--dev-seed", "--seed",
                 "--patience") == ["900", "90", "3", "3", "6"]
    assert "--no-predict-test" in plan.trainer_args(study, final, out)
    study.methods["full"].chosen_lr, study.methods["full"].chosen_budget = 2e-5, 900
    tf = next(r for r in study.runs if r.method == "tf_full_tuned" and r.seed == 1)
    tf.lr = 2e-5
    steps_per_epoch = study.n_train // 16
    assert flags(tf, "--epochs", "--dev-seed", "--schedule") == [
        str(math.ceil(900 / steps_per_epoch)), "1", None]
    record = study.record({})
    assert record["settings"]["equivalence_margin"] == 0.02
    assert record["settings"]["primary"] == ["full", "lora"]
    assert record["design"]["rungs"] == [{"steps": 300, "keep": 5}, {"steps": 900, "keep": 2}]


def test_rungs_keep_the_best_rates_and_choose_rate_and_budget_on_dev():
    def trial(lr, rung, accuracy, loss=1.0, status=FINISHED):
        return Run("select", "lora", 0, f"select/lora/steps_{300 * 3 ** rung}/lr_{lr}", lr,
                   status, accuracy, loss, rung=rung, budget=300 * 3 ** rung)

    first = [trial(1e-4, 0, 0.50), trial(5e-4, 0, 0.60), trial(1e-3, 0, 0.60, loss=0.9),
             trial(2e-3, 0, 0.70, status=FAILED)]
    assert design.rung_rates(first, 2) == [1e-3, 5e-4]  # equal accuracy: the lower dev loss
    # Each finalist at each budget it trained: the best (rate, budget) wins, a shorter budget
    # included; 1e-4, which did not reach the last rung, cannot win even with a higher score.
    first[1].dev_accuracy = 0.62
    later = [trial(1e-3, 1, 0.58), trial(5e-4, 1, 0.55), trial(1e-4, 0, 0.99)]
    assert design.choose_lr_and_budget(first + later) == (5e-4, 300)
    later[0].dev_accuracy = 0.65
    assert design.choose_lr_and_budget(first + later) == (1e-3, 900)
    assert design.choose_lr_and_budget([trial(1e-4, 0, None, status=FAILED)]) == (None, None)


# A fake trainer whose dev accuracy peaks at lr 1e-3 and rises with --max-steps (900 beats 300).
FAKE_HALVING_TRAINER = FAKE_TRAINER.replace(
    '"dev_accuracy": 0.5 - abs(math.log10(lr) + 3) / 10,',
    '"dev_accuracy": 0.5 - abs(math.log10(lr) + 3) / 10 + (0.01 if "900" in sys.argv else 0),')


def test_e5_study_halves_resumes_and_refuses_a_changed_plan(fake_repo, tiny_hf_preset,
                                                            tmp_path, capsys):
    assert FAKE_HALVING_TRAINER != FAKE_TRAINER
    (fake_repo / "jax_lora" / "train.py").write_text(FAKE_HALVING_TRAINER)
    out = tmp_path / "study"
    argv = ["--out", str(out), "--preset", str(tiny_hf_preset), "--design", "e5",
            "--methods", "full,lora", "--seeds", "2", "--quiet"]
    assert job.main(argv) == 0, capsys.readouterr().err
    study = json.loads((out / "study.json").read_text())
    lora = [r for r in study["runs"] if r["method"] == "lora" and r["stage"] == "select"]
    assert [(r["budget"], r["lr"]) for r in lora] == [(300, lr) for lr in design.E5_ADAPTER_GRID] \
        + [(900, 1e-3), (900, 5e-4)]  # 5e-4 and 2e-3 tie: the smaller rate goes on
    assert study["methods"]["lora"]["chosen_lr"] == 1e-3
    assert study["methods"]["lora"]["chosen_budget"] == 900
    finals = {r["run_dir"]: r for r in study["runs"] if r["stage"] == "final"}
    argv_of = json.loads((out / "final/lora/seed_1" / MANIFEST).read_text())["argv"]
    assert argv_of[argv_of.index("--dev-seed") + 1] == "1"
    assert argv_of[argv_of.index("--max-steps") + 1] == "900"
    assert all(r["status"] == FINISHED for r in finals.values())
    assert study["machine"]["cores"] == os.cpu_count()
    fixed = json.loads((out / "plan.json").read_text())
    assert fixed["settings"]["equivalence_margin"] == 0.02 and "runs" not in fixed

    # Rerun: every run kept, no trainer started.
    calls = fake_repo / "jax_lora" / "calls.txt"
    calls.write_text("")
    assert job.main(argv) == 0
    assert calls.read_text() == ""
    # Another grid would change the fixed plan: one line, exit 2, nothing touched.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        job.main(argv + ["--grid", "lora=1e-4,1e-3"])
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(error) == 1
    assert "plan was fixed at its start" in error[0] and "methods.lora" in error[0]
    assert json.loads((out / "plan.json").read_text()) == fixed


def test_calibrated_dry_run_is_the_hand_computation(tiny_hf_preset, tmp_path, capsys):
    """lora 1 s and full 2 s per step (evals.csv differences after the compiling first row),
    10 s per dev evaluation (30 s over the 3 evaluations of epoch 1). Select: 5 x 300 + 2 x 900
    = 3,300 steps and 5 x 3 + 2 x 9 = 33 evaluations per method: full 6,930 s, lora 3,630 s =
    2.93 h. Final, 2 seeds at 900 steps, 9 evaluations + 3 for the validation rows: full
    2 x 1,920 s, lora 2 x 1,020 s = 1.64 h. Total 4.58 core-hours."""
    files = []
    for name, per_step in (("lora", 1.0), ("full", 2.0)):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame({"step": [100, 200, 300], "epoch": [0.4, 0.8, 1.0],
                      "train_seconds": [50 + per_step * s for s in (0, 100, 200)]}).to_csv(
            folder / "evals.csv", index=False)
        (folder / "manifest.json").write_text(json.dumps({"epochs": [{"eval_seconds": 30.0}]}))
        files += ["--calibrate", f"{name}={folder / 'evals.csv'}"]
    out = tmp_path / "study"
    assert job.main(["--out", str(out), "--preset", str(tiny_hf_preset), "--design", "e5",
                     "--methods", "full,lora", "--seeds", "2", "--dry-run", *files]) == 0
    printed = capsys.readouterr().out
    assert "lora 1.000, full 2.000; 10.0 s per dev evaluation" in printed
    assert "[study] estimate: select 2.9 core-hours" in printed
    assert "[study] estimate: final 1.6 core-hours" in printed
    assert "[study] estimate: total 4.6 core-hours" in printed
    assert printed.count("steps_900/(best 2)") == 4 and not out.exists()
    assert design.step_seconds_from_evals(tmp_path / "full" / "evals.csv") == 2.0


def test_e5_tf_full_tuned_trains_at_fulls_warmup_and_decay(tiny_hf_preset, tmp_path):
    """The replica at full's recipe gets tf_baseline's --schedule linear and full's warm-up (10 %
    of full's chosen budget, which select_stage hands on); the starter's recipe, the timing run
    and the minilm design keep the constant rate. tf_baseline's own parser reads the flags."""
    out = tmp_path / "study"
    study = make_study(tiny_hf_preset, out, "--design", "e5")
    for name in ("full", "tf_full_tuned"):  # select_stage: tf_full_tuned takes full's choice
        study.methods[name].chosen_lr, study.methods[name].chosen_budget = 2e-5, 900
    tuned = next(r for r in study.runs if r.method == "tf_full_tuned" and r.seed == 1)
    tuned.lr = 2e-5
    config = tf_config(plan.trainer_args(study, tuned, out))
    assert (config.schedule, config.warmup_steps, config.lr_per_replica) == ("linear", 90, 2e-5)
    assert config.epochs == math.ceil(900 / (study.n_train // 16))
    assert config.warmup_steps <= config.epochs * (study.n_train // 16)
    starter = next(r for r in study.runs if r.method == "tf_full")
    timing = plan.timing_run("tf_full_tuned", 2e-5)
    for run in (starter, timing):
        config = tf_config(plan.trainer_args(study, run, out))
        assert (config.schedule, config.warmup_steps) == ("constant", 0), run.run_dir

    minilm = make_study(tiny_hf_preset, tmp_path / "minilm", "--methods", "full,tf_full_tuned",
                        "--seeds", "1")
    (tmp_path / "minilm" / plan.final_dir("full", 0)).mkdir(parents=True)
    (tmp_path / "minilm" / plan.final_dir("full", 0) / "manifest.json").write_text(
        '{"best": {"step": 1}}')
    run = next(r for r in minilm.runs if r.method == "tf_full_tuned")
    run.lr = 2e-5
    assert "--schedule" not in plan.trainer_args(minilm, run, tmp_path / "minilm")
