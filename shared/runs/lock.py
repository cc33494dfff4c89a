"""One process per run directory: run_dir/run.lock names the process that writes it.

Both trainers take the lock once every input is checked and before they write anything (a
bad-input exit leaves no folder behind), and release it when they exit; a second trainer on
the same --run-dir stops with one line naming the owner (exit code EXIT_LOCKED), so that two
runs never write the same checkpoints, manifest and outputs. The lock is a JSON file created
with O_CREAT | O_EXCL (atomic, also on NFS v3+): {"pid", "host", "start", "token"}. A lock
whose process is gone (a kill -9, a reboot) is taken over: on this host when its PID no
longer runs or runs another program (its /proc start time differs); a lock from another host
cannot be checked from here, and its message says how to remove it. A trainer that planned
its run while another one held the lock may find the run finished once it gets the lock;
it then resumes it, which recomputes what is there.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import uuid
from pathlib import Path

from shared.runs.reuse import RunStateError
from shared.runs.run_dir import LOCK

EXIT_LOCKED = 3  # a trainer refused because another process holds its run directory

_HELD: dict[Path, str] = {}  # lock path -> our token


class RunLockError(RunStateError):
    """The run directory is another live process's."""
    exit_code = EXIT_LOCKED


def lock_run_dir(run_dir: Path) -> None:
    """Take run_dir/run.lock for this process (creating run_dir), or raise RunLockError naming
    the owner. Taking it again in the same process is a no-op; it is released by
    unlock_run_dir or at exit."""
    path = Path(run_dir).resolve() / LOCK
    if path in _HELD:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "start": _start_time(os.getpid()), "token": uuid.uuid4().hex}
    for _ in range(3):  # a stale lock taken over, then a race lost: try again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None or not _is_stale(holder):
                raise RunLockError(_refusal(path, holder)) from None
            _take_over(path, holder)
            print(f"{path.parent}: taking over the lock of process {holder['pid']} on "
                  f"{holder['host']}, which no longer runs", flush=True)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(owner, handle)
            handle.flush()
            os.fsync(handle.fileno())
        _HELD[path] = owner["token"]
        return
    raise RunLockError(_refusal(path, _read(path)))


def unlock_run_dir(run_dir: Path) -> None:
    """Release the lock if this process holds it (and it is still ours)."""
    path = Path(run_dir).resolve() / LOCK
    token = _HELD.pop(path, None)
    if token is not None and (_read(path) or {}).get("token") == token:
        path.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    for path in list(_HELD):
        unlock_run_dir(path.parent)


def _read(path: Path) -> dict | None:
    """The holder recorded in the lock; None when it cannot be read (being written this
    instant, or damaged): then it counts as held."""
    try:
        holder = json.loads(path.read_text())
        return holder if {"pid", "host", "token"} <= set(holder) else None
    except FileNotFoundError:
        return {"pid": None, "host": None, "token": None}  # released since: stale, retry
    except (OSError, ValueError, TypeError):
        return None


def _is_stale(holder: dict) -> bool:
    if holder["pid"] is None:
        return True
    if holder["host"] != socket.gethostname():
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    start = holder.get("start")
    return start is not None and _start_time(int(holder["pid"])) not in (None, start)


def _take_over(path: Path, holder: dict) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile: it is renamed to a
    name of our own first (one renamer wins), and put back if it is not the one judged."""
    if holder["pid"] is None:
        return
    aside = path.with_name(f"{LOCK}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if (_read(aside) or {}).get("token") != holder["token"]:
        try:
            os.link(aside, path)  # not ours to remove: restore it (fails if a new one exists)
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _refusal(path: Path, holder: dict | None) -> str:
    if holder is None:
        who = "another process (its lock file cannot be read)"
    else:
        who = f"process {holder['pid']} on host {holder['host']}"
    here = holder is not None and holder["host"] == socket.gethostname()
    how = ("wait for it to finish or stop it" if here else
           f"wait for it to finish; if it no longer runs, delete {path}")
    return (f"--run-dir {path.parent}: in use by {who} ({path}); {how}, or pass another "
            f"--run-dir")
