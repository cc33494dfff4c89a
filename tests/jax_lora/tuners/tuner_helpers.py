"""What the tests of every jax_lora/tuners family check the same way: a few optimizer steps
that move exactly the trainable leaves (and give Adam moments to nothing else), the count of
a model built for a family, and a tiny run of train.py with the family."""

import types

import jax
import numpy as np
import optax
from flax import nnx

from jax_lora.adapter import adapter_filter
from jax_lora.checkpoint import flat_arrays, replace_arrays
from jax_lora.config import TrainConfig
from jax_lora.lora import LoraConfig
from jax_lora.models import BertClassifier
from jax_lora.optim import make_optimizer, param_counts, trainable_mask
from jax_lora.steps import TrainState, make_train_step
from jax_lora.tuners import Tuning, trainable_filter
from jax_lora.weights import load_pretrained
from shared.data.watson import SAMPLE_DATA_DIR, load_train
from tests.jax_lora.helpers import inputs

PROBE = LoraConfig(targets=())  # what every family's TrainConfig resolves lora to


def named(state) -> dict:
    return {".".join(map(str, p)): np.array(v.get_value()) for p, v in nnx.to_flat_state(state)}


def abstract_counts(config, tuning: Tuning, pooling: str) -> dict:
    """param_counts of a model of `config` built for `tuning`, from shapes alone."""
    model = nnx.eval_shape(lambda: BertClassifier(config, lora=PROBE, pooling=pooling,
                                                  tuning=tuning, rngs=nnx.Rngs(0)))
    params = nnx.state(model)
    filter_ = trainable_filter(PROBE, tuning=tuning, pooling=pooling)
    return param_counts(params, trainable_mask(params, filter_))


def train_steps(model, method: str, steps: int = 3) -> types.SimpleNamespace:
    """`steps` AdamW steps (lr 1e-2) of `model` (built for `method`'s family) on random rows:
    the named parameters before and after, the trainable mask by name, and the Adam moments'
    leaf sizes."""
    config = TrainConfig(method=method, lr=1e-2, pooling=model.pooling)
    trainable = trainable_filter(model.lora, tuning=model.tuning, pooling=model.pooling)
    graphdef, params = nnx.split(model)
    mask = trainable_mask(params, trainable)
    tx = make_optimizer(config, params, mask, total_steps=10)
    state = TrainState(np.int32(0), params, tx.init(params))
    before = named(params)
    batch = inputs(model.config.vocab_size, rows=4, length=16)
    batch.update(labels=np.array([0, 1, 2, 1], np.int32), weights=np.ones(4, np.float32))
    step = make_train_step(graphdef, tx, trainable, jax.random.key(1))
    for _ in range(steps):
        state, _ = step(state, batch)
    moments = [leaf.size for leaf in jax.tree.leaves(optax.tree_utils.tree_get(
        state.opt_state, "mu"))]
    return types.SimpleNamespace(before=before, after=named(state.params),
                                 trains={k: bool(v) for k, v in named(mask).items()},
                                 moments=moments)


def assert_only_trainable_leaves_move(result) -> None:
    """Every trainable leaf moved, no frozen one did, and Adam keeps one first moment per
    trainable leaf (of its size) and none for the frozen base."""
    for name, value in result.before.items():
        if result.trains[name]:
            assert not np.array_equal(value, result.after[name]), f"{name} did not train"
        else:
            assert np.array_equal(value, result.after[name]), f"frozen {name} changed"
    trainable_sizes = sorted(v.size for k, v in result.before.items() if result.trains[k])
    assert sorted(result.moments) == trainable_sizes


def sample_batch(preset) -> dict:
    """Six sample rows at length 32 (padded rows of several lengths, two segments), as
    tests/jax_lora/test_peft_format.py compares with PEFT."""
    tokenizer = load_pretrained(str(preset), PROBE).tokenizer
    frame = load_train(SAMPLE_DATA_DIR).head(6)
    return tokenizer(list(frame["premise"]), list(frame["hypothesis"]), 32)


def randomize(model, seed: int = 0) -> None:
    """Every leaf of the model's adapter (the family's, the head, a trained pooler) moved off
    its initial value by random noise, as training would."""
    state = nnx.state(model, adapter_filter(model.lora, tuning=model.tuning,
                                            pooling=model.pooling))
    rng = np.random.default_rng(seed)
    arrays = {name: (np.asarray(v) * (1 + 0.3 * rng.standard_normal(v.shape))
                     + 0.1 * rng.standard_normal(v.shape)).astype(np.float32)
              for name, v in flat_arrays(state).items()}
    nnx.update(model, replace_arrays(state, arrays, "randomize"))


def torch_logits(hf, model, batch) -> np.ndarray:
    """A transformers/PEFT sequence classifier's logits on our batch layout."""
    ids = {name: hf.torch.tensor(np.asarray(batch[ours])).long() for name, ours in (
        ("input_ids", "token_ids"), ("token_type_ids", "segment_ids"),
        ("attention_mask", "padding_mask"))}
    with hf.torch.no_grad():
        return model.eval()(**ids).logits.numpy()


def hf_base(hf, preset):
    """The tiny preset as BertForSequenceClassification with our GELU (tanh-approximate,
    keras-hub's), so logits agree to float rounding (peft_format's README)."""
    return hf.Bert.from_pretrained(str(preset), num_labels=3, hidden_act="gelu_pytorch_tanh")


def assert_peft_writes_what_we_write(theirs, ours) -> None:
    """PEFT's adapter folder `theirs` and jax_lora's `ours` hold the same adapter_config.json
    and the same tensor names and shapes."""
    import json

    from tests.jax_lora.test_peft_format import read_tensors

    their_config, our_config = (json.loads((folder / "adapter_config.json").read_text())
                                for folder in (theirs, ours))
    # PEFT 0.21.2 lists the classifier twice (added by the task model and again by
    # add_adapter); the set is what it saves.
    assert set(their_config.pop("modules_to_save")) == set(our_config.pop("modules_to_save"))
    assert their_config == our_config
    their_tensors, our_tensors = read_tensors(theirs), read_tensors(ours)
    assert {k: v.shape for k, v in their_tensors[0].items()} == {
        k: v.shape for k, v in our_tensors[0].items()}

