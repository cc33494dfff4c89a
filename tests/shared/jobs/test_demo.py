"""The demo's JAX LoRA recipe learns on the embedded sample: it beats the trivial baselines.

Runs only jax_lora with compare's own command line (the whole demo is too long for CI)."""

import json
import subprocess

import pytest

from shared.evaluation.evaluate import evaluate
from shared.jobs.compare import DEMO_PRESET, DEMO_RECIPES, REPO, parse_args, trainer_commands


@pytest.mark.slow
def test_jax_lora_demo_recipe_beats_chance_and_the_majority_class(tmp_path):
    from shared.runs.presets import PresetError, preset_kind

    try:
        preset_kind(DEMO_PRESET)  # the offline demo model, which setup builds
    except PresetError as err:
        pytest.skip(str(err))
    args = parse_args(["--out", str(tmp_path), "--quiet"])
    args.data_dir, args.preset = None, DEMO_PRESET
    command = trainer_commands(args)["jax_lora"]
    assert all(flag in command for flag in DEMO_RECIPES["jax_lora"])
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    result = evaluate([tmp_path / "jax_lora"], tmp_path / "report")
    run, baselines = result["runs"][0], result["baselines"]
    assert result["n_val"] == 280  # the sample's Kaggle split
    assert run["verdict"]["chance"] == "above", run["metrics"]["accuracy_ci"]
    assert run["metrics"]["accuracy"] > baselines["majority"]["accuracy"]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["runs"][0]["verdict"] == run["verdict"]
