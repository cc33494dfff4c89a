"""Helpers that several jax_lora test files share. They live here, not in a test module: a
test file imported by another under a second name (tests/ has no __init__.py) would run its
module code twice."""

import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tokenizers import Tokenizer as HFTokenizer

from jax_lora.config import TrainConfig
from jax_lora.inference import predict
from jax_lora.lora import LoraConfig, LoRALinear, trainable_filter
from jax_lora.optim import make_optimizer, split_trainable, trainable_mask
from shared.data.spec import DataSpec, load
from shared.runs.run_dir import PROB_COLUMNS

# ---------------------------------------------------------------- models and their inputs

def inputs(vocab_size: int, rows: int = 6, length: int = 24, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, length + 1, size=rows)
    mask = np.arange(length)[None] < lengths[:, None]
    segments = np.arange(length)[None] >= lengths[:, None] // 2
    return {"token_ids": (rng.integers(5, vocab_size, (rows, length)) * mask).astype(np.int32),
            "segment_ids": (segments & mask).astype(np.int32), "padding_mask": mask}


def logits(model, batch) -> np.ndarray:
    return np.asarray(model(batch["token_ids"], batch["segment_ids"], batch["padding_mask"]))


def randomize_adapters(model, seed: int = 1) -> None:
    """Trained adapters are not B = 0 and m = ‖W‖; these must not be either."""
    for index, (_, module) in enumerate(nnx.iter_modules(model)):
        if isinstance(module, LoRALinear) and module.rank:
            key = jax.random.fold_in(jax.random.key(seed), index)
            module.lora_b[...] = 0.3 * jax.random.normal(key, module.lora_b.shape)
            if module.dora:
                module.lora_magnitude[...] *= 1 + 0.2 * jax.random.normal(
                    jax.random.fold_in(key, 1), module.lora_magnitude.shape)


# ---------------------------------------------------------------- checkpoints

class AdaptedLayer(nnx.Module):
    """The parameter kinds a checkpoint holds: a frozen kernel with A/B, and a head."""

    def __init__(self, rngs: nnx.Rngs):
        self.layer = LoRALinear(8, 8, rank=2, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)


def leaves_equal(a, b) -> bool:
    return (jax.tree.structure(a) == jax.tree.structure(b) and
            all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))


def trained_like_state():
    """Trainable params and an optimizer state that are not at their initial values."""
    lora = LoraConfig(rank=2)
    params = nnx.state(AdaptedLayer(nnx.Rngs(0)))
    tx = make_optimizer(TrainConfig(lora=lora), params,
                        trainable_mask(params, trainable_filter(lora)), 10)

    @jax.jit
    def step(params):
        grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape),
                             params)
        updates, opt_state = tx.update(grads, tx.init(params), params)
        return jax.tree.map(lambda p, u: p + u, params, updates), opt_state

    params, opt_state = step(params)
    return split_trainable(params, trainable_filter(lora))[0], opt_state


# ---------------------------------------------------------------- a loaded run's predictions

def recorded_gap(loaded, run) -> types.SimpleNamespace:
    """`loaded` (inference.load_run) on its run's validation rows, rebuilt from the manifest's
    data spec: gap = max |p - recorded p|, out = what predict returned, val, expected = the
    recorded probabilities."""
    val = load(DataSpec.from_dict(run.manifest["config"]["data"])).val
    assert list(val["id"]) == list(run.predictions["id"])
    out = predict(loaded, val["premise"].tolist(), val["hypothesis"].tolist(), batch_size=16)
    expected = run.predictions[list(PROB_COLUMNS)].to_numpy()
    return types.SimpleNamespace(gap=float(np.abs(out["probabilities"] - expected).max()),
                                 out=out, val=val, expected=expected)


def assert_reloads_to_its_predictions(run_dir, tolerance: float) -> dict:
    """The run finished, and loads back (base preset + adapter) to reproduce its validation
    predictions within `tolerance`, predictions that are not all alike; its manifest."""
    from jax_lora.inference import load_run
    from shared.runs.run_dir import read_run

    run = read_run(run_dir)
    assert run.manifest["status"] == "finished"
    reproduced = recorded_gap(load_run(run_dir), run)
    assert reproduced.gap <= tolerance
    assert np.ptp(reproduced.expected, axis=0).max() > 1e-3
    return run.manifest


# ---------------------------------------------------------------- a folder's tokenizer.json

def tokenizer_json_arrays(path, pairs: dict, length: int, pad_token: str = "[PAD]") -> dict:
    """The pairs as the folder's own tokenizer.json encodes them (its own template: BERT's
    [CLS] A [SEP] B [SEP], XLM-R's <s> A </s></s> B </s>), laid out as keras-hub's packer lays
    them out (padded with `pad_token`, mask = not padding); fails when a pair would be cut."""
    tokenizer = HFTokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    encodings = tokenizer.encode_batch(list(zip(pairs["premise"], pairs["hypothesis"])))
    longest = max(len(encoding.ids) for encoding in encodings)
    assert longest <= length, f"a pair has {longest} tokens; compare at a length that cuts none"
    pad = tokenizer.token_to_id(pad_token)
    token_ids = np.full((len(encodings), length), pad, np.int32)
    segment_ids = np.zeros((len(encodings), length), np.int32)
    for row, encoding in enumerate(encodings):
        token_ids[row, :len(encoding.ids)] = encoding.ids
        segment_ids[row, :len(encoding.ids)] = encoding.type_ids
    return {"token_ids": token_ids, "segment_ids": segment_ids,
            "padding_mask": (token_ids != pad).astype(np.int32)}
