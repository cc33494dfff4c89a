"""One rule for both trainers: when a run directory is new, resumed, kept, refused or cleared."""

import json
import subprocess

import pytest

from shared.runs import reuse
from shared.runs.reuse import (FINISHED, NEW, RESUME, RunStateError, clear_run_dir, code_version,
                               config_differences, run_dir_state)
from shared.runs.run_dir import MANIFEST

CONFIG = {"lr": 1e-5, "quiet": False, "run_dir": "a", "data": {"limit": None, "split": "kaggle"}}
WEIGHTS = {"preset": "p", "sha256": "w" * 64}
DATA = {"train.csv": "d" * 64}


def write_run(run_dir, *, status="finished", trainer="unit", config=CONFIG, weights=WEIGHTS,
              data=DATA):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MANIFEST).write_text(json.dumps(
        {"trainer": trainer, "status": status, "config": config, "weights": weights,
         "data": {"sha256": data}}))
    return run_dir


def state(run_dir, restart=False, **changes):
    request = {"config": CONFIG, "weights": WEIGHTS, "data_sha256": DATA, **changes}
    return run_dir_state(run_dir, trainer="unit", restart=restart, **request)


def test_states_of_a_run_directory(tmp_path):
    assert state(tmp_path / "absent") == NEW
    (tmp_path / "empty").mkdir()
    assert state(tmp_path / "empty") == NEW
    assert state(write_run(tmp_path / "done")) == FINISHED
    assert state(write_run(tmp_path / "killed", status="running")) == RESUME
    neutral = {**CONFIG, "quiet": True, "run_dir": "b", "restart": True}
    assert state(tmp_path / "done", config=neutral) == FINISHED


@pytest.mark.parametrize("changes, named", [
    ({"config": {**CONFIG, "lr": 2e-5}}, "lr 1e-05 -> 2e-05"),
    ({"config": {**CONFIG, "data": {"limit": 9, "split": "kaggle"}}}, "data.limit None -> 9"),
    ({"config": {**CONFIG, "epochs": 3}}, "epochs (not recorded) -> 3"),  # an older manifest
    ({"weights": {**WEIGHTS, "sha256": "x" * 64}}, "weights checksum wwwwwwwwwwww -> xxxxxxxxxxxx"),
    ({"data_sha256": {"train.csv": "e" * 64}}, "data files' checksums"),
])
def test_other_inputs_are_refused_with_one_line_naming_them(tmp_path, changes, named):
    for status, what in (("finished", "a finished run"), ("running", "an unfinished run")):
        run_dir = write_run(tmp_path / status, status=status)
        with pytest.raises(RunStateError) as err:
            state(run_dir, **changes)
        message = str(err.value)
        assert f"holds {what} with other inputs" in message and named in message
        assert "--restart" in message and "\n" not in message
        assert state(run_dir, restart=True, **changes) == NEW


def test_what_restart_may_not_clear(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    for restart in (False, True):  # a folder that is no run is never cleared
        with pytest.raises(RunStateError, match="holds files but no run"):
            state(tmp_path / "notes", restart=restart)
        with pytest.raises(RunStateError, match="holds a other run"):
            state(write_run(tmp_path / "other", trainer="other"), restart=restart)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MANIFEST).write_text("{trunc")
    with pytest.raises(RunStateError, match="not valid JSON.*--restart"):
        state(broken)
    assert state(broken, restart=True) == NEW


def test_clear_run_dir_leaves_an_empty_folder(tmp_path):
    run_dir = write_run(tmp_path / "run")
    (run_dir / "checkpoints" / "7").mkdir(parents=True)
    (run_dir / "checkpoints" / "7" / "x").write_text("x")
    clear_run_dir(run_dir)
    assert run_dir.is_dir() and not any(run_dir.iterdir())


def test_config_differences_flatten_sections_and_skip_neutral_fields():
    assert config_differences({"lora": {"rank": 4}, "remat": "dots"},
                              {"lora": {"rank": 8}, "remat": "none"}) == ["lora.rank 4 -> 8"]
    assert config_differences({"a": 1}, {}) == ["a 1 -> (none)"]


def test_code_version_names_the_commit_and_whether_tracked_files_changed(tmp_path,
                                                                         monkeypatch):
    """On a repository made here, so the answers are known whatever state this checkout is in."""
    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.setattr(reuse, "REPO", repo)
    assert code_version() == {"commit": None, "dirty": None}  # not a git repository

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                               "user.email=t@example.org", *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    git("init", "-q")
    (repo / "train.py").write_text("print(1)\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "first")
    head = git("rev-parse", "HEAD")
    assert code_version() == {"commit": head, "dirty": False}
    (repo / "notes.txt").write_text("untracked files do not count")
    assert code_version() == {"commit": head, "dirty": False}
    (repo / "train.py").write_text("print(2)\n")
    assert code_version() == {"commit": head, "dirty": True}


def test_a_finished_run_is_extended_only_in_growable_fields_when_the_config_says_so(tmp_path):
    run_dir = write_run(tmp_path / "done", config={**CONFIG, "epochs": 2, "max_steps": 0})
    longer = {**CONFIG, "epochs": 5, "max_steps": 0}
    assert state(run_dir, config=longer, extends=lambda recorded: True) == RESUME
    with pytest.raises(RunStateError, match="epochs 2 -> 5"):  # the trainer's config says no
        state(run_dir, config=longer, extends=lambda recorded: False)
    with pytest.raises(RunStateError, match="lr 1e-05 -> 0.001"):  # not only growable fields
        state(run_dir, config={**longer, "lr": 1e-3}, extends=lambda recorded: True)
    with pytest.raises(RunStateError, match="weights checksum"):  # same fields, other weights
        state(run_dir, config=longer, weights={**WEIGHTS, "sha256": "x" * 64},
              extends=lambda recorded: True)
    unfinished = write_run(tmp_path / "killed", status="running", config=CONFIG)
    with pytest.raises(RunStateError, match="an unfinished run"):
        state(unfinished, config={**CONFIG, "epochs": 5}, extends=lambda recorded: True)
