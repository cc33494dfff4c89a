"""load_run + predict on real run directories: one compare job on the tiny random BERT makes a
tf_baseline full fine-tune and jax_lora LoRA and probe runs; each must reproduce its own
predictions.csv in Flax (for the TF run, the TF -> Flax check)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from jax_lora.inference import RunLoadError, load_run, predict
from shared.runs.run_dir import read_run
from tests.jax_lora.helpers import recorded_gap

REPO = Path(__file__).resolve().parents[2]
RUNS = ("tf_full", "jax_lora", "jax_probe")


@pytest.fixture(scope="module")
def runs(compare_runs):
    return compare_runs


@pytest.mark.parametrize("name", RUNS)
def test_a_loaded_run_reproduces_its_validation_predictions(runs, name):
    run = read_run(runs / name)
    loaded = load_run(runs / name)
    reproduced = recorded_gap(loaded, run)
    out, val, expected = reproduced.out, reproduced.val, reproduced.expected
    print(f"{name}: {loaded.weights}; max |dp| vs predictions.csv {reproduced.gap:.1e}")
    assert out["probabilities"].dtype == np.float32 and reproduced.gap <= 1e-5
    # The check can fail: the run's probabilities vary far more than the tolerance.
    assert np.ptp(expected, axis=0).max() > 1e-3
    length = 64 if name == "tf_full" else 32  # compare's tf_full recipe sets 64
    assert loaded.sequence_length == length
    assert all(out[k].shape == (len(val), length) and out[k].dtype == np.int32
               for k in ("token_ids", "segment_ids", "padding_mask"))
    assert ("adapter (" in loaded.weights) == (name != "tf_full")


def test_attention_maps_are_softmax_rows_over_real_tokens(runs):
    loaded = load_run(runs / "jax_lora")
    premises, hypotheses = ["A man plays the guitar.", "Hello"], ["Someone makes music.", "Hi"]
    plain = predict(loaded, premises, hypotheses)
    out = predict(loaded, premises, hypotheses, attention_maps=True)
    config = loaded.model.config
    maps, mask = out["attention_maps"], out["padding_mask"].astype(bool)
    assert maps.shape == (config.num_layers, 2, config.num_heads, 32, 32)
    assert maps.dtype == np.float32
    real_rows = np.broadcast_to(mask[None, :, None, :], maps.shape[:-1])
    np.testing.assert_allclose(maps.sum(-1)[real_rows], 1.0, atol=1e-5)
    assert np.all(maps[np.broadcast_to(~mask[None, :, None, None, :], maps.shape)] == 0)
    assert mask[1].sum() < mask[0].sum()  # the short pair is padded
    np.testing.assert_allclose(out["probabilities"], plain["probabilities"], atol=1e-6)


def test_tf_preset_holds_the_head_in_task_weights_and_the_backbone_beside(runs):
    """What load_run reads: task.weights.h5 has the head (Dense 'logits') and the compiled
    optimizer's scalars, no backbone copy; model.weights.h5 has the backbone."""
    with h5py.File(runs / "tf_full" / "preset" / "task.weights.h5") as h5:
        datasets = {}
        h5.visititems(lambda name, item: datasets.update(
            {name: item.shape} if isinstance(item, h5py.Dataset) else {}))
        assert h5["layers/dense/vars"].attrs["name"] == "logits"
    assert datasets.pop("layers/dense/vars/0") == (32, 3)
    assert datasets.pop("layers/dense/vars/1") == (3,)
    assert all(name.startswith("optimizer/") and shape == () for name, shape in datasets.items())


def copy_run(runs, name, tmp_path):
    return shutil.copytree(runs / name, tmp_path / name,
                           ignore=shutil.ignore_patterns("checkpoints"))


def edit_json(path, **fields):
    """Set fields of a JSON file; base__preset means ["base"]["preset"]."""
    data = json.loads(path.read_text())
    for key, value in fields.items():
        *parents, leaf = key.split("__")
        target = data
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    path.write_text(json.dumps(data))


def refused(path, then: str):
    """pytest.raises(RunLoadError) whose message names `path`, then matches `then`."""
    return pytest.raises(RunLoadError, match=re.escape(str(path)) + then)


def test_unfinished_or_foreign_folders_are_refused_with_their_path(runs, tmp_path):
    run = copy_run(runs, "jax_probe", tmp_path)
    edit_json(run / "manifest.json", status="running")
    with refused(run, r": run not finished \(status running\); finish it or pick another"):
        load_run(run)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with refused(tmp_path / "notes", ": no manifest.json"):
        load_run(tmp_path / "notes")


def test_a_jax_run_without_its_adapter_or_base_is_refused(runs, tmp_path):
    run = copy_run(runs, "jax_probe", tmp_path)
    meta = run / "adapter" / "adapter.json"
    base = json.loads(meta.read_text())["base"]["preset"]
    edit_json(meta, base__preset=str(tmp_path / "moved"))
    with refused(tmp_path / "moved", " cannot be loaded .*; put the base weights back there"):
        load_run(run)
    edit_json(meta, base__preset=base, base__sha256="0" * 64)
    with refused(run, ": cannot load its adapter: .*sha256 0000"):
        load_run(run)
    shutil.rmtree(run / "adapter")
    with refused(run / "adapter", ": missing"):
        load_run(run)


@pytest.mark.parametrize("missing", ["preset/task.weights.h5", "preset"])
def test_a_tf_run_without_its_preset_is_refused(runs, tmp_path, missing):
    run = copy_run(runs, "tf_full", tmp_path)
    target = run / missing
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with refused(run / "preset", r"/\S+: missing; .*pick another run"):
        load_run(run)


def test_a_tf_preset_whose_task_weights_hold_no_head_is_refused(runs, tmp_path):
    run = copy_run(runs, "tf_full", tmp_path)
    shutil.copy(run / "preset" / "model.weights.h5", run / "preset" / "task.weights.h5")
    with refused(run / "preset", r": cannot be loaded \(.*no head bias or kernel"):
        load_run(run)


def test_loading_and_predicting_a_tf_run_never_imports_tensorflow(runs):
    """The app's process stays JAX-only (and its memory free of TensorFlow's)."""
    script = ("import sys; from jax_lora.inference import load_run, predict; "
              f"predict(load_run({str(runs / 'tf_full')!r}), ['a'], ['b'], attention_maps=True); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] in "
              "('tensorflow', 'keras', 'keras_hub', 'keras_nlp')))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
