"""Helpers that test files of several folders share: a trainer's command line as compare and
the study start it, and the kill -9 in the middle of a run that the resume tests begin with.
(A module, not a test file: tests/ has no __init__.py, and a test file imported by another
would run its module code twice.)"""

import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAINERS = ("tf_baseline", "jax_lora")


def trainer_command(trainer: str, *flags) -> list[str]:
    """`python <repo>/<trainer>/train.py FLAGS`: the script by its path, as users, compare and
    the study run it (not `python -m`), so that it imports its own checkout."""
    if trainer not in TRAINERS:
        raise ValueError(f"trainer {trainer!r}: choose one of {', '.join(TRAINERS)}")
    return [sys.executable, str(REPO / trainer / "train.py"), *map(str, flags)]


def kill_9_at_checkpoint(processes: list[subprocess.Popen], checkpoints: Path, step: int,
                         seconds: float = 240) -> None:
    """SIGKILL every process as soon as `checkpoints` (a folder of step-numbered checkpoints)
    holds one of `step` or later; gives up when one process has exited or `seconds` passed.
    The caller waits for the processes and asserts they died by the signal."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and all(p.poll() is None for p in processes):
        steps = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()]
        if steps and max(steps) >= step:
            for process in processes:
                process.send_signal(signal.SIGKILL)
            return
        time.sleep(0.01)
