"""Prefix tuning (jax_lora/tuners/prefix.py): keys and values before every layer's own. The
count against the formula (and PEFT's), the frozen base, what the prefixes change and what
they leave (the text's positions start at P, the mask attends every prefix, pooling reads the
text), the refusals, and where torch is installed: our logits equal PEFT's on the same base
and the same prefix parameters (the plain table and the MLP), PEFT loads our export to our
logits and writes the same names and config, and our loader reads a PEFT-trained adapter."""


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_lora.inference import load_run, predict
from jax_lora.models import BertConfig
from jax_lora.peft_format import load_peft, main as peft_main, save_peft
from jax_lora.tuners import TunerConfig, Tuning, merge_model
from jax_lora.weights import load_pretrained
from tests.jax_lora.helpers import assert_reloads_to_its_predictions, logits
from tests.jax_lora.trainer_process import train
from tests.jax_lora.tuners.tuner_helpers import (PROBE, abstract_counts,
                                                 assert_peft_writes_what_we_write,
                                                 assert_only_trainable_leaves_move, hf_base,
                                                 randomize, sample_batch, torch_logits,
                                                 train_steps)

MINILM = BertConfig(vocab_size=30522, hidden_dim=384, num_layers=6, num_heads=12,
                    intermediate_dim=1536)
FLAT = Tuning("prefix", TunerConfig(virtual_tokens=5))
MLP = Tuning("prefix", TunerConfig(virtual_tokens=5, prefix_projection=True,
                                   prefix_hidden_size=8))
SETUPS = {"flat": FLAT, "mlp": MLP}
TOLERANCE = 1e-5  # the bound; measured values are printed


@pytest.fixture(scope="module")
def batch(tiny_hf_preset):
    return sample_batch(tiny_hf_preset)


def prefix_model(preset, tuning=FLAT, pooling="cls", seed=0):
    model = load_pretrained(str(preset), PROBE, pooling=pooling, tuning=tuning).model
    randomize(model, seed)
    return model


def test_count_is_the_formula(tiny_config):
    """P·L·2·H for the table; with the MLP, P·H + H·E + E + E·L·2·H + L·2·H."""
    family = FLAT.family
    assert family.count(MINILM, TunerConfig(), "mean") == 92_160
    assert family.count(MINILM, TunerConfig(prefix_projection=True), "mean") == 1_929_600
    h, layers = tiny_config.hidden_dim, tiny_config.num_layers
    formulas = {"flat": 5 * layers * 2 * h,
                "mlp": 5 * h + h * 8 + 8 + 8 * layers * 2 * h + layers * 2 * h}
    for name, tuning in SETUPS.items():
        assert family.count(tiny_config, tuning.config, "cls") == formulas[name]
        assert abstract_counts(tiny_config, tuning, "cls")["trainable"] == \
            formulas[name] + h * 3 + 3


@pytest.mark.parametrize("name", list(SETUPS))
def test_steps_move_only_the_prefix_and_head(tiny_hf_preset, name):
    model = load_pretrained(str(tiny_hf_preset), PROBE, tuning=SETUPS[name]).model
    result = train_steps(model, "prefix")
    assert_only_trainable_leaves_move(result)
    expected = {"prefix.embedding", "head.kernel", "head.bias"} | (
        {"prefix.hidden_kernel", "prefix.hidden_bias", "prefix.out_kernel", "prefix.out_bias"}
        if name == "mlp" else set())
    assert {n for n, t in result.trains.items() if t} == expected


def test_the_text_starts_at_position_p(tiny_hf_preset, batch):
    """The embeddings read positions P..P+T-1 (BertEmbeddings' past_key_values_length), and
    the prefixes' keys and values reach the layers: the logits differ from the base's."""
    model = prefix_model(tiny_hf_preset)
    emb, p = model.embeddings, FLAT.config.virtual_tokens
    ids, segments = jnp.asarray(batch["token_ids"]), jnp.asarray(batch["segment_ids"])
    table = emb.position_embedding.embedding[...]
    expected = emb.layer_norm(emb.token_embedding(ids) + table[p:p + ids.shape[1]][None]
                              + emb.segment_embedding(segments))
    out = model.encode(batch["token_ids"], batch["segment_ids"], batch["padding_mask"])
    np.testing.assert_allclose(emb(ids, segments, None, None, p), expected, atol=1e-6)
    assert out["sequence_output"].shape == (6, 32, 32)  # the text's rows only
    base = load_pretrained(str(tiny_hf_preset), PROBE).model
    nnx.update(base, nnx.state(model, nnx.PathContains("head")))
    assert np.abs(logits(base, batch) - logits(model, batch)).max() > 1e-3


def test_every_row_attends_to_every_prefix(tiny_hf_preset, batch):
    """Full attention rows sum to 1 over P + T columns, the prefix columns are never masked
    (padded rows too), padded text columns are 0; the maps keep the text's columns."""
    model = prefix_model(tiny_hf_preset)
    p, mask = FLAT.config.virtual_tokens, batch["padding_mask"].astype(bool)
    out = model.encode(batch["token_ids"], batch["segment_ids"], batch["padding_mask"],
                       cls_only=False, attention_maps=True)
    x = model.embeddings(jnp.asarray(batch["token_ids"]), jnp.asarray(batch["segment_ids"]),
                         None, None, p)
    probs = np.asarray(model.layers[0].attention.probabilities(x, mask, model.prefix()[0]))
    assert probs.shape == (6, 2, 32, p + 32)
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)
    assert (probs[..., :p] > 0).all()
    assert (probs[..., p:][np.broadcast_to(~mask[:, None, None, :], probs[..., p:].shape)]
            == 0).all()
    np.testing.assert_allclose(out["attention_maps"][0], probs[..., p:], atol=1e-6)


def test_pooling_reads_the_text(tiny_hf_preset, batch):
    """cls pooling reads row 0 ([CLS]), also through the last layer's cls_only path; mean
    pooling averages the text's real tokens."""
    model = prefix_model(tiny_hf_preset)
    full = model.encode(batch["token_ids"], batch["segment_ids"], batch["padding_mask"])
    np.testing.assert_allclose(logits(model, batch), full["logits"], atol=1e-5)
    np.testing.assert_allclose(full["cls"], full["sequence_output"][:, 0])
    mean = prefix_model(tiny_hf_preset, pooling="mean")
    out = mean.encode(batch["token_ids"], batch["segment_ids"], batch["padding_mask"])
    text, mask = np.asarray(out["sequence_output"]), batch["padding_mask"].astype(bool)
    expected = np.stack([text[row][mask[row]].mean(axis=0) for row in range(len(mask))])
    np.testing.assert_allclose(out["pooled_output"], expected, atol=1e-6)


def test_remat_computes_the_same_logits(tiny_hf_preset, batch):
    model = prefix_model(tiny_hf_preset, MLP)
    plain = logits(model, batch)
    model.remat = "layers"
    np.testing.assert_allclose(logits(model, batch), plain, atol=1e-6)


def test_too_long_a_sequence_and_a_merge_are_refused(tiny_hf_preset, tmp_path, run_env):
    done = train(tiny_hf_preset, tmp_path / "run", "--method", "prefix", "--sequence-length",
                 "120", env=run_env, check=False)
    assert done.returncode == 2 and "--sequence-length 108 or less" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="--method prefix: .*python -m jax_lora.peft_format"):
        merge_model(prefix_model(tiny_hf_preset))
    with pytest.raises(ValueError, match="--prefix-hidden-size 8: .*--prefix-projection"):
        TunerConfig(prefix_hidden_size=8)


@pytest.mark.parametrize("name", list(SETUPS))
def test_round_trip_through_the_peft_format(tiny_hf_preset, batch, tmp_path, name):
    """The table comes back as it was; the MLP comes back as its output, the same logits."""
    model = prefix_model(tiny_hf_preset, SETUPS[name])
    save_peft(model, tmp_path / "pt", base_model_name_or_path=str(tiny_hf_preset),
              method="prefix")
    back = load_peft(tmp_path / "pt")
    assert back.model.tuning == FLAT
    np.testing.assert_allclose(logits(back.model, batch), logits(model, batch), atol=1e-6)


# ---------------------------------------------------------------- against torch + PEFT

def peft_prefix(hf, preset, tuning: Tuning):
    """PEFT's prefix-tuned BertForSequenceClassification for `tuning`, in training mode (the
    MLP, when it has one, computes the prefixes)."""
    tuner = tuning.config
    config = hf.peft.PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=tuner.virtual_tokens,
        prefix_projection=tuner.prefix_projection,
        **({"encoder_hidden_size": tuner.prefix_hidden_size} if tuner.prefix_hidden_size
           else {}))
    return hf.peft.get_peft_model(hf_base(hf, preset), config)


def copy_into_peft(hf, ours, theirs) -> None:
    """Our prefix parameters and head into PEFT's model (torch's [out, in] Linears)."""
    encoder = theirs.prompt_encoder["default"]
    tensors = {"embedding.weight": ours.prefix.embedding[...]}
    if ours.prefix.projection:
        tensors.update({"transform.0.weight": ours.prefix.hidden_kernel[...].T,
                        "transform.0.bias": ours.prefix.hidden_bias[...],
                        "transform.2.weight": ours.prefix.out_kernel[...].T,
                        "transform.2.bias": ours.prefix.out_bias[...]})
    head = theirs.base_model.classifier.modules_to_save["default"]
    with hf.torch.no_grad():
        for name, value in tensors.items():
            encoder.get_parameter(name).copy_(hf.torch.tensor(np.asarray(value)))
        head.weight.copy_(hf.torch.tensor(np.asarray(ours.head.kernel[...]).T))
        head.bias.copy_(hf.torch.tensor(np.asarray(ours.head.bias[...])))


@pytest.mark.parametrize("name", list(SETUPS))
def test_our_logits_equal_peft_on_the_same_parameters(hf, tiny_hf_preset, batch, name):
    model = prefix_model(tiny_hf_preset, SETUPS[name])
    theirs = peft_prefix(hf, tiny_hf_preset, SETUPS[name])
    copy_into_peft(hf, model, theirs)
    trainable, _ = theirs.get_nb_trainable_parameters()
    assert trainable == abstract_counts(model.config, SETUPS[name], "cls")["trainable"]
    difference = np.abs(torch_logits(hf, theirs, batch) - logits(model, batch)).max()
    print(f"prefix ({name}) against PEFT's forward: max |Δlogit| {difference:.1e}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("name", list(SETUPS))
def test_peft_loads_our_export_to_our_logits(hf, tiny_hf_preset, batch, tmp_path, name):
    model = prefix_model(tiny_hf_preset, SETUPS[name])
    save_peft(model, tmp_path / "pt", base_model_name_or_path=str(tiny_hf_preset),
              method="prefix")
    theirs = hf.peft.PeftModel.from_pretrained(hf_base(hf, tiny_hf_preset), str(tmp_path / "pt"))
    difference = np.abs(torch_logits(hf, theirs, batch) - logits(model, batch)).max()
    print(f"PEFT loads our prefix ({name}) export: max |Δlogit| {difference:.1e}")
    assert difference <= TOLERANCE


@pytest.mark.parametrize("name", list(SETUPS))
def test_peft_writes_our_names_and_config(hf, tiny_hf_preset, tmp_path, name):
    ours = tmp_path / "ours"
    save_peft(prefix_model(tiny_hf_preset, SETUPS[name]), ours,
              base_model_name_or_path=str(tiny_hf_preset), method="prefix")
    model = peft_prefix(hf, tiny_hf_preset, SETUPS[name])
    model.save_pretrained(str(tmp_path / "theirs"))
    assert_peft_writes_what_we_write(tmp_path / "theirs", ours)


@pytest.mark.parametrize("name", list(SETUPS))
def test_load_peft_reads_a_peft_trained_prefix(hf, tiny_hf_preset, batch, tmp_path, name):
    hf.torch.manual_seed(0)
    model = peft_prefix(hf, tiny_hf_preset, SETUPS[name])
    with hf.torch.no_grad():  # a trained head, not the fresh one
        for parameter_name, parameter in model.named_parameters():
            if "modules_to_save" in parameter_name:
                parameter.mul_(1 + 0.5 * hf.torch.randn_like(parameter))
    model.save_pretrained(str(tmp_path))
    expected = torch_logits(hf, model, batch)
    loaded = load_peft(tmp_path, str(tiny_hf_preset))
    assert loaded.model.tuning == FLAT  # the file holds the MLP's output, not the MLP
    difference = np.abs(logits(loaded.model, batch) - expected).max()
    print(f"PEFT-trained prefix ({name}) read by jax_lora: max |Δlogit| {difference:.1e}")
    assert difference <= TOLERANCE


# ---------------------------------------------------------------- a run of train.py

@pytest.fixture(scope="module")
def prefix_run(tiny_hf_preset, tmp_path_factory, run_env):
    run_dir = tmp_path_factory.mktemp("prefix") / "run"
    train(tiny_hf_preset, run_dir, "--method", "prefix", "--prefix-projection",
          "--prefix-hidden-size", "8", env=run_env)
    return run_dir


def test_a_run_records_its_count_reloads_and_exports(prefix_run, tiny_hf_preset, batch,
                                                     tmp_path):
    manifest = assert_reloads_to_its_predictions(prefix_run, 1e-5)
    h, layers = 32, 2
    assert manifest["params"]["trainable"] == \
        20 * h + h * 8 + 8 + 8 * layers * 2 * h + layers * 2 * h + h * 3 + 3
    assert manifest["config"]["tuner"]["prefix_projection"] is True
    loaded = load_run(prefix_run)
    out = predict(loaded, ["A man plays."], ["Music."], attention_maps=True)
    assert out["attention_maps"].shape[-1] == loaded.sequence_length
    peft_main(["--run-dir", str(prefix_run), "--out", str(tmp_path / "peft")])
    back = load_peft(tmp_path / "peft").model
    np.testing.assert_allclose(logits(back, batch), logits(loaded.model, batch), atol=1e-6)
