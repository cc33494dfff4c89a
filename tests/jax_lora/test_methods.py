"""The methods behind --method (DoRA, full fine-tuning, the probe), rsLoRA, LoRA+, mean
pooling and LP→X (--init-from), on tiny random models and the tiny Hugging Face preset."""

import json
import signal
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from jax_lora.adapter import (ADAPTER, ADAPTER_WEIGHTS, init_from_parent, load_adapter,
                              read_parent)
from jax_lora.checkpoint import CHECKPOINTS
from jax_lora.config import METHODS, TrainConfig, parse_config
from jax_lora.lora import (LORA_TARGETS, LoraConfig, LoraParam, LoRALinear, column_norm,
                           merge_lora, trainable_filter)
from jax_lora.models import BertClassifier
from jax_lora.optim import make_optimizer, param_counts, trainable_mask
from jax_lora.steps import TrainState, make_train_step
from jax_lora.tuners import TUNERS
from jax_lora.weights import KERAS_NAMES, load_pretrained
from shared.runs.run_dir import MANIFEST, read_run
from tests.helpers import kill_9_at_checkpoint, trainer_command
from tests.jax_lora.helpers import inputs, logits, randomize_adapters
from tests.jax_lora.trainer_process import RUN_FLAGS, STEPS_PER_EPOCH, train

REPO = Path(__file__).resolve().parents[2]
ALL_TARGETS = LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS)


# ---------------------------------------------------------------- DoRA, rsLoRA

def test_dora_at_init_equals_the_base(tiny_hf_preset):
    base = load_pretrained(str(tiny_hf_preset), LoraConfig(targets=())).model
    dora = load_pretrained(str(tiny_hf_preset), LoraConfig(rank=4, targets=LORA_TARGETS,
                                                           dora=True)).model
    nnx.update(dora, nnx.state(base, nnx.PathContains("head")))
    layer = dora.layers[0].ffn_out
    np.testing.assert_array_equal(layer.lora_magnitude[...], column_norm(layer.kernel[...]))
    batch = inputs(dora.config.vocab_size)
    assert np.abs(logits(dora, batch) - logits(base, batch)).max() <= 1e-6


def test_merged_dora_equals_unmerged(tiny_hf_preset):
    lora = LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS, rslora=True, dora=True)
    model = load_pretrained(str(tiny_hf_preset), lora, seed=2).model
    randomize_adapters(model)
    batch = inputs(model.config.vocab_size)
    adapted = logits(model, batch)
    merged = merge_lora(model)
    assert not nnx.state(merged, LoraParam)  # plain kernels only
    assert np.abs(logits(merged, batch) - adapted).max() <= 1e-5
    base = load_pretrained(str(tiny_hf_preset), LoraConfig(targets=()), seed=2).model
    assert np.abs(logits(base, batch) - adapted).max() > 1e-2  # the adapters do something


def test_dora_norm_is_a_constant_in_the_backward_pass():
    """As PEFT and the DoRA paper (section 4.3): no gradient flows through ‖W + s·A·B‖."""
    layer = LoRALinear(8, 5, rank=2, scale=2.0, dora=True, rngs=nnx.Rngs(0))
    layer.lora_b[...] = 0.5 * jax.random.normal(jax.random.key(1), (2, 5))
    layer.lora_magnitude[...] = 1.0 + jnp.arange(5.0)
    x = jax.random.normal(jax.random.key(2), (3, 8))
    graphdef, state = nnx.split(layer)

    def ours(state):
        return jnp.sum(nnx.merge(graphdef, state)(x) ** 2)

    def by_hand(state, constant_norm: bool):
        w, b = state["kernel"].get_value(), state["bias"].get_value()
        a, bb, m = (state[k].get_value() for k in ("lora_a", "lora_b", "lora_magnitude"))
        adapted = w + 2.0 * a @ bb
        norm = column_norm(adapted)
        norm = jax.lax.stop_gradient(norm) if constant_norm else norm
        return jnp.sum((x @ (adapted * (m / norm)) + b) ** 2)

    grad_b = lambda f: jax.grad(f)(state)["lora_b"].get_value()  # noqa: E731
    np.testing.assert_allclose(grad_b(ours), grad_b(lambda s: by_hand(s, True)), rtol=1e-5)
    assert np.abs(grad_b(ours) - grad_b(lambda s: by_hand(s, False))).max() > 1e-3


def test_rslora_scales_by_the_square_root_of_the_rank():
    assert LoraConfig(rank=16, alpha=16.0).scale == 1.0
    assert LoraConfig(rank=16, alpha=16.0, rslora=True).scale == 4.0
    assert parse_config(["--rslora", "--rank", "4", "--alpha", "8"]).lora.scale == 4.0


# ---------------------------------------------------------------- optimizer groups, counts

def tiny_params(config: TrainConfig, tiny_config):
    abstract = nnx.state(nnx.eval_shape(lambda: BertClassifier(tiny_config, lora=config.lora,
                                                               rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.standard_normal(x.shape, np.float32), abstract)
    return params, trainable_mask(params, trainable_filter(config.lora, full=config.full))


def test_lora_plus_moves_b_and_vectors_at_ratio_times_lr(tiny_config):
    config = parse_config(["--lr", "1e-3", "--lora-plus-ratio", "16", "--targets", "query"])
    params, mask = tiny_params(config, tiny_config)
    tx = make_optimizer(config, params, mask, total_steps=10)
    grads = jax.tree.map(lambda x: np.ones_like(x), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    size = {".".join(map(str, path)): float(np.abs(v.get_value()).max())
            for path, v in nnx.to_flat_state(updates)}
    # Adam's first step moves every element by lr (gradient / |gradient|).
    assert size["layers.0.attention.query.lora_a"] == pytest.approx(1e-3, rel=1e-4)
    assert size["layers.0.attention.query.lora_b"] == pytest.approx(16e-3, rel=1e-4)
    assert size["head.kernel"] == pytest.approx(1e-3, rel=1e-4)
    assert size["head.bias"] == pytest.approx(16e-3, rel=1e-4)  # 1-D: PEFT's group B
    assert size["layers.0.attention.query.kernel"] == 0.0  # frozen


# The jax_lora/tuners families' counts: tests/jax_lora/tuners.
@pytest.mark.parametrize("method", [m for m in METHODS if m not in TUNERS])
def test_trainable_parameter_count_matches_the_formula(method, tiny_config):
    flags = ["--method", method] + (["--targets", "query,value,ffn_in", "--rank", "4"]
                                    if method in ("lora", "dora") else [])
    config = parse_config(flags)
    params, mask = tiny_params(config, tiny_config)
    h, inner, layers, classes = (tiny_config.hidden_dim, tiny_config.intermediate_dim,
                                 tiny_config.num_layers, 3)
    head = h * classes + classes
    lora = layers * 4 * ((h + h) + (h + h) + (h + inner))
    expected = {"lora": lora + head, "dora": lora + layers * (h + h + inner) + head,
                "probe": head, "full": sum(leaf.size for leaf in jax.tree.leaves(params))}
    assert param_counts(params, mask)["trainable"] == expected[method]


def test_method_flags_are_checked():
    assert TrainConfig(method="full").lr == 1e-5 and TrainConfig(method="full").adam_epsilon == 1e-7
    assert TrainConfig().lr == 2e-4 and TrainConfig(method="probe").lora.targets == ()
    assert TrainConfig(method="dora").lora.dora and not TrainConfig().lora.dora
    for flags, field in [(["--method", "probe", "--targets", "key"], "--targets"),
                         (["--targets", ""], "--method probe"),
                         (["--method", "full", "--rslora"], "--rslora"),
                         (["--method", "probe", "--lora-plus-ratio", "4"], "--lora-plus-ratio"),
                         (["--method", "adapters"], "--method"),
                         (["--pooling", "max"], "--pooling")]:
        with pytest.raises(ValueError, match=field):
            parse_config(flags)


# ---------------------------------------------------------------- full fine-tuning

def test_full_matches_tf_baseline_first_steps(keras_hub_reference):
    """tf_baseline's compile (Keras Adam, dropout off) and --method full on the same batch and
    weights. After one step every dense variable has moved as tf_baseline's did (Keras's
    epsilon placement, see optim.keras_epsilon). The embedding tables have not, by design:
    Keras's Adam on TensorFlow applies an embedding's sparse gradient (tf.IndexedSlices) one
    occurrence at a time — ops.square and ops.subtract act on the slices before scatter_add —
    so a row used k times in the batch gets v = (1-b2)·Σ g_i² instead of (1-b2)·(Σ g_i)², a
    first step larger than the learning rate; optax (like Keras on JAX and PyTorch) uses the
    dense gradient, and its first step is at most the learning rate."""
    root = keras_hub_reference["root"]
    reference = dict(np.load(root / "full_steps.npz"))
    tf_deltas = dict(np.load(root / "full_step1_deltas.npz"))
    lr = float(reference["lr"])
    config = TrainConfig(method="full", lr=lr)
    assert config.keras_epsilon and config.adam_epsilon == 1e-7
    model = load_pretrained(str(root / "tiny_keras_nodrop"), config.lora).model
    assert model.config.dropout == 0.0
    model.head.kernel[...] = reference["head_kernel"]
    model.head.bias[...] = reference["head_bias"]
    batch = {k: reference[k] for k in ("token_ids", "segment_ids", "padding_mask", "labels")}
    batch["weights"] = np.ones(len(batch["labels"]), np.float32)
    assert np.abs(logits(model, batch) - reference["logits"][0]).max() <= 1e-5
    graphdef, params = nnx.split(model)
    before = {path: np.array(v.get_value()) for path, v in nnx.to_flat_state(params)}
    tx = make_optimizer(config, params, trainable_mask(params, nnx.Param), total_steps=3)
    step = make_train_step(graphdef, tx, nnx.Param, jax.random.key(0))
    state = TrainState(jnp.int32(0), params, tx.init(params))
    gaps = []
    for index in range(1, len(reference["logits"])):
        state, _ = step(state, batch)
        if index == 1:
            after = {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state.params)}
        ours = logits(nnx.merge(graphdef, state.params), batch)
        gaps.append(float(np.abs(ours - reference["logits"][index]).max()))
    moved = [float(np.abs(step - reference["logits"][0]).max()) for step in reference["logits"][1:]]

    dense_gap, embedding_steps = 0.0, {}
    for name, tf_delta in tf_deltas.items():
        path = KERAS_NAMES.path(*name.rsplit("/", 1))  # keras-hub's name -> ours
        delta = (after[path] - before[path]).reshape(tf_delta.shape)
        if path[-1] == "embedding":
            embedding_steps[name] = (np.abs(tf_delta).max() / lr, np.abs(delta).max() / lr)
        else:
            dense_gap = max(dense_gap, float(np.abs(delta - tf_delta).max()))
    print(f"full vs tf_baseline: dense variables' first step within {dense_gap:.1e}; "
          f"embedding first steps / lr (tf, ours) {embedding_steps}; logits after each step "
          f"within {[f'{g:.1e}' for g in gaps]}, moved by {[f'{m:.1e}' for m in moved]}")
    assert len(tf_deltas) == len(before) and dense_gap <= 1e-6 * lr * 1e3
    assert all(ours <= 1.0 + 1e-6 for _, ours in embedding_steps.values())
    assert max(tf for tf, _ in embedding_steps.values()) > 2.0  # Keras's per-occurrence rule
    assert max(gaps) <= 5e-3, gaps  # what the embedding rule leaves after three steps
    assert min(moved) > 5 * max(gaps)  # the steps themselves move the logits far more


# ---------------------------------------------------------------- pooling

def test_mean_pooling_reads_the_mean_of_the_real_tokens(tiny_config):
    model = BertClassifier(tiny_config, pooling="mean", rngs=nnx.Rngs(0))
    batch = inputs(tiny_config.vocab_size, length=16)
    out = model.encode(batch["token_ids"], batch["segment_ids"], batch["padding_mask"],
                       cls_only=True)  # ignored: the mean needs every row
    mask = batch["padding_mask"][..., None]
    expected = (np.asarray(out["sequence_output"]) * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(out["pooled_output"], expected, rtol=1e-5, atol=1e-6)
    padded = {k: np.pad(v, ((0, 0), (0, 8))) for k, v in batch.items()}  # more padding
    np.testing.assert_allclose(logits(model, padded), logits(model, batch), atol=1e-5)


# ---------------------------------------------------------------- whole runs: LP→X, resume

@pytest.fixture(scope="module")
def probe_run(tiny_hf_preset, tmp_path_factory, run_env) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "probe"
    train(tiny_hf_preset, run_dir, "--method", "probe", "--train-pooler", env=run_env)
    return run_dir


def test_lp_then_lora_starts_from_the_probe(probe_run, tiny_hf_preset, tmp_path, run_env):
    parent_file = safetensors.numpy.load_file(str(probe_run / ADAPTER / ADAPTER_WEIGHTS))
    # The head and pooler are copied bitwise; the new adapters start at B = 0.
    run = read_run(probe_run)
    parent = read_parent(probe_run, split=run.manifest["split"], weights=run.manifest["weights"],
                         pooling="cls")
    child = load_pretrained(str(tiny_hf_preset), LoraConfig(rank=4), seed=5).model
    copied = init_from_parent(child, parent)
    assert sorted(copied) == sorted(parent_file)  # head.* and pooler.*
    for name, array in parent_file.items():
        module, leaf = name.rsplit(".", 1)
        assert np.array_equal(getattr(getattr(child, module), leaf)[...], array), name

    child_dir = tmp_path / "lp_lora"
    train(tiny_hf_preset, child_dir, "--init-from", str(probe_run), "--rank", "4", env=run_env)
    manifest = json.loads((child_dir / MANIFEST).read_text())
    assert manifest["parent"]["adapter_sha256"] == parent["adapter_sha256"]
    assert manifest["parent"]["method"] == "probe" and manifest["status"] == "finished"
    assert sorted(manifest["parent"]["inherited"]) == sorted(parent_file)
    # The pooler the child inherited but did not train is in its saved adapter too.
    loaded = load_adapter(child_dir / ADAPTER)
    np.testing.assert_array_equal(loaded.model.pooler.kernel[...], parent_file["pooler.kernel"])


@pytest.mark.parametrize("flags, problem", [
    (["--limit", "50"], "split"), (["--pooling", "mean"], "pooling")])
def test_init_from_refuses_another_split_or_pooling(probe_run, tiny_hf_preset, tmp_path,
                                                    run_env, flags, problem):
    done = train(tiny_hf_preset, tmp_path / "child", "--init-from", str(probe_run), *flags,
                 env=run_env, check=False)
    assert done.returncode == 2 and problem in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "child").exists()


@pytest.mark.parametrize("flags", [["--method", "dora"], ["--method", "full", "--lr", "1e-4"],
                                   # QLoRA-style: an NF4 base and accumulated micro-batches
                                   ["--base-dtype", "nf4", "--accumulate", "2"],
                                   ["--method", "ia3"]],  # a jax_lora/tuners family
                         ids=["dora", "full", "nf4-accumulate", "ia3"])
def test_kill_9_then_rerun_ends_bitwise_equal(flags, tiny_hf_preset, tmp_path, run_env):
    config = parse_config(flags)
    kill_at = STEPS_PER_EPOCH // config.accumulate + 2  # a checkpoint inside epoch 2
    reference = tmp_path / "reference"
    train(tiny_hf_preset, reference, *flags, env=run_env)
    run_dir = tmp_path / "killed"
    command = trainer_command("jax_lora", "--preset", tiny_hf_preset, "--run-dir", run_dir,
                              *RUN_FLAGS, *flags)
    process = subprocess.Popen(command, cwd=REPO, env=run_env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    kill_9_at_checkpoint([process], run_dir / CHECKPOINTS, kill_at)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == -signal.SIGKILL, f"not killed mid-run:\n{output[-2000:]}"
    rerun = train(tiny_hf_preset, run_dir, *flags, env=run_env)
    assert "resumed from step" in rerun.stdout
    resumed = safetensors.numpy.load_file(str(run_dir / ADAPTER / ADAPTER_WEIGHTS))
    expected = safetensors.numpy.load_file(str(reference / ADAPTER / ADAPTER_WEIGHTS))
    assert resumed.keys() == expected.keys()
    if config.method == "full":  # every parameter is in the artifact
        assert any(name.startswith("embeddings.") for name in expected)
    for name in expected:
        assert np.array_equal(resumed[name], expected[name]), name
