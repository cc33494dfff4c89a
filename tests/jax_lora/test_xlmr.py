"""XLM-RoBERTa in jax_lora (issue #20) against keras-hub (TensorFlow, in a subprocess) and a
Hugging Face folder's own tokenizer.json: the same ids, the same weights from either folder,
the same logits and hidden states within 1e-5, and every jax_lora method on top."""

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jax_lora.adapter import read_adapter_meta
from jax_lora.inference import load_run
from jax_lora.lora import LORA_TARGETS, LoraConfig, merge_lora, trainable_filter
from jax_lora.quant import quantize_base
from jax_lora.quant_codec import QuantCodes
from jax_lora.weights import WeightsError, load_head, load_pretrained
from jax_lora.xlmr_tokenizer import XLMRobertaTokenizer
from shared.data.watson import SAMPLE_DATA_DIR, load_test, load_train
from shared.runs.run_dir import read_run
from tests.jax_lora.helpers import (assert_reloads_to_its_predictions, recorded_gap,
                                   tokenizer_json_arrays)
from tests.jax_lora.trainer_process import run_trainer
from tests.xlmr_fixtures import TINY_XLMR_CONFIG, XLMR_RULE_GAPS

TOLERANCE = 1e-5
LENGTHS = (512, 64, 32)  # keras_reference.XLMR_LENGTHS; 32 cuts many pairs
UNCUT = 512  # no sample pair is cut here (checked), so tokenizer.json's packing is comparable
FIELDS = ("token_ids", "padding_mask")
REPO = Path(__file__).resolve().parents[2]


def _pretrained(preset, lora=LoraConfig(targets=()), **kwargs):
    return load_pretrained(str(preset), lora, **kwargs)


def _differing_rows(ours: dict, theirs: dict, length: int) -> np.ndarray:
    return np.flatnonzero(np.any([(ours[f] != theirs[f"{f}_{length}"]).any(axis=1)
                                  for f in FIELDS], axis=0))


def _gap_rows(pairs: dict) -> set[int]:
    gaps = {text for text, _ in XLMR_RULE_GAPS}
    return {i for i, text in enumerate(pairs["premise"]) if text in gaps}


# ---------------------------------------------------------------- token ids

def test_ids_match_keras_hub_on_sample_and_edge_cases(xlmr_reference):
    pairs = xlmr_reference["pairs"]
    pretrained = _pretrained(xlmr_reference["keras"])
    tokenizer = pretrained.tokenizer
    assert isinstance(tokenizer, XLMRobertaTokenizer) and tokenizer.source.endswith(".spm")
    vocabulary = tokenizer.vocabulary  # fairseq's order, as keras-hub's get_vocabulary
    assert vocabulary[:4] == ["<s>", "<pad>", "</s>", "<unk>"] and vocabulary[-1] == "<mask>"
    assert len(vocabulary) == pretrained.config.vocab_size
    reference = dict(np.load(xlmr_reference["root"] / "xlmr_tokens.npz"))
    for length in LENGTHS:
        ours = tokenizer(pairs["premise"], pairs["hypothesis"], length)
        rows = _differing_rows(ours, reference, length)
        assert not rows.size, (f"length {length}: {rows.size} rows differ, first "
                               f"{pairs['premise'][rows[0]]!r} / {pairs['hypothesis'][rows[0]]!r}")
        assert not ours["segment_ids"].any()  # keras-hub drops them; the model has none
    ids, mask = reference["token_ids_32"], reference["padding_mask_32"]
    assert (mask.sum(axis=1) == 32).sum() > 100  # truncation exercised on many rows
    assert (ids[:, :1] == 0).all() and ((ids == 2).sum(axis=1) >= 3).all()  # <s>, 3 x </s>
    assert (reference["token_ids_512"] == 3).any()  # SentencePiece's <unk> moved to 3


def test_hf_folder_ids_match_its_tokenizer_json(xlmr_reference):
    pairs = xlmr_reference["pairs"]
    tokenizer = _pretrained(xlmr_reference["hf"]).tokenizer
    assert tokenizer.source.endswith("tokenizer.json")
    theirs = tokenizer_json_arrays(xlmr_reference["hf"] / "tokenizer.json", pairs, UNCUT, "<pad>")
    ours = tokenizer(pairs["premise"], pairs["hypothesis"], UNCUT)
    for field in ("token_ids", "segment_ids", "padding_mask"):
        rows = np.flatnonzero((ours[field] != theirs[field]).any(axis=1))
        assert not rows.size, f"{field} differs from tokenizer.json on {rows.size} rows"


def test_hf_folder_tokenizes_as_keras_hub_but_for_literal_special_tokens(xlmr_reference,
                                                                         tmp_path):
    """keras-hub's converter reads sentencepiece.bpe.model, which knows no special tokens in
    text; a tokenizer.json splits them off first. Every other row is the same; without a
    tokenizer.json the folder's SentencePiece model gives keras-hub's ids on every row."""
    pairs, hf = xlmr_reference["pairs"], xlmr_reference["hf"]
    keras_hub_ids = dict(np.load(xlmr_reference["root"] / "xlmr_hf_tokens.npz"))
    spm_only = tmp_path / "spm_only"
    shutil.copytree(hf, spm_only)
    (spm_only / "tokenizer.json").unlink()
    for folder, expected in ((hf, _gap_rows(pairs)), (spm_only, set())):
        tokenizer = _pretrained(folder).tokenizer
        for length in LENGTHS:
            ours = tokenizer(pairs["premise"], pairs["hypothesis"], length)
            assert set(_differing_rows(ours, keras_hub_ids, length)) == expected, folder.name


# ---------------------------------------------------------------- weights and numbers

def test_both_folders_give_the_same_model_with_keras_hubs_choices(xlmr_reference):
    keras, hf = (_pretrained(xlmr_reference[name]) for name in ("keras", "hf"))
    assert keras.config == hf.config
    assert (xlmr_reference["keras"] / "assets" / "tokenizer" / "vocabulary.spm").read_bytes() \
        == (xlmr_reference["hf"] / "sentencepiece.bpe.model").read_bytes()
    config = keras.config
    assert (config.architecture, config.layer_norm_epsilon, config.num_segments,
            config.head_dropout) == ("xlm_roberta", 1e-5, 0, 0.0)
    assert config.max_sequence_length == TINY_XLMR_CONFIG["max_position_embeddings"] - 2
    model = hf.model
    assert not hasattr(model, "pooler") and not hasattr(model.embeddings, "segment_embedding")
    assert not any(layer.approximate_gelu for layer in model.layers)  # erf GELU
    tensors = load_file(xlmr_reference["hf"] / "model.safetensors")
    np.testing.assert_array_equal(  # keras-hub's converter: rows [2:] + token type 0
        model.embeddings.position_embedding.embedding[...],
        tensors["roberta.embeddings.position_embeddings.weight"][2:]
        + tensors["roberta.embeddings.token_type_embeddings.weight"][0])
    frozen = nnx.Not(nnx.PathContains("head"))
    a, b = (nnx.to_flat_state(nnx.state(m.model, frozen)) for m in (keras, hf))
    assert [path for path, _ in a] == [path for path, _ in b]
    for (path, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x.get_value(), y.get_value(), err_msg=str(path))


@pytest.mark.parametrize("name", ["keras", "hf"])
def test_flax_matches_keras_hub(xlmr_reference, name):
    reference = dict(np.load(xlmr_reference["root"] / "xlmr_outputs.npz"))
    pretrained = _pretrained(xlmr_reference[name], LoraConfig(rank=4, targets=LORA_TARGETS))
    load_head(pretrained.model, str(xlmr_reference[name]))  # the folder's own head
    token_ids, mask = reference["token_ids"], reference["padding_mask"]
    assert len(set(mask.sum(axis=1))) > 3  # rows of different lengths: padding is exercised
    # Segment ids are ignored: XLM-R has no segment embedding (random ones must not matter).
    segments = np.random.default_rng(0).integers(0, 2, token_ids.shape).astype(np.int32)
    out = nnx.jit(lambda m: m.encode(token_ids, segments, mask))(pretrained.model)
    errors = {field: float(np.abs(out[field] - reference[field]).max())
              for field in ("logits", "sequence_output")}
    for layer, hidden in enumerate(out["hidden_states"]):
        errors[f"hidden_{layer}"] = float(np.abs(hidden - reference["hidden_states"][layer]).max())
    call = nnx.jit(lambda m: m(token_ids, segments, mask))(pretrained.model)  # cls_only path
    errors["logits_cls_only"] = float(np.abs(call - reference["logits"]).max())
    print(name, {k: f"{v:.2e}" for k, v in errors.items()})
    assert np.abs(reference["logits"]).max() > 0.5  # not trivially small
    assert max(errors.values()) <= TOLERANCE, errors


def test_unsupported_architectures_fail_with_one_line(xlmr_reference, tmp_path):
    cases = [("hf", "model_type", "roberta", r"model_type='roberta'; supported: bert, "
                                             r"xlm-roberta"),
             ("hf", "pad_token_id", 0, r"pad_token_id=0; only 1"),
             ("keras", "class_name", "RobertaBackbone",
              r"class_name='RobertaBackbone'; supported: BertBackbone, XLMRobertaBackbone")]
    for index, (name, field, value, message) in enumerate(cases):
        folder = tmp_path / str(index)
        shutil.copytree(xlmr_reference[name], folder)
        config = json.loads((folder / "config.json").read_text())
        config[field] = value
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(WeightsError, match=message) as err:
            _pretrained(folder)
        assert "config.json" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- jax_lora methods

def _logits(model, inputs):
    return np.asarray(nnx.jit(lambda m: m(*inputs))(model))


@pytest.fixture(scope="module")
def inputs(xlmr_reference):
    reference = np.load(xlmr_reference["root"] / "xlmr_outputs.npz")
    ids = reference["token_ids"]
    return ids, np.zeros_like(ids), reference["padding_mask"]


def _randomize_adapters(model, scale=0.3):
    for index, (_, module) in enumerate(nnx.iter_modules(model)):
        if hasattr(module, "lora_b"):
            key = jax.random.fold_in(jax.random.key(1), index)
            module.lora_b[...] = scale * jax.random.normal(key, module.lora_b.shape)


def test_adapters_at_b_zero_equal_the_base_and_merge_exactly(xlmr_reference, inputs):
    preset = xlmr_reference["keras"]
    base = _pretrained(preset).model
    load_head(base, str(preset))
    expected = _logits(base, inputs)
    for dora in (False, True):
        lora = LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS, dora=dora)
        adapted = _pretrained(preset, lora).model
        load_head(adapted, str(preset))
        gap = np.abs(_logits(adapted, inputs) - expected).max()
        assert gap <= 1e-6, f"dora={dora}: B = 0 moved the logits by {gap}"
        _randomize_adapters(adapted)
        moved = _logits(adapted, inputs)
        assert np.abs(moved - expected).max() > 1e-2  # the adapters are wired in
        merged = _logits(merge_lora(adapted), inputs)
        assert np.abs(merged - moved).max() <= TOLERANCE


def test_probe_full_qlora_and_mean_pooling_work_on_xlmr(xlmr_reference, inputs):
    preset = str(xlmr_reference["keras"])
    model = _pretrained(preset).model
    trained = {path for path, _ in nnx.to_flat_state(
        nnx.state(model, trainable_filter(LoraConfig(targets=()))))}
    assert trained == {("head", layer, leaf) for layer in ("dense", "out_proj")
                       for leaf in ("kernel", "bias")}  # probe: the whole XLM-R head
    everything = nnx.state(model, trainable_filter(LoraConfig(targets=()), full=True))
    assert len(nnx.to_flat_state(everything)) == len(nnx.to_flat_state(nnx.state(model,
                                                                                  nnx.Param)))
    # QLoRA: the loader quantizes tensor by tensor what quantize_base quantizes at once; the
    # head is never stored.
    lora = LoraConfig(rank=4, targets=LORA_TARGETS)
    stored = _pretrained(preset, lora, base_dtype="nf4").model
    reference = _pretrained(preset, lora).model
    quantize_base(reference, "nf4")
    assert len(nnx.to_flat_state(nnx.state(stored, QuantCodes))) == 6 * 2
    assert isinstance(stored.head.dense.kernel, nnx.Param)
    np.testing.assert_array_equal(_logits(stored, inputs), _logits(reference, inputs))
    # Mean pooling: the head reads the mean of the real tokens' last hidden states.
    mean = _pretrained(preset, pooling="mean").model
    out = nnx.jit(lambda m: m.encode(*inputs))(mean)
    weights = inputs[2][..., None]
    expected = (np.asarray(out["sequence_output"]) * weights).sum(1) / weights.sum(1)
    np.testing.assert_allclose(out["pooled_output"], expected, atol=1e-6)
    np.testing.assert_allclose(out["logits"], mean.head(out["pooled_output"]), atol=1e-6)
    with pytest.raises(ValueError, match="XLM-R has no pooler"):
        _pretrained(preset, dataclasses.replace(lora, train_pooler=True))


def test_dropout_sites_and_the_heads_rate(xlmr_reference, inputs):
    """The encoder drops at its config rate; keras-hub's XLMRobertaTextClassifier head at 0.0."""
    model = _pretrained(xlmr_reference["keras"]).model
    eval_logits = _logits(model, inputs)
    key = jax.random.key(3)
    train = nnx.jit(lambda m, k: m(*inputs, dropout_key=k))
    assert np.abs(np.asarray(train(model, key)) - eval_logits).max() > 1e-3
    for module in (model.embeddings, *model.layers, *(layer.attention for layer in model.layers)):
        module.rate = 0.0
    # With the encoder's dropout off, only the head could drop: its rate is 0.
    assert model.head.rate == 0.0
    np.testing.assert_allclose(np.asarray(train(model, key)), eval_logits, atol=1e-6)


# ---------------------------------------------------------------- end to end

def test_loading_and_tokenizing_never_import_tensorflow(xlmr_reference):
    script = ("import sys\nfrom jax_lora.lora import LoraConfig\n"
              "from jax_lora.weights import load_pretrained\n"
              "for preset in sys.argv[1:]:\n"
              "    load_pretrained(preset, LoraConfig(targets=())).tokenizer(['a'], ['b'], 8)\n"
              "assert 'tensorflow' not in sys.modules, 'jax_lora imported TensorFlow'\n")
    done = subprocess.run([sys.executable, "-c", script, str(xlmr_reference["keras"]),
                           str(xlmr_reference["hf"])], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]


CLI = ["--data-dir", str(SAMPLE_DATA_DIR), "--limit", "100", "--sequence-length", "32",
       "--batch-per-device", "4", "--quiet"]


def assert_reloads(run_dir) -> dict:
    """The run finished on XLM-R and loads back to its own predictions; its manifest."""
    manifest = assert_reloads_to_its_predictions(run_dir, TOLERANCE)
    assert manifest["preprocessing"]["tokenizer"] == "sentencepiece"
    assert read_adapter_meta(run_dir / "adapter")["bert_config"]["architecture"] == "xlm_roberta"
    return manifest


def test_the_cli_trains_lora_on_the_tiny_xlmr_preset(xlmr_reference, run_env, tmp_path):
    run_dir = tmp_path / "run"
    run_trainer(xlmr_reference["keras"], run_dir, *CLI, "--epochs", "1", env=run_env)
    assert_reloads(run_dir)
    meta = read_adapter_meta(run_dir / "adapter")
    assert {"head.dense.kernel", "head.out_proj.kernel"} <= set(meta["parameters"])


def test_every_method_trains_on_the_tiny_xlmr_preset_through_the_cli(xlmr_reference, run_env,
                                                                    tmp_path):
    """dora, full, probe, NF4-LoRA and LP->LoRA (from the probe's run), a few steps each, end
    to end: each run finishes, names its method, and reloads to its own predictions."""
    runs = {"probe": ["--method", "probe"], "dora": ["--method", "dora"],
            "full": ["--method", "full"], "qlora_nf4": ["--base-dtype", "nf4"],
            "lp_lora": ["--init-from", str(tmp_path / "probe")]}
    for name, flags in runs.items():
        run_trainer(xlmr_reference["hf"], tmp_path / name, *CLI, "--max-steps", "3", *flags,
                    env=run_env)
        manifest = assert_reloads(tmp_path / name)
        assert manifest["config"]["method"] == {"qlora_nf4": "lora", "lp_lora": "lora"}.get(
            name, name)
    assert read_run(tmp_path / "lp_lora").manifest["parent"]["method"] == "probe"
    assert read_run(tmp_path / "qlora_nf4").manifest["model"]["base_dtype"] == "nf4"


# ---------------------------------------------------------------- all of Watson

@pytest.mark.slow
def test_ids_match_keras_hub_and_tokenizer_json_on_all_watson_rows(watson_dir, xlmr_reference,
                                                                   keras_reference, tmp_path):
    """Every train + test row, with the sample-trained SentencePiece model (so many <unk>):
    the keras preset's ids are keras-hub's, the folder's are its tokenizer.json's."""
    frames = [load_train(watson_dir), load_test(watson_dir)]
    assert [len(frame) for frame in frames] == [12120, 5195]
    pairs = {field: [text for frame in frames for text in frame[field]]
             for field in ("premise", "hypothesis")}
    (tmp_path / "pairs.json").write_text(json.dumps(pairs), encoding="utf-8")
    keras_reference("xlmr_tokenize", xlmr_reference["keras"], tmp_path / "pairs.json",
                    tmp_path / "watson.npz", 512, 64)
    reference = dict(np.load(tmp_path / "watson.npz"))
    tokenizer = _pretrained(xlmr_reference["keras"]).tokenizer
    for length in (512, 64):
        ours = tokenizer(pairs["premise"], pairs["hypothesis"], length)
        rows = _differing_rows(ours, reference, length)
        assert not rows.size, f"length {length}: {rows.size} Watson rows differ from keras-hub"
    assert (reference["padding_mask_64"].sum(axis=1) == 64).sum() > 1000
    assert (reference["token_ids_512"] == 3).sum() > 1000  # characters the sample lacks
    # The folder's tokenizer.json: what `tokenizers` gives (at a length that cuts no Watson
    # pair), and keras-hub's ids for the same SentencePiece model, which keras-hub's converter
    # reads for the folder: both trainers see the same ids.
    hf_tokenizer = _pretrained(xlmr_reference["hf"]).tokenizer
    theirs = tokenizer_json_arrays(xlmr_reference["hf"] / "tokenizer.json", pairs, 1024, "<pad>")
    ours = hf_tokenizer(pairs["premise"], pairs["hypothesis"], 1024)
    rows = np.flatnonzero((ours["token_ids"] != theirs["token_ids"]).any(axis=1))
    assert not rows.size, f"{rows.size} Watson rows differ from tokenizer.json"
    rows = _differing_rows(hf_tokenizer(pairs["premise"], pairs["hypothesis"], 512), reference,
                           512)
    assert not rows.size, f"{rows.size} Watson rows differ from keras-hub's for the folder"
