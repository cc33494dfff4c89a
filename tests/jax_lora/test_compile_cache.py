"""jax_lora's persistent compilation cache (jax_lora/compile_cache.py): a repeated run loads
every program the first one compiled, the manifest says how many of each, and the
environment can move the cache or turn it off."""

import json
import subprocess
from pathlib import Path

import jax

from jax_lora import compile_cache
from tests.helpers import REPO, trainer_command
from tests.jax_lora.trainer_process import RUN_FLAGS


def run(preset: Path, run_dir: Path, env: dict, *more) -> dict:
    flags = [*RUN_FLAGS, "--epochs", "1", *more]  # the last --epochs wins
    done = subprocess.run(trainer_command("jax_lora", "--preset", preset, "--run-dir", run_dir,
                                          *flags),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((run_dir / "manifest.json").read_text())["compilation"]


def test_a_repeated_run_loads_every_program_instead_of_compiling(tiny_hf_preset, tmp_path,
                                                                 run_env):
    """Also when the second run has another seed, learning rate and schedule: those are
    arguments of the compiled step (the dropout key, the optimizer state), not constants in it,
    so a learning-rate search or a study's seeds compile each step once."""
    env = {**run_env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache")}
    first = run(tiny_hf_preset, tmp_path / "first", env)
    second = run(tiny_hf_preset, tmp_path / "second", env, "--seed", "3", "--lr", "1e-3",
                 "--schedule", "linear", "--warmup-steps", "2")
    assert first["cache"] == second["cache"] == str(tmp_path / "cache")
    # The first run compiled its train and evaluation steps (one per batch shape) ...
    assert first["compiled"] >= 2 and first["loaded"] == 0
    # ... and the second, another run directory of the same recipe, compiled none of them.
    assert {**second, "seconds": None} == {**first, "compiled": 0, "loaded": first["compiled"],
                                           "seconds": None}
    # Loading took time only in the second; both traced and lowered every program.
    assert first["seconds"]["of_which_loading"] == 0 < second["seconds"]["of_which_loading"]
    for seconds in (first["seconds"], second["seconds"]):
        assert seconds["tracing"] > 0 and seconds["lowering"] > 0
        assert seconds["compiling_or_loading"] >= seconds["of_which_loading"]


def test_the_environment_turns_the_cache_off(tiny_hf_preset, tmp_path, run_env):
    env = {**run_env, "JAX_COMPILATION_CACHE_DIR": ""}
    assert run(tiny_hf_preset, tmp_path / "run", env) == {"cache": None}


def test_the_default_folder_is_per_machine_kind(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    folder = compile_cache.default_dir()
    assert folder.parent == tmp_path / "watson-peft" / "jax-compile"
    assert folder.name == compile_cache.machine_key() and len(folder.name) == 16
    # The key changes with what a compiled program depends on (here: jax's version).
    monkeypatch.setattr(jax, "__version__", "0.0.0-other")
    assert compile_cache.machine_key() != folder.name
