"""compare and the study launch each trainer as `python <repo>/<trainer>/train.py`: the script
must import the packages of its own checkout, whatever else is importable (an editable install
of another checkout, PYTHONPATH). The study's TF runs once imported another checkout's code."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import trainer_command

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("trainer", ["tf_baseline", "jax_lora"])
def test_a_trainer_script_imports_its_own_checkout(tmp_path, trainer):
    other = tmp_path / "other_checkout"  # first on the path after the script's own folder
    for package in ("shared", "tf_baseline", "jax_lora"):
        (other / package).mkdir(parents=True)
        (other / package / "__init__.py").write_text(
            "raise ImportError('imported from the other checkout')\n")
    env = {**os.environ, "PYTHONPATH": str(other)}
    result = subprocess.run(trainer_command(trainer, "--help"),
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert "other checkout" not in result.stderr
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:")
