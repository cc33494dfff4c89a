"""Checkpoints round-trip exactly and rotate; the adapter artifact rebuilds the trained model."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_lora.adapter import ADAPTER_META, ADAPTER_WEIGHTS, load_adapter, save_adapter
from jax_lora.checkpoint import CHECKPOINTS, Checkpoints, replace_arrays
from jax_lora.lora import LoraConfig, trainable_filter
from jax_lora.weights import load_pretrained
from shared.runs.reuse import RunStateError
from tests.jax_lora.helpers import leaves_equal, trained_like_state


def test_save_restore_is_exact_and_keeps_the_newest(tmp_path):
    trainable, opt_state = trained_like_state()
    checkpoints = Checkpoints(tmp_path, keep=2)
    for step in (2, 4, 6):
        checkpoints.save(step, trainable, opt_state, {"step": step, "history": [{"epoch": 1}]})
    assert checkpoints.manager.all_steps() == [4, 6]
    fresh_trainable, fresh_opt_state = jax.tree.map(jnp.zeros_like, (trainable, opt_state))
    restored, restored_opt_state, meta = checkpoints.restore(fresh_trainable, fresh_opt_state)
    checkpoints.close()
    assert leaves_equal(restored, trainable) and leaves_equal(restored_opt_state, opt_state)
    assert meta == {"step": 6, "history": [{"epoch": 1}]}
    # A save that died half-way leaves only orbax's temporary folder, which is not a checkpoint.
    (tmp_path / CHECKPOINTS / "8.orbax-checkpoint-tmp-123").mkdir()
    assert Checkpoints(tmp_path).latest_step() == 6


def test_a_checkpoint_of_another_optimizer_layout_is_one_line_naming_the_way_out(tmp_path):
    """Intact files (their checksums hold) of another layout, as an older jax_lora's optimizer
    state: not damage to fall back from, but a run to finish with its own version or restart."""
    trainable, opt_state = trained_like_state()
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(2, trainable, opt_state, {"step": 2})
    checkpoints.close()
    other_layout = (opt_state, jnp.zeros(3))
    with pytest.raises(RunStateError, match=r"^checkpoint .*/2 holds arrays in another layout "
                                            r".*code_version.*--restart"):
        Checkpoints(tmp_path).restore_latest(trainable, other_layout)
    assert Checkpoints(tmp_path).latest_step() == 2  # nothing moved aside


def test_replace_arrays_rejects_a_foreign_adapter():
    trainable, _ = trained_like_state()
    names = {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(trainable)}
    with pytest.raises(ValueError, match="missing"):
        replace_arrays(trainable, {k: v for k, v in names.items() if "head" not in k}, "x")
    wrong = {**names, "head.bias": np.zeros(7, np.float32)}
    with pytest.raises(ValueError, match="head.bias has shape"):
        replace_arrays(trainable, wrong, "x")


def test_adapter_reproduces_the_model_on_the_base(tiny_hf_preset, tmp_path):
    # A frozen head is in the adapter too: it is not in the base, and a seed may not repeat it.
    lora = LoraConfig(rank=4, targets=("query", "value", "ffn_in"), train_head=False)
    trained = load_pretrained(str(tiny_hf_preset), lora, seed=3)
    ids = np.array([[2, 10, 11, 12, 3, 13, 14, 3]], np.int32)
    segments = np.array([[0, 0, 0, 0, 0, 1, 1, 1]], np.int32)
    args = (ids, segments, np.ones_like(ids))
    base_logits = trained.model(*args)
    # Stand-in for training: move every adapter leaf (B starts at 0, so A·B would be 0).
    state = nnx.state(trained.model, trainable_filter(lora))
    nnx.update(trained.model, jax.tree.map(lambda v: v + 0.05, state))
    assert not np.allclose(base_logits, trained.model(*args))
    save_adapter(tmp_path, trained.model, trained.source, method="lora")
    meta = json.loads((tmp_path / ADAPTER_META).read_text())
    assert meta["base"]["sha256"] == trained.source["sha256"]
    assert (tmp_path / ADAPTER_WEIGHTS).stat().st_size < 60_000  # the adapter, not the base

    loaded = load_adapter(tmp_path)  # with seed 0: the head must come from the file
    np.testing.assert_array_equal(loaded.model(*args), trained.model(*args))

    meta["base"]["sha256"] = "0" * 64
    (tmp_path / ADAPTER_META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="sha256"):
        load_adapter(tmp_path)
