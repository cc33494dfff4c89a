"""benchmarks/epoch_peer.py: real epochs side by side, here on the embedded sample (the
PyTorch peer only where torch, transformers, peft and accelerate are installed)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.data.watson import SAMPLE_DATA_DIR

REPO = Path(__file__).resolve().parents[2]
PEER = all(importlib.util.find_spec(m) for m in ("torch", "transformers", "peft", "accelerate"))


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("epoch_peer")
    command = [sys.executable, "-m", "benchmarks.epoch_peer", "--runs",
               "jax_lora,jax_lora_cached,jax_qlora_nf4,torch_peft", "--data-dir",
               str(SAMPLE_DATA_DIR), "--presets", "all-minilm-l6-v2", "--limit", "60",
               "--sequence-length", "64", "--out", str(out)]
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "epoch_peer.json").read_text()), (out / "epoch_peer.md").read_text()


def test_each_run_trained_one_epoch_on_the_same_rows(peer_run):
    doc, markdown = peer_run
    assert list(doc["runs"]) == ["all-minilm-l6-v2"]
    runs = doc["runs"]["all-minilm-l6-v2"]
    assert list(runs) == ["jax_lora", "jax_lora_cached", "jax_qlora_nf4", "torch_peft"]
    ran = {name: run for name, run in runs.items() if run["status"] == "ok"}
    assert set(ran) == {"jax_lora", "jax_lora_cached", "jax_qlora_nf4",
                        *(["torch_peft"] if PEER else [])}
    if not PEER:
        assert "not installed" in runs["torch_peft"]["reason"]
    assert len({run["split_fingerprint"] for run in ran.values()}) == 1
    for name, run in ran.items():
        assert run["examples"] == (42 // 16) * 16, name  # 42 training rows, last batch dropped
        assert run["train_s"] > 0 and run["examples_per_s"] > 0
        assert 0 <= run["val_accuracy"] <= 1 and run["peak_rss_mb"] > 100
        low, high = run["val_interval"]
        assert low < run["val_accuracy"] < high and run["val_rows"] == 18
        assert 1 / 3 <= run["majority"] < 1
        assert 0 <= run["padding"]["padding_fraction"] < 1
        assert run["padding"]["mean_padded_length"] <= 64
    # The first run compiled every program, the same run again read them all from its cache,
    # and NF4 (other programs) compiled its own.
    first, again = ran["jax_lora"]["programs"], ran["jax_lora_cached"]["programs"]
    assert first["compiled"] > 0 and first["loaded"] == 0
    assert (again["compiled"], again["loaded"]) == (0, first["compiled"])
    assert ran["jax_qlora_nf4"]["programs"]["compiled"] > 0
    float32, nf4 = (ran[n]["frozen_kernel_bytes"] for n in ("jax_lora", "jax_qlora_nf4"))
    assert float32["stored"] == float32["float32"] and nf4["stored"] < 0.15 * nf4["float32"]
    assert doc["command"] in markdown and "JAX LoRA, base NF4" in markdown


@pytest.mark.parametrize("flags, problem", [(["--runs", "nope"], "--runs nope: unknown nope"),
                                            (["--runs", "jax_lora_cached,jax_lora"],
                                             "list jax_lora before it"),
                                            (["--lr", "0"], "--lr 0.0: must be > 0"),
                                            (["--limit", "0"], "--limit 0: must be >= 1"),
                                            (["--sequence-length", "2"],
                                             "--sequence-length 2: must lie in")])
def test_bad_flags_exit_2_and_write_nothing(tmp_path, flags, problem):
    done = subprocess.run([sys.executable, "-m", "benchmarks.epoch_peer", *flags,
                           "--data-dir", str(SAMPLE_DATA_DIR), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and problem in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not any(tmp_path.iterdir())
