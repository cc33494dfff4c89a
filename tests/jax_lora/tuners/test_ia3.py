"""(IA)³ (jax_lora/tuners/ia3.py): vectors that rescale keys, values and FFN activations.
The count against the formula and PEFT's, the frozen base, step 0 = the base model, the merge,
and where torch is installed: PEFT loads our export to our logits, writes the same names and
config for the same setup, our loader reads a PEFT-made adapter to PEFT's logits, and PEFT's
merge equals ours."""

import json
import warnings

import numpy as np
import pytest
from flax import nnx

from jax_lora.inference import load_run
from jax_lora.models import BertConfig
from jax_lora.peft_format import load_peft, main as peft_main, save_peft
from jax_lora.tuners import TunerConfig, TunerParam, Tuning, merge_model
from jax_lora.weights import load_pretrained
from tests.jax_lora.helpers import assert_reloads_to_its_predictions, logits
from tests.jax_lora.test_peft_format import read_tensors
from tests.jax_lora.trainer_process import train
from tests.jax_lora.tuners.tuner_helpers import (PROBE, abstract_counts,
                                                 assert_only_trainable_leaves_move, hf_base,
                                                 randomize, sample_batch, torch_logits,
                                                 train_steps)

MINILM = BertConfig(vocab_size=30522, hidden_dim=384, num_layers=6, num_heads=12,
                    intermediate_dim=1536)
# The paper's vectors (the default), and PEFT's default for BERT, whose "output.dense" also
# matches attention.output.dense (so the attention context is rescaled too).
SETUPS = {"paper": Tuning("ia3"),
          "peft_default": Tuning("ia3", TunerConfig(
              ia3_targets=("key", "value", "attention_output", "ffn_out"),
              ia3_feedforward=("attention_output", "ffn_out")))}
PEFT_DEFAULT_BERT = {"target_modules": ["key", "value", "output.dense"],
                     "feedforward_modules": ["output.dense"]}
TOLERANCE = 1e-5  # the bound; measured values are printed


def formula(config: BertConfig, tuning: Tuning, classes: int = 3) -> int:
    h, inner = config.hidden_dim, config.intermediate_dim
    size = {"key": h, "value": h, "attention_output": h, "ffn_out": inner}  # their l's length
    return config.num_layers * sum(size[t] for t in tuning.config.ia3_targets) + h * classes \
        + classes


@pytest.fixture(scope="module")
def batch(tiny_hf_preset):
    return sample_batch(tiny_hf_preset)


def ia3_model(preset, tuning, seed=0):
    model = load_pretrained(str(preset), PROBE, tuning=tuning).model
    randomize(model, seed)
    return model


@pytest.mark.parametrize("name", list(SETUPS))
def test_trainable_count_matches_the_formula(tiny_config, name):
    tuning = SETUPS[name]
    for config in (tiny_config, MINILM):
        assert abstract_counts(config, tuning, "mean")["trainable"] == formula(config, tuning)
        assert tuning.family.count(config, tuning.config, "mean") + config.hidden_dim * 3 + 3 \
            == formula(config, tuning)
    if name == "paper":  # L·(2·H + I) + head on MiniLM, the manifest's figure
        assert abstract_counts(MINILM, tuning, "mean")["trainable"] == 13_824 + 1_155


def test_steps_move_only_the_vectors_and_head(tiny_hf_preset):
    model = load_pretrained(str(tiny_hf_preset), PROBE, tuning=SETUPS["paper"]).model
    result = train_steps(model, "ia3")
    assert_only_trainable_leaves_move(result)
    assert {name for name, t in result.trains.items() if t} == {
        f"layers.{i}.{site}.ia3_l" for i in range(2)
        for site in ("attention.key", "attention.value", "ffn_out")} | {"head.kernel",
                                                                        "head.bias"}


def test_vectors_of_ones_are_the_base_model(tiny_hf_preset, batch):
    base = load_pretrained(str(tiny_hf_preset), PROBE).model
    model = load_pretrained(str(tiny_hf_preset), PROBE, tuning=SETUPS["peft_default"]).model
    nnx.update(model, nnx.state(base, nnx.PathContains("head")))
    np.testing.assert_array_equal(logits(model, batch), logits(base, batch))


@pytest.mark.parametrize("name", list(SETUPS))
def test_merged_model_equals_the_scaled_one(tiny_hf_preset, batch, name):
    model = ia3_model(tiny_hf_preset, SETUPS[name])
    merged = merge_model(model)
    assert merged.tuning is None and not nnx.state(merged, TunerParam)
    base = load_pretrained(str(tiny_hf_preset), PROBE).model
    nnx.update(base, nnx.state(model, nnx.PathContains("head")))
    assert np.abs(logits(base, batch) - logits(model, batch)).max() > 1e-2  # vectors matter
    assert np.abs(logits(merged, batch) - logits(model, batch)).max() <= TOLERANCE


def test_export_refuses_another_method(tiny_hf_preset, tmp_path):
    model = ia3_model(tiny_hf_preset, SETUPS["paper"])
    with pytest.raises(ValueError, match="--method lora: the model was built for --method ia3"):
        save_peft(model, tmp_path / "out", base_model_name_or_path="b", method="lora")
    assert not (tmp_path / "out").exists()


def test_round_trip_through_the_peft_format_is_exact(tiny_hf_preset, batch, tmp_path):
    model = ia3_model(tiny_hf_preset, SETUPS["paper"])
    save_peft(model, tmp_path / "ia3", base_model_name_or_path=str(tiny_hf_preset),
              method="ia3")
    back = load_peft(tmp_path / "ia3")
    assert back.model.tuning == SETUPS["paper"]
    np.testing.assert_array_equal(logits(back.model, batch), logits(model, batch))


# ---------------------------------------------------------------- against torch + PEFT

@pytest.mark.parametrize("name", list(SETUPS))
def test_peft_loads_our_export_to_our_logits(hf, tiny_hf_preset, batch, tmp_path, name):
    model = ia3_model(tiny_hf_preset, SETUPS[name])
    save_peft(model, tmp_path / name, base_model_name_or_path=str(tiny_hf_preset),
              method="ia3")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        theirs = hf.peft.PeftModel.from_pretrained(hf_base(hf, tiny_hf_preset),
                                                   str(tmp_path / name))
    assert not [w for w in caught if "keys" in str(w.message).lower()]
    difference = np.abs(torch_logits(hf, theirs, batch) - logits(model, batch)).max()
    print(f"{name}: PEFT loads our (IA)³ export: max |Δlogit| {difference:.1e}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("name", list(SETUPS))
def test_peft_writes_our_names_and_config(hf, tiny_hf_preset, tmp_path, name):
    ours = tmp_path / "ours"
    save_peft(ia3_model(tiny_hf_preset, SETUPS[name]), ours,
              base_model_name_or_path=str(tiny_hf_preset), method="ia3")
    written = json.loads((ours / "adapter_config.json").read_text())
    settings = PEFT_DEFAULT_BERT if name == "peft_default" else {
        k: written[k] for k in ("target_modules", "feedforward_modules")}
    model = hf.peft.get_peft_model(hf.Bert.from_pretrained(str(tiny_hf_preset), num_labels=3),
                                   hf.peft.IA3Config(task_type="SEQ_CLS", **settings))
    model.save_pretrained(str(tmp_path / "theirs"))
    theirs = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    their_tensors, our_tensors = read_tensors(tmp_path / "theirs"), read_tensors(ours)
    assert {k: v.shape for k, v in their_tensors[0].items()} == {
        k: v.shape for k, v in our_tensors[0].items()}
    assert their_tensors[1] == our_tensors[1]
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == formula(load_pretrained(str(tiny_hf_preset), PROBE).config,
                                SETUPS[name])
    if name == "paper":  # the same config, field for field
        assert theirs == written
    else:  # theirs names the modules by suffix; ours selects the same ones
        assert set(theirs) == set(written)


def test_load_peft_reads_a_peft_trained_adapter(hf, tiny_hf_preset, batch, tmp_path):
    """PEFT's default BERT setup with random vectors (init_ia3_weights=False) and a moved
    head: our loader gives PEFT's logits."""
    hf.torch.manual_seed(0)
    model = hf.peft.get_peft_model(hf_base(hf, tiny_hf_preset), hf.peft.IA3Config(
        task_type="SEQ_CLS", init_ia3_weights=False, **PEFT_DEFAULT_BERT))
    model.save_pretrained(str(tmp_path))
    expected = torch_logits(hf, model, batch)
    loaded = load_peft(tmp_path, str(tiny_hf_preset))
    assert loaded.model.tuning == SETUPS["peft_default"]
    difference = np.abs(logits(loaded.model, batch) - expected).max()
    print(f"PEFT-trained (IA)³ read by jax_lora: max |Δlogit| {difference:.1e}")
    assert difference <= TOLERANCE


def test_peft_merge_equals_ours(hf, tiny_hf_preset, batch, tmp_path):
    model = ia3_model(tiny_hf_preset, SETUPS["peft_default"])
    save_peft(model, tmp_path / "ia3", base_model_name_or_path=str(tiny_hf_preset),
              method="ia3")
    theirs = hf.peft.PeftModel.from_pretrained(hf_base(hf, tiny_hf_preset),
                                               str(tmp_path / "ia3")).merge_and_unload()
    difference = np.abs(torch_logits(hf, theirs, batch) - logits(merge_model(model), batch))
    print(f"PEFT's merge_and_unload vs ours: max |Δlogit| {difference.max():.1e}")
    assert difference.max() <= TOLERANCE


# ---------------------------------------------------------------- a run of train.py

@pytest.fixture(scope="module")
def ia3_run(tiny_hf_preset, tmp_path_factory, run_env):
    run_dir = tmp_path_factory.mktemp("ia3") / "run"
    train(tiny_hf_preset, run_dir, "--method", "ia3", env=run_env)
    return run_dir


def test_a_run_records_its_count_reloads_and_exports(ia3_run, tiny_hf_preset, batch, tmp_path):
    manifest = assert_reloads_to_its_predictions(ia3_run, 1e-5)
    config = load_pretrained(str(tiny_hf_preset), PROBE).config
    assert manifest["params"]["trainable"] == formula(config, SETUPS["paper"])
    assert manifest["config"]["tuner"]["ia3_targets"] == ["key", "value", "ffn_out"]
    peft_main(["--run-dir", str(ia3_run), "--out", str(tmp_path / "peft")])
    loaded = load_run(ia3_run).model
    back = load_peft(tmp_path / "peft").model
    np.testing.assert_array_equal(logits(back, batch), logits(loaded, batch))
