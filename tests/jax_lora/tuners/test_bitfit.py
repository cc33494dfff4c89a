"""BitFit (jax_lora/tuners/bitfit.py): the biases and the head train, nothing else. PEFT has
no BitFit: the count is checked against the formula, and, where torch is installed, against
PEFT's own rule for "every bias" (LoRA's bias="all")."""

import numpy as np
import pytest

from jax_lora.inference import load_run
from jax_lora.models import BertConfig
from jax_lora.tuners import Tuning, merge_model
from jax_lora.weights import load_pretrained
from shared.runs.run_dir import read_run
from tests.jax_lora.helpers import assert_reloads_to_its_predictions, inputs, logits
from tests.jax_lora.trainer_process import train
from tests.jax_lora.tuners.tuner_helpers import (PROBE, abstract_counts,
                                                 assert_only_trainable_leaves_move, train_steps)

BITFIT = Tuning("bitfit")
# all-MiniLM-L6-v2's shapes (its config.json).
MINILM = BertConfig(vocab_size=30522, hidden_dim=384, num_layers=6, num_heads=12,
                    intermediate_dim=1536)


def formula(config: BertConfig, pooling: str, classes: int = 3) -> int:
    """Per layer the query, key, value, attention-output, FFN-in and FFN-out biases and both
    LayerNorm betas; the embeddings' LayerNorm beta; the pooler's bias when cls pooling reads
    it; the head."""
    h, inner = config.hidden_dim, config.intermediate_dim
    per_layer = 4 * h + inner + h + 2 * h
    return (config.num_layers * per_layer + h + (h if pooling == "cls" else 0)
            + h * classes + classes)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_trainable_count_matches_the_formula(tiny_config, pooling):
    for config in (tiny_config, MINILM):
        assert abstract_counts(config, BITFIT, pooling)["trainable"] == formula(config, pooling)
    assert BITFIT.family.count(MINILM, BITFIT.config, pooling) + 384 * 3 + 3 == \
        formula(MINILM, pooling)
    if pooling == "mean":  # the figure the manifest of a MiniLM run shows
        assert abstract_counts(MINILM, BITFIT, pooling)["trainable"] == 26_883


def test_count_equals_peft_every_bias_rule(hf, tiny_hf_preset):
    """PEFT trains every parameter named "bias" under LoRA's bias="all"; the LoRA factors of
    one rank-1 query adapter per layer taken away, the rest is BitFit's set (cls pooling)."""
    base = hf.Bert.from_pretrained(str(tiny_hf_preset), num_labels=3)
    model = hf.peft.get_peft_model(base, hf.peft.LoraConfig(
        task_type="SEQ_CLS", r=1, target_modules=["query"], bias="all"))
    trainable, _ = model.get_nb_trainable_parameters()
    config = load_pretrained(str(tiny_hf_preset), PROBE).config
    lora_factors = config.num_layers * (config.hidden_dim + config.hidden_dim)
    assert trainable - lora_factors == formula(config, "cls")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_steps_move_only_biases_and_head(tiny_hf_preset, pooling):
    model = load_pretrained(str(tiny_hf_preset), PROBE, pooling=pooling, tuning=BITFIT).model
    result = train_steps(model, "bitfit")
    assert_only_trainable_leaves_move(result)
    trains = {name for name, t in result.trains.items() if t}
    assert all(name.endswith(".bias") or name.startswith("head.") for name in trains)
    assert ("pooler.bias" in trains) == (pooling == "cls")
    assert {"layers.1.attention_layer_norm.bias", "embeddings.layer_norm.bias",
            "layers.0.ffn_in.bias", "head.kernel"} <= trains


@pytest.fixture(scope="module")
def bitfit_run(tiny_hf_preset, tmp_path_factory, run_env):
    run_dir = tmp_path_factory.mktemp("bitfit") / "run"
    train(tiny_hf_preset, run_dir, "--method", "bitfit", env=run_env)
    return run_dir


def test_a_run_records_its_count_and_reloads_to_its_predictions(bitfit_run, tiny_hf_preset):
    manifest = assert_reloads_to_its_predictions(bitfit_run, 1e-5)
    config = load_pretrained(str(tiny_hf_preset), PROBE).config
    assert manifest["config"]["method"] == "bitfit"
    assert manifest["params"]["trainable"] == formula(config, "cls")
    assert manifest["config"]["lr"] == 1e-3  # the family's default
    assert read_run(bitfit_run).manifest["status"] == "finished"


def test_a_trained_bitfit_model_is_already_plain(bitfit_run):
    """Nothing to merge: the merged model computes the same logits from the same leaves."""
    model = load_run(bitfit_run).model
    batch = inputs(model.config.vocab_size)
    np.testing.assert_array_equal(logits(merge_model(model), batch), logits(model, batch))
