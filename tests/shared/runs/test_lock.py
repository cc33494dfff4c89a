"""One process per run directory (shared/runs/lock.py): a second process is refused in one
line naming the owner, a lock left by a process that is gone is taken over, and the run
directory rules ignore the lock. The trainers' own command-line cases are in
tests/jax_lora/test_jax_train.py and tests/tf_baseline/test_tf_train.py."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.jobs.compare import run_trainers
from shared.runs.lock import EXIT_LOCKED, LOCK, RunLockError, lock_run_dir, unlock_run_dir
from shared.runs.reuse import NEW, clear_run_dir, run_dir_state

REPO = Path(__file__).resolve().parents[3]
# A process that takes the lock the way a trainer does (one `error:` line, exit code 3 when
# refused), says so, and holds it until its stdin closes.
HOLDER = textwrap.dedent("""
    import sys
    from shared.cli import exit_on_bad_input
    from shared.runs.lock import lock_run_dir
    with exit_on_bad_input():
        lock_run_dir(sys.argv[1])
    print("locked", flush=True)
    sys.stdin.read()
""")


def holder(run_dir) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def held(tmp_path):
    """A run directory whose lock another live process holds."""
    process = holder(tmp_path / "run")
    assert process.stdout.readline() == "locked\n", process.stderr.read()
    yield tmp_path / "run", process
    process.kill()
    process.wait()


def test_a_second_process_is_refused_in_one_line_naming_the_owner(held):
    run_dir, owner = held
    second = holder(run_dir)
    _, err = second.communicate(timeout=60)
    assert second.returncode == EXIT_LOCKED
    assert err == (f"error: --run-dir {run_dir.resolve()}: in use by process {owner.pid} on "
                   f"host {socket.gethostname()} ({run_dir.resolve() / LOCK}); wait for it to "
                   f"finish or stop it, or pass another --run-dir\n")
    with pytest.raises(RunLockError):  # this process too
        lock_run_dir(run_dir)


def test_the_lock_is_released_at_exit_and_a_killed_owners_is_taken_over(held, capsys):
    run_dir, owner = held
    owner.stdin.close()  # exits normally: the lock goes with it
    owner.wait(timeout=60)
    assert not (run_dir / LOCK).exists()
    again = holder(run_dir)
    assert again.stdout.readline() == "locked\n"
    again.kill()  # kill -9: the lock stays, naming a process that is gone
    again.wait()
    assert json.loads((run_dir / LOCK).read_text())["pid"] == again.pid
    lock_run_dir(run_dir)
    assert f"taking over the lock of process {again.pid} on " in capsys.readouterr().out
    assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()
    lock_run_dir(run_dir)  # again in the same process: nothing changes
    unlock_run_dir(run_dir)
    assert not (run_dir / LOCK).exists()


def write_lock(run_dir: Path, **holder) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK).write_text(json.dumps({"host": socket.gethostname(), "start": None,
                                            "token": "t", **holder}))


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    # The recorded PID runs, but it started at another time than the lock's owner.
    write_lock(tmp_path, pid=os.getppid(), start=1)
    lock_run_dir(tmp_path)
    unlock_run_dir(tmp_path)


def test_another_hosts_lock_says_how_to_remove_it(tmp_path):
    write_lock(tmp_path, pid=1, host="elsewhere")
    with pytest.raises(RunLockError) as info:
        lock_run_dir(tmp_path)
    assert str(info.value).endswith(f"in use by process 1 on host elsewhere ({tmp_path / LOCK}); "
                                    f"wait for it to finish; if it no longer runs, delete "
                                    f"{tmp_path / LOCK}, or pass another --run-dir")


def test_an_unreadable_lock_counts_as_held(tmp_path):
    (tmp_path / LOCK).write_text('{"pid": 12')  # being written this instant, or damaged
    with pytest.raises(RunLockError, match="another process \\(its lock file cannot be read\\)"):
        lock_run_dir(tmp_path)


def test_the_run_directory_rules_ignore_the_lock(tmp_path):
    write_lock(tmp_path, pid=os.getpid())  # a new run killed before its manifest
    (tmp_path / "checkpoints").mkdir()  # made empty by then
    assert run_dir_state(tmp_path, trainer="t", config={}, weights={}, data_sha256={},
                         restart=False) == NEW
    (tmp_path / "history.csv").write_text("x")
    clear_run_dir(tmp_path)  # --restart keeps the lock of the run that clears
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK]


def test_compare_reports_a_run_directory_in_use(held, capfd):
    run_dir, owner = held
    command = [sys.executable, "-c", HOLDER, str(run_dir)]  # refused as a trainer would be
    outcome = run_trainers({run_dir.name: command}, run_dir.parent)
    assert outcome == {"run": "failed (run directory in use by another process)"}
    err = capfd.readouterr().err
    assert f"error: --run-dir {run_dir.resolve()}: in use by process {owner.pid}" in err
    assert f"[compare] run: NOT RUN: {run_dir} is in use by another process" in err
