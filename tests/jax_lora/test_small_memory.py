"""The levers for small memories: a quantized frozen base (--base-dtype), bfloat16 matmuls
(--compute-dtype) and gradient accumulation (--accumulate)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy
from flax import nnx

from jax_lora.adapter import ADAPTER, ADAPTER_WEIGHTS, load_adapter
from jax_lora.config import TrainConfig, parse_config
from jax_lora.input_pipeline import encode
from jax_lora.lora import (LORA_TARGETS, LoraConfig, LoRALinear, init_dora_magnitudes, is_plain,
                           merge_lora, trainable_filter)
from jax_lora.models import BertClassifier, set_compute_dtype
from jax_lora.optim import make_optimizer, split_trainable, trainable_mask
from jax_lora.quant import quantize_base, stored_bytes
from jax_lora.quant_codec import (NF4_BLOCK, NF4_LEVELS, QuantCodes, QuantScales, dequantize,
                                  quantize)
from jax_lora.steps import TrainState, make_accumulated_step, make_train_step
from jax_lora.weights import load_pretrained
from shared.data.watson import SAMPLE_DATA_DIR, load_train
from shared.runs.presets import PresetError, minilm_dir
from shared.runs.run_dir import MANIFEST, PROB_COLUMNS, read_run

from shared.data.spec import load
from tests.jax_lora.helpers import inputs, logits, randomize_adapters
from tests.jax_lora.trainer_process import RUN_FLAGS, train


HALF_GAP = float(np.diff(NF4_LEVELS).max()) / 2


@pytest.fixture(scope="module")
def minilm():
    try:
        return load_pretrained(str(minilm_dir()), LoraConfig())
    except PresetError as error:
        pytest.skip(str(error))


def minilm_kernels(pretrained) -> dict:
    return {"/".join(map(str, path)): np.asarray(module.kernel.get_value())
            for path, module in nnx.iter_modules(pretrained.model)
            if isinstance(module, LoRALinear)}


# ---------------------------------------------------------------- quantize -> dequantize

def test_int8_error_is_half_a_step_of_its_column(minilm):
    worst = 0.0
    for name, kernel in minilm_kernels(minilm).items():
        codes, scales = quantize(kernel, "int8")
        assert codes.dtype == np.int8 and codes.shape == kernel.shape
        assert scales.shape == (kernel.shape[1],)
        error = np.abs(np.asarray(dequantize(codes, scales, "int8", kernel.shape)) - kernel)
        assert (error <= scales[None, :] / 2 * (1 + 1e-5)).all(), name
        worst = max(worst, float((error / np.abs(kernel).max(axis=0)).max()))
    print(f"int8 on MiniLM: worst error / column absmax {worst:.2e} (bound 1/254 = 3.9e-3)")


def test_nf4_picks_the_nearest_level_of_each_block(minilm):
    relative = []
    for name, kernel in minilm_kernels(minilm).items():
        codes, scales = quantize(kernel, "nf4")
        assert codes.dtype == np.uint8 and codes.size == kernel.size // 2  # two codes a byte
        assert scales.size == kernel.size // NF4_BLOCK
        blocks = kernel.T.reshape(-1, NF4_BLOCK)  # torch's [out, in] layout, as bitsandbytes
        nibbles = np.stack([codes >> 4, codes & 15], axis=-1).reshape(blocks.shape)
        normed = blocks / scales[:, None]
        distance = np.abs(normed[..., None] - NF4_LEVELS)  # to each of the 16 levels
        chosen = np.take_along_axis(distance, nibbles[..., None].astype(int), -1)[..., 0]
        assert (chosen <= distance.min(axis=-1) + 1e-6).all(), name
        assert np.allclose(np.abs(blocks).max(axis=1), scales)
        restored = np.asarray(dequantize(codes, scales, "nf4", kernel.shape))
        np.testing.assert_allclose(restored.T.reshape(blocks.shape),
                                   NF4_LEVELS[nibbles] * scales[:, None], rtol=1e-6)
        # The error is at most half the widest gap between levels (0.3038, from -1 to -0.6962).
        assert (np.abs(restored - kernel).T.reshape(blocks.shape)
                <= HALF_GAP * scales[:, None] + 1e-7).all(), name
        relative.append(np.linalg.norm(restored - kernel) / np.linalg.norm(kernel))
    print(f"nf4 on MiniLM: relative Frobenius error {min(relative):.3f}..{max(relative):.3f}")
    assert max(relative) < 0.15


def test_nf4_handles_sizes_that_are_no_multiple_of_the_block():
    kernel = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    codes, scales = quantize(kernel, "nf4")
    assert codes.size == 32 and scales.size == 1  # 35 weights padded to one block of 64
    restored = np.asarray(dequantize(codes, scales, "nf4", kernel.shape))
    assert restored.shape == kernel.shape
    assert np.abs(restored - kernel).max() <= HALF_GAP * np.abs(kernel).max() + 1e-7


# ---------------------------------------------------------------- the quantized model

@pytest.mark.parametrize("base_dtype", ["bfloat16", "int8", "nf4"])
def test_quantized_base_is_frozen_stores_less_and_merges_to_float32(base_dtype, tiny_config):
    config = dataclasses.replace(tiny_config, dropout=0.0)
    model = BertClassifier(config, lora=LoraConfig(rank=2, targets=("query", "value")),
                           rngs=nnx.Rngs(0))
    quantize_base(model, base_dtype)
    randomize_adapters(model)
    stored = {path: np.asarray(v.get_value())
              for path, v in nnx.to_flat_state(nnx.state(model, nnx.Any(QuantCodes, QuantScales)))}
    assert stored and not is_plain(model)
    sizes = stored_bytes(model)
    per_weight = {"bfloat16": 2, "int8": 1, "nf4": 0.5}[base_dtype]
    assert per_weight * sizes["float32"] / 4 <= sizes["stored"] < 0.6 * sizes["float32"]

    graphdef, params = nnx.split(model)
    trainable = trainable_filter(model.lora)
    mask = trainable_mask(params, trainable)
    tx = make_optimizer(TrainConfig(lr=1e-2), params, mask, total_steps=3)
    state = TrainState(jnp.int32(0), params, tx.init(params))
    trained = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, trainable)))
    moments = sum(leaf.size for leaf in jax.tree.leaves(state.opt_state) if leaf.ndim)
    assert moments == 2 * trained  # Adam's m and v for the trainable leaves, nothing else
    step = make_train_step(graphdef, tx, trainable, jax.random.key(0))
    batch = {**inputs(config.vocab_size, rows=4, length=16),
             "labels": np.array([0, 1, 2, 1], np.int32), "weights": np.ones(4, np.float32)}
    for _ in range(3):
        state, _ = step(state, batch)
    nnx.update(model, state.params)
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Any(QuantCodes, QuantScales))):
        assert np.array_equal(np.asarray(variable.get_value()), stored[path]), path

    merged = merge_lora(model)
    kernels = [v.get_value() for path, v in nnx.to_flat_state(nnx.state(merged, nnx.Param))
               if path[-1] == "kernel"]
    assert is_plain(merged) and all(k.dtype == jnp.float32 for k in kernels)
    np.testing.assert_allclose(logits(merged, batch), logits(model, batch), atol=1e-5)


def test_loading_onto_a_quantized_base_equals_quantizing_after(tiny_hf_preset):
    """load_pretrained quantizes each kernel as it is read; the model is the one quantized
    after a float32 load, and DoRA (m = the quantized kernels' norms) starts at that base."""
    lora = LoraConfig(rank=2, targets=LORA_TARGETS, dora=True)
    pretrained = load_pretrained(str(tiny_hf_preset), lora, seed=1, base_dtype="nf4")
    after = load_pretrained(str(tiny_hf_preset), lora, seed=1)
    quantize_base(after.model, "nf4")
    init_dora_magnitudes(after.model)
    assert stored_bytes(pretrained.model) == stored_bytes(after.model)
    batch = inputs(pretrained.config.vocab_size)
    ours = logits(pretrained.model, batch)
    assert np.abs(ours - logits(after.model, batch)).max() <= 1e-6
    base = merge_lora(pretrained.model)  # m / ‖W‖ = 1 folded in: the NF4 base itself
    assert np.abs(ours - logits(base, batch)).max() <= 1e-5


@pytest.mark.parametrize("base_dtype", ["bfloat16", "int8", "nf4"])
@pytest.mark.parametrize("dora", [False, True])
def test_stored_matmul_gradients_equal_the_dequantized_float32_models(base_dtype, dora,
                                                                      tiny_config):
    """The custom backward pass (the kernel dequantized again, not kept) gives the gradients
    of the float32 model whose kernels are the dequantized ones."""
    config = dataclasses.replace(tiny_config, dropout=0.0)
    lora = LoraConfig(rank=2, targets=("query", "value", "ffn_in"), dora=dora)
    stored = BertClassifier(config, lora=lora, rngs=nnx.Rngs(0))
    quantize_base(stored, base_dtype)
    randomize_adapters(stored)
    plain = BertClassifier(config, lora=lora, rngs=nnx.Rngs(0))
    for (_, ours), (_, theirs) in zip(nnx.iter_modules(stored), nnx.iter_modules(plain)):
        if isinstance(ours, LoRALinear):
            theirs.kernel[...] = ours.base_kernel()
    nnx.update(plain, nnx.state(stored, trainable_filter(lora)))
    batch = inputs(config.vocab_size)

    def grads(model):
        graphdef, trained, rest = nnx.split(model, trainable_filter(lora), ...)
        loss = lambda t: jnp.sum(nnx.merge(graphdef, t, rest)(  # noqa: E731
            batch["token_ids"], batch["segment_ids"], batch["padding_mask"]) ** 2)
        return jax.tree.leaves(jax.grad(loss)(trained))

    ours, theirs = grads(stored), grads(plain)
    assert len(ours) == len(theirs) and max(np.abs(t).max() for t in theirs) > 0
    assert max(np.abs(o - t).max() for o, t in zip(ours, theirs)) <= 1e-6


# ---------------------------------------------------------------- bfloat16 compute

def test_bfloat16_compute_stays_close_to_float32_on_minilm(minilm):
    frame = load_train(SAMPLE_DATA_DIR).iloc[:32]
    encoded = encode(minilm.tokenizer, frame, 128)
    batch = {name: getattr(encoded, name) for name in ("token_ids", "segment_ids",
                                                       "padding_mask")}
    model = minilm.model
    float32 = logits(model, batch)
    set_compute_dtype(model, "bfloat16")
    try:
        bfloat16 = logits(model, batch)
    finally:
        set_compute_dtype(model, "float32")
    gap = np.abs(bfloat16 - float32).max()
    print(f"bfloat16 compute on MiniLM, 32 sample rows: max |logit gap| {gap:.2e} "
          f"(logits up to {np.abs(float32).max():.2f})")
    assert 0 < gap <= 0.05
    assert (bfloat16.argmax(1) == float32.argmax(1)).mean() >= 0.9


# ---------------------------------------------------------------- gradient accumulation

def test_k_micro_batches_give_the_gradient_of_their_union(tiny_config):
    """SGD at rate 1 moves each trainable leaf by minus its gradient: three micro-batches of
    other lengths (dynamic padding) and sizes must move it as one batch of all their rows."""
    config = dataclasses.replace(tiny_config, dropout=0.0)
    model = BertClassifier(config, lora=LoraConfig(rank=2, targets=LORA_TARGETS),
                           rngs=nnx.Rngs(0))
    randomize_adapters(model)
    graphdef, params = nnx.split(model)
    trainable = trainable_filter(model.lora)
    tx = optax.partition({"trainable": optax.sgd(1.0), "frozen": optax.set_to_zero()},
                         jax.tree.map(lambda t: "trainable" if t else "frozen",
                                      trainable_mask(params, trainable)))
    union = {**inputs(config.vocab_size, rows=10, length=24, seed=3),
             "labels": np.arange(10, dtype=np.int32) % 3, "weights": np.ones(10, np.float32)}
    parts = []
    for rows in (slice(0, 4), slice(4, 8), slice(8, 10)):  # 4 + 4 + a short 2
        part = {k: v[rows] for k, v in union.items()}
        longest = int(part["padding_mask"].sum(1).max())
        parts.append({k: v[:, :longest] if v.ndim == 2 else v for k, v in part.items()})
    assert len({p["token_ids"].shape[1] for p in parts}) > 1

    def moved(state):
        return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                            split_trainable(state.params, trainable)[0],
                            split_trainable(params, trainable)[0])

    def start():  # a copy: the steps donate their state
        copied = jax.tree.map(jnp.array, params)
        return TrainState(jnp.int32(0), copied, tx.init(copied))
    whole, whole_metrics = make_train_step(graphdef, tx, trainable, jax.random.key(0))(
        start(), union)
    accumulated, metrics = make_accumulated_step(graphdef, tx, trainable, jax.random.key(0),
                                                 3)(start(), parts)
    expected, got = jax.tree.leaves(moved(whole)), jax.tree.leaves(moved(accumulated))
    assert max(np.abs(e).max() for e in expected) > 1e-3  # the step moved something
    gap = max(np.abs(e - g).max() for e, g in zip(expected, got))
    print(f"accumulated vs one batch: max gradient gap {gap:.2e}")
    assert gap <= 1e-6
    assert float(metrics["count"]) == 10
    np.testing.assert_allclose(float(metrics["loss_sum"]), float(whole_metrics["loss_sum"]),
                               rtol=1e-6)


def test_flags_are_checked():
    with pytest.raises(ValueError, match="--base-dtype nf4: --method full trains every"):
        parse_config(["--method", "full", "--base-dtype", "nf4"])
    with pytest.raises(ValueError, match="--accumulate 0: must be >= 1"):
        parse_config(["--accumulate", "0"])
    with pytest.raises(ValueError, match="--compute-dtype float16: choose one of"):
        parse_config(["--compute-dtype", "float16"])


# ---------------------------------------------------------------- whole runs

def test_qlora_run_records_its_levers_and_its_adapter_reloads_on_nf4(tiny_hf_preset, tmp_path,
                                                                    run_env):
    """A run with every lever on: the manifest says so, and the saved adapter, loaded back
    onto the NF4-stored base, predicts what the run predicted."""
    run_dir = tmp_path / "qlora"
    train(tiny_hf_preset, run_dir, "--base-dtype", "nf4", "--compute-dtype", "bfloat16",
          "--accumulate", "3", "--epochs", "1", env=run_env)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    assert manifest["model"]["base_dtype"] == "nf4"
    assert manifest["model"]["compute_dtype"] == "bfloat16"
    frozen = manifest["model"]["frozen_kernel_bytes"]
    assert frozen["stored"] < 0.15 * frozen["float32"]
    assert (manifest["accumulate"], manifest["global_batch"], manifest["effective_batch"]) == (
        3, 4, 12)
    assert manifest["steps"] == 42 // 12  # whole steps of 3 x 4 rows; 6 rows dropped
    pretrained = load_adapter(run_dir / ADAPTER)
    set_compute_dtype(pretrained.model, "bfloat16")
    val = load(parse_config(["--preset", str(tiny_hf_preset), *RUN_FLAGS]).data).val
    encoded = encode(pretrained.tokenizer, val, 32)
    ours = jax.nn.softmax(logits(pretrained.model, {
        name: getattr(encoded, name) for name in ("token_ids", "segment_ids", "padding_mask")}))
    recorded = read_run(run_dir).predictions[list(PROB_COLUMNS)].to_numpy()
    np.testing.assert_allclose(ours, recorded, atol=2e-3)  # bfloat16: other batch shapes


def test_accumulating_two_halves_equals_the_whole_batch(tiny_hf_preset, tmp_path, run_env):
    """From the command line, without dropout (whose masks depend on the micro-batch):
    --batch-per-device 2 --accumulate 2 trains the same steps on the same rows as
    --batch-per-device 4, to float rounding."""
    flags = ["--dropout", "0", "--epochs", "1", "--checkpoint-every", "0"]
    train(tiny_hf_preset, tmp_path / "whole", *flags, env=run_env)
    train(tiny_hf_preset, tmp_path / "halves", *flags, "--batch-per-device", "2",
          "--accumulate", "2", env=run_env)
    runs = {name: json.loads((tmp_path / name / MANIFEST).read_text())
            for name in ("whole", "halves")}
    assert runs["whole"]["steps"] == runs["halves"]["steps"] == 42 // 4
    weights = {name: safetensors.numpy.load_file(str(tmp_path / name / ADAPTER /
                                                     ADAPTER_WEIGHTS))
               for name in runs}
    assert weights["whole"].keys() == weights["halves"].keys()
    moved = 0.0
    for name, whole in weights["whole"].items():
        np.testing.assert_allclose(weights["halves"][name], whole, atol=2e-5, err_msg=name)
        moved = max(moved, float(np.abs(whole).max()))
    assert moved > 0  # the adapters trained


@pytest.mark.parametrize("child", ["lora", "dora"])
def test_probe_then_adapters_on_an_nf4_base(child, tiny_hf_preset, tmp_path, run_env):
    """Every method with a frozen base runs on a stored base: a probe, then LP->LoRA/DoRA from
    it (the child's frozen base is the same NF4 base; the probe's head is inherited)."""
    probe = tmp_path / "probe"
    train(tiny_hf_preset, probe, "--method", "probe", "--base-dtype", "nf4", "--epochs", "1",
          env=run_env)
    run_dir = tmp_path / child
    train(tiny_hf_preset, run_dir, "--method", child, "--base-dtype", "nf4", "--epochs", "1",
          "--init-from", str(probe), env=run_env)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    assert manifest["model"]["base_dtype"] == "nf4" and manifest["parent"]["method"] == "probe"
    assert sorted(manifest["parent"]["inherited"]) == ["head.bias", "head.kernel"]
    assert manifest["params"]["trainable"] < manifest["params"]["total"] / 10
