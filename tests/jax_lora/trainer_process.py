"""The trainer as a user runs it: `python jax_lora/train.py ...` in a subprocess."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_trainer(preset, run_dir, *flags, env, check=True) -> subprocess.CompletedProcess:
    """`python jax_lora/train.py --preset P --run-dir D FLAGS` in `env`; asserts it exited 0
    unless check=False."""
    done = subprocess.run([sys.executable, str(REPO / "jax_lora" / "train.py"), "--preset",
                           str(preset), "--run-dir", str(run_dir), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done
