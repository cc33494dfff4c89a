"""Prompt tuning (jax_lora/tuners/prompt.py): virtual input embeddings before the text. The
count, the frozen base, where the virtual tokens sit (positions, segments, mask, pooling, the
attention maps), the refusals (too long a sequence, a merge), and where torch is installed:
PEFT loads our export to our logits, writes the same names and config, and our loader reads
a PEFT-made adapter to PEFT's logits."""


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_lora.inference import load_run, predict
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

PROMPT = Tuning("prompt", TunerConfig(virtual_tokens=5))
TOLERANCE = 1e-5  # the bound; measured values are printed


@pytest.fixture(scope="module")
def batch(tiny_hf_preset):
    return sample_batch(tiny_hf_preset)


def prompt_model(preset, pooling="cls", tuning=PROMPT, seed=0):
    model = load_pretrained(str(preset), PROBE, pooling=pooling, tuning=tuning).model
    randomize(model, seed)
    return model


def test_count_is_tokens_times_width(tiny_config):
    for tokens in (1, 5, 20):
        tuning = Tuning("prompt", TunerConfig(virtual_tokens=tokens))
        assert abstract_counts(tiny_config, tuning, "cls")["trainable"] == \
            tokens * tiny_config.hidden_dim + tiny_config.hidden_dim * 3 + 3
        assert tuning.family.count(tiny_config, tuning.config, "cls") == \
            tokens * tiny_config.hidden_dim


def test_steps_move_only_the_prompt_and_head(tiny_hf_preset):
    model = load_pretrained(str(tiny_hf_preset), PROBE, tuning=PROMPT).model
    result = train_steps(model, "prompt")
    assert_only_trainable_leaves_move(result)
    assert {name for name, t in result.trains.items() if t} == {
        "prompt.embedding", "head.kernel", "head.bias"}


def test_vocab_start_copies_word_embedding_rows(tiny_hf_preset):
    model = load_pretrained(str(tiny_hf_preset), PROBE, tuning=PROMPT).model
    table = np.asarray(model.embeddings.token_embedding.embedding.get_value())
    prompt = np.asarray(model.prompt.embedding.get_value())
    assert all((table == row).all(axis=1).any() for row in prompt)
    random = load_pretrained(str(tiny_hf_preset), PROBE, tuning=Tuning(
        "prompt", TunerConfig(virtual_tokens=5, prompt_init="random"))).model
    assert 0.5 < np.asarray(random.prompt.embedding.get_value()).std() < 2  # N(0, 1)


def test_virtual_tokens_take_the_first_positions_and_segment_0(tiny_hf_preset, batch):
    """The embeddings' output for the text is the base's at positions shifted by P; the
    virtual rows are prompt + positions 0..P-1 + segment 0, LayerNormed."""
    model = prompt_model(tiny_hf_preset)
    emb = model.embeddings
    ids, segments = jnp.asarray(batch["token_ids"]), jnp.asarray(batch["segment_ids"])
    ours = emb(ids, segments, None, model.prompt())
    p = PROMPT.config.virtual_tokens
    table = emb.position_embedding.embedding[...]
    text = emb.token_embedding(ids) + table[p:p + ids.shape[1]][None] + \
        emb.segment_embedding(segments)
    virtual = model.prompt() + table[:p] + emb.segment_embedding.embedding[0]
    np.testing.assert_allclose(ours[:, p:], emb.layer_norm(text), atol=1e-6)
    np.testing.assert_allclose(ours[:, :p], jnp.broadcast_to(
        emb.layer_norm(virtual)[None], (ids.shape[0], p, virtual.shape[1])), atol=1e-6)


def test_mean_pooling_averages_the_text_tokens_only(tiny_hf_preset, batch):
    model = prompt_model(tiny_hf_preset, pooling="mean")
    out = model.encode(batch["token_ids"], batch["segment_ids"], batch["padding_mask"])
    p, mask = PROMPT.config.virtual_tokens, batch["padding_mask"].astype(bool)
    text = np.asarray(out["sequence_output"])[:, p:]
    expected = np.stack([text[row][mask[row]].mean(axis=0) for row in range(len(mask))])
    np.testing.assert_allclose(out["pooled_output"], expected, atol=1e-6)
    base = load_pretrained(str(tiny_hf_preset), PROBE, pooling="mean").model
    nnx.update(base, nnx.state(model, nnx.PathContains("head")))
    assert np.abs(logits(base, batch) - logits(model, batch)).max() > 1e-3  # text attends


def test_attention_maps_cover_the_text_tokens(tiny_hf_preset, batch):
    model = prompt_model(tiny_hf_preset)
    out = model.encode(batch["token_ids"], batch["segment_ids"], batch["padding_mask"],
                       cls_only=False, attention_maps=True)
    maps = np.stack(out["attention_maps"])
    assert maps.shape == (2, 6, 2, 32, 32)  # layers, rows, heads, T, T: the text's T
    real = batch["padding_mask"].astype(bool)
    sums = maps.sum(-1)[np.broadcast_to(real[None, :, None, :], maps.shape[:-1])]
    assert (sums < 1).all() and (sums > 0).all()  # the rest went to the virtual tokens


def test_too_long_a_sequence_and_a_merge_are_refused(tiny_hf_preset, tmp_path, run_env):
    done = train(tiny_hf_preset, tmp_path / "run", "--method", "prompt", "--sequence-length",
                 "120", env=run_env, check=False)
    assert done.returncode == 2 and "--sequence-length 108 or less" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="--method prompt: .*python -m jax_lora.peft_format"):
        merge_model(prompt_model(tiny_hf_preset))


def test_round_trip_through_the_peft_format_is_exact(tiny_hf_preset, batch, tmp_path):
    model = prompt_model(tiny_hf_preset)
    save_peft(model, tmp_path / "pt", base_model_name_or_path=str(tiny_hf_preset),
              method="prompt")
    back = load_peft(tmp_path / "pt")
    assert back.model.tuning == PROMPT
    np.testing.assert_array_equal(logits(back.model, batch), logits(model, batch))


# ---------------------------------------------------------------- against torch + PEFT

def test_peft_loads_our_export_to_our_logits(hf, tiny_hf_preset, batch, tmp_path):
    model = prompt_model(tiny_hf_preset)
    save_peft(model, tmp_path / "pt", base_model_name_or_path=str(tiny_hf_preset),
              method="prompt")
    theirs = hf.peft.PeftModel.from_pretrained(hf_base(hf, tiny_hf_preset), str(tmp_path / "pt"))
    difference = np.abs(torch_logits(hf, theirs, batch) - logits(model, batch)).max()
    print(f"PEFT loads our prompt-tuning export: max |Δlogit| {difference:.1e}")
    assert difference <= TOLERANCE


def test_peft_writes_our_names_and_config(hf, tiny_hf_preset, tmp_path):
    ours = tmp_path / "ours"
    save_peft(prompt_model(tiny_hf_preset), ours, base_model_name_or_path=str(tiny_hf_preset),
              method="prompt")
    model = hf.peft.get_peft_model(
        hf.Bert.from_pretrained(str(tiny_hf_preset), num_labels=3), hf.peft.PromptTuningConfig(
            task_type="SEQ_CLS", num_virtual_tokens=5, prompt_tuning_init="SAMPLE_VOCAB"))
    model.save_pretrained(str(tmp_path / "theirs"))
    assert_peft_writes_what_we_write(tmp_path / "theirs", ours)
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 5 * 32 + 32 * 3 + 3


def test_load_peft_reads_a_peft_trained_prompt(hf, tiny_hf_preset, batch, tmp_path):
    hf.torch.manual_seed(0)
    model = hf.peft.get_peft_model(hf_base(hf, tiny_hf_preset), hf.peft.PromptTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=4))
    with hf.torch.no_grad():  # a trained head, not the fresh one
        for name, parameter in model.named_parameters():
            if "modules_to_save" in name:
                parameter.mul_(1 + 0.5 * hf.torch.randn_like(parameter))
    model.save_pretrained(str(tmp_path))
    expected = torch_logits(hf, model, batch)
    loaded = load_peft(tmp_path, str(tiny_hf_preset))
    assert loaded.model.tuning == Tuning("prompt", TunerConfig(virtual_tokens=4,
                                                               prompt_init="random"))
    difference = np.abs(logits(loaded.model, batch) - expected).max()
    print(f"PEFT-trained prompt read by jax_lora: max |Δlogit| {difference:.1e}")
    assert difference <= TOLERANCE


# ---------------------------------------------------------------- a run of train.py

@pytest.fixture(scope="module")
def prompt_run(tiny_hf_preset, tmp_path_factory, run_env):
    run_dir = tmp_path_factory.mktemp("prompt") / "run"
    train(tiny_hf_preset, run_dir, "--method", "prompt", env=run_env)
    return run_dir


def test_a_run_records_its_count_reloads_and_exports(prompt_run, tiny_hf_preset, batch,
                                                     tmp_path):
    manifest = assert_reloads_to_its_predictions(prompt_run, 1e-5)
    assert manifest["params"]["trainable"] == 20 * 32 + 32 * 3 + 3
    assert manifest["config"]["tuner"]["virtual_tokens"] == 20
    loaded = load_run(prompt_run)
    out = predict(loaded, ["A man plays."], ["Music."], attention_maps=True)
    assert out["attention_maps"].shape[-1] == loaded.sequence_length
    peft_main(["--run-dir", str(prompt_run), "--out", str(tmp_path / "peft")])
    back = load_peft(tmp_path / "peft").model
    np.testing.assert_array_equal(logits(back, batch), logits(loaded.model, batch))
