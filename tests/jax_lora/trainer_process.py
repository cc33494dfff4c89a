"""The trainer as a user runs it: `python jax_lora/train.py ...` in a subprocess."""

import subprocess
from pathlib import Path

from shared.data.watson import SAMPLE_DATA_DIR
from tests.helpers import trainer_command

REPO = Path(__file__).resolve().parents[2]


def run_trainer(preset, run_dir, *flags, env, check=True) -> subprocess.CompletedProcess:
    """`python jax_lora/train.py --preset P --run-dir D FLAGS` in `env`; asserts it exited 0
    unless check=False."""
    done = subprocess.run(trainer_command("jax_lora", "--preset", preset, "--run-dir", run_dir,
                                          *flags),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


# A short run on the embedded sample: --limit 60 -> 42 training rows (Kaggle split), the
# remainder of a batch dropped.
RUN_FLAGS = ["--data-dir", str(SAMPLE_DATA_DIR), "--limit", "60", "--batch-per-device", "4",
             "--sequence-length", "32", "--epochs", "2", "--checkpoint-every", "2",
             "--keep-checkpoints", "2", "--quiet"]
STEPS_PER_EPOCH = 42 // 4


def train(preset, run_dir, *flags, env, check=True) -> subprocess.CompletedProcess:
    return run_trainer(preset, run_dir, *RUN_FLAGS, *flags, env=env, check=check)
