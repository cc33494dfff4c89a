"""jax_lora adapters as Hugging Face PEFT folders and back (jax_lora/peft_format.py).

The format tests need neither torch nor peft. The tests marked by the `hf` fixture skip without
them; with them they check that the installed PEFT writes exactly our key names and config for
the same setup, loads our folders to our logits, and that PEFT-made adapters load into ours.
"""

import json
import re
import shutil
import types
import warnings

import numpy as np
import pytest
import safetensors.numpy
from flax import nnx
from safetensors import safe_open

from jax_lora.adapter import ADAPTER, adapter_filter, save_adapter
from jax_lora.checkpoint import flat_arrays, replace_arrays
from jax_lora.lora import LORA_TARGETS, LoraConfig
from jax_lora.peft_format import load_peft, main, save_peft
from jax_lora.peft_names import peft_targets
from jax_lora.weights import load_pretrained
from shared.data.watson import SAMPLE_DATA_DIR, load_train

P = "base_model.model."
# Hugging Face BERT's name of each of our targets, written out here independently of the code.
HF_PARTS = {"query": "attention.self.query", "key": "attention.self.key",
            "value": "attention.self.value", "attention_output": "attention.output.dense",
            "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
# name: (LoraConfig, --method, target_modules we expect in adapter_config.json)
SETUPS = {
    "lora": (LoraConfig(rank=4, alpha=8.0, targets=("query", "value")), "lora",
             ["query", "value"]),
    "dora": (LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS, rslora=True, dora=True,
                        dropout=0.1, train_pooler=True), "dora",
             sorted(["query", "key", "value", "attention.output.dense", "intermediate.dense",
                     "output.dense"])),
    # "output.dense" alone would also adapt attention.output.dense: a regex instead.
    "ffn_out": (LoraConfig(rank=2, alpha=3.0, targets=("ffn_out",)), "lora",
                r"(.*\.)?encoder\.layer\.\d+\.(output\.dense)"),
}
# Max |logit difference| between our model and PEFT's on the tiny model with
# hidden_act="gelu_pytorch_tanh", measured: 2.4e-7 (lora), 3.9e-7 (dora), 2.4e-7 (ffn_out);
# with the default erf "gelu" it is 4e-5 to 2.4e-4, the README's caveat.
TANH_TOLERANCE = 2e-6
NUM_LAYERS = 2  # tiny_hf_preset's


def expected_keys(lora: LoraConfig) -> set[str]:
    """PEFT's tensor names for `lora` on the tiny BertForSequenceClassification."""
    keys = {f"{P}classifier.weight", f"{P}classifier.bias"}
    if lora.train_pooler:
        keys |= {f"{P}bert.pooler.dense.weight", f"{P}bert.pooler.dense.bias"}
    leaves = ["lora_A.weight", "lora_B.weight"] + ["lora_magnitude_vector"] * lora.dora
    return keys | {f"{P}bert.encoder.layer.{i}.{HF_PARTS[t]}.{leaf}"
                   for i in range(NUM_LAYERS) for t in lora.targets for leaf in leaves}


def randomize(model, lora: LoraConfig, seed: int = 0) -> None:
    """Every adapter leaf, the head and the pooler (if it trains) changed by random noise, so
    B is nonzero and nothing equals its initial value."""
    state = nnx.state(model, adapter_filter(lora))
    rng = np.random.default_rng(seed)
    arrays = {name: (np.asarray(v) * (1 + 0.2 * rng.standard_normal(v.shape))
                     + 0.2 * rng.standard_normal(v.shape)).astype(np.float32)
              for name, v in flat_arrays(state).items()}
    nnx.update(model, replace_arrays(state, arrays, "randomize"))


def logits(model, batch) -> np.ndarray:
    return np.asarray(model(batch["token_ids"], batch["segment_ids"], batch["padding_mask"]))


def _model(preset, lora=LoraConfig(), pooling="cls"):
    return load_pretrained(str(preset), lora, pooling=pooling).model


@pytest.fixture(scope="module")
def batch(tiny_hf_preset):
    """Six sample rows at length 32: padded rows of several lengths, two segments."""
    tokenizer = load_pretrained(str(tiny_hf_preset), LoraConfig(targets=())).tokenizer
    frame = load_train(SAMPLE_DATA_DIR).head(6)
    return tokenizer(list(frame["premise"]), list(frame["hypothesis"]), 32)


def export(name, preset, batch, root) -> types.SimpleNamespace:
    """SETUPS[name] on the tiny preset with random adapters, head and pooler, exported."""
    lora, method, targets = SETUPS[name]
    pretrained = load_pretrained(str(preset), lora)
    randomize(pretrained.model, lora)
    out = root / name
    save_peft(pretrained.model, out, base_model_name_or_path=str(preset), method=method)
    return types.SimpleNamespace(name=name, lora=lora, method=method, targets=targets,
                                 model=pretrained.model, logits=logits(pretrained.model, batch),
                                 out=out)


@pytest.fixture(scope="module", params=list(SETUPS))
def exported(request, tiny_hf_preset, batch, tmp_path_factory):
    return export(request.param, tiny_hf_preset, batch, tmp_path_factory.mktemp("peft"))


@pytest.fixture(scope="module")
def lora_folder(tiny_hf_preset, batch, tmp_path_factory):
    return export("lora", tiny_hf_preset, batch, tmp_path_factory.mktemp("peft")).out


def read_tensors(folder) -> tuple[dict, dict]:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


# ---------------------------------------------------------------- format, no torch

def test_export_writes_peft_names_layouts_and_config(exported, tiny_hf_preset):
    lora = exported.lora
    assert {p.name for p in exported.out.iterdir()} == {
        "adapter_config.json", "adapter_model.safetensors", "README.md"}
    tensors, metadata = read_tensors(exported.out)
    assert set(tensors) == expected_keys(lora) and metadata == {"format": "pt"}
    ours = flat_arrays(nnx.state(exported.model, adapter_filter(lora)))
    layer = "bert.encoder.layer.1.attention.self.value" if "value" in lora.targets else \
        "bert.encoder.layer.1.output.dense"
    d_in = 64 if layer.endswith("output.dense") else 32
    assert tensors[f"{P}{layer}.lora_A.weight"].shape == (lora.rank, d_in)
    assert tensors[f"{P}{layer}.lora_B.weight"].shape == (32, lora.rank)
    assert tensors[f"{P}classifier.weight"].shape == (3, 32)
    ours_layer = "layers.1." + ("attention.value" if "value" in lora.targets else "ffn_out")
    np.testing.assert_array_equal(tensors[f"{P}{layer}.lora_A.weight"],
                                  np.asarray(ours[f"{ours_layer}.lora_a"]).T)
    np.testing.assert_array_equal(tensors[f"{P}{layer}.lora_B.weight"],
                                  np.asarray(ours[f"{ours_layer}.lora_b"]).T)
    np.testing.assert_array_equal(tensors[f"{P}classifier.weight"],
                                  np.asarray(ours["head.kernel"]).T)
    assert np.abs(tensors[f"{P}{layer}.lora_B.weight"]).min() > 0  # a trained, nonzero B
    if lora.dora:
        np.testing.assert_array_equal(tensors[f"{P}{layer}.lora_magnitude_vector"],
                                      np.asarray(ours[f"{ours_layer}.lora_magnitude"]))
    assert all(t.dtype == np.float32 for t in tensors.values())

    config = json.loads((exported.out / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout",
                                   "use_rslora", "use_dora", "bias", "fan_in_fan_out",
                                   "inference_mode", "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": lora.rank, "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout, "use_rslora": lora.rslora, "use_dora": lora.dora,
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
        "base_model_name_or_path": str(tiny_hf_preset)}
    assert config["target_modules"] == exported.targets
    assert config["modules_to_save"] == ["pooler"] * lora.train_pooler + ["classifier", "score"]
    readme = (exported.out / "README.md").read_text()
    assert "PeftModel.from_pretrained" in readme and "gelu_pytorch_tanh" in readme


def test_round_trip_gives_identical_logits(exported, tiny_hf_preset, batch):
    back = load_peft(exported.out, str(tiny_hf_preset))
    assert back.model.lora == exported.lora
    assert np.abs(exported.logits).max() > 0.1
    np.testing.assert_array_equal(logits(back.model, batch), exported.logits)


def test_a_pooler_that_is_not_the_bases_is_saved(tiny_hf_preset, batch, tmp_path):
    """A run whose pooler came from an --init-from parent (adapter.json "pooler": true) but did
    not train it: PEFT must still get it, as a module to save."""
    model = _model(tiny_hf_preset, LoraConfig(rank=2))
    model.pooler.kernel[...] = model.pooler.kernel[...] * 1.5
    save_peft(model, tmp_path / "with", base_model_name_or_path="b", method="lora", pooler=True)
    save_peft(model, tmp_path / "without", base_model_name_or_path="b", method="lora")
    config = json.loads((tmp_path / "with" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["pooler", "classifier", "score"]
    assert f"{P}bert.pooler.dense.weight" in read_tensors(tmp_path / "with")[0]
    expected = logits(model, batch)
    back = load_peft(tmp_path / "with", str(tiny_hf_preset))
    np.testing.assert_array_equal(logits(back.model, batch), expected)
    lost = load_peft(tmp_path / "without", str(tiny_hf_preset))
    assert np.abs(logits(lost.model, batch) - expected).max() > 1e-3


def test_a_target_list_with_output_dense_also_adapts_attention_output():
    """Why ffn_out alone is written as a regex: PEFT matches list entries by name suffix."""
    config = {"target_modules": ["output.dense"]}
    assert peft_targets(config, "bert.encoder.layer.0.attention.output.dense")
    regex = {"target_modules": SETUPS["ffn_out"][2]}
    assert peft_targets(regex, "bert.encoder.layer.0.output.dense")
    assert not peft_targets(regex, "bert.encoder.layer.0.attention.output.dense")


@pytest.mark.parametrize("pooling, method, match", [
    ("mean", "lora", "--pooling mean: .*BertForSequenceClassification classifies from"),
    ("cls", "full", "--method full: .*python -m jax_lora.export"),
    ("cls", "probe", "--method probe: .*python -m jax_lora.export"),
    ("cls", "dora", "--method dora: the model's adapters .* do not match"),
])
def test_export_refuses_what_peft_cannot_hold(tiny_hf_preset, tmp_path, pooling, method, match):
    model = _model(tiny_hf_preset, pooling=pooling)
    with pytest.raises(ValueError, match=match) as error:
        save_peft(model, tmp_path / "out", base_model_name_or_path="b", method=method)
    assert "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no folder, no staging folder


def test_export_refuses_a_folder_with_files(tiny_hf_preset, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="--out .*not empty"):
        save_peft(_model(tiny_hf_preset), tmp_path, base_model_name_or_path="b", method="lora")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_cli_exports_a_run_and_refuses_a_probe_or_a_keras_base(tiny_hf_preset, tmp_path,
                                                                capsys):
    keras_preset = tmp_path / "keras_preset"  # what shared.runs.presets takes for one
    keras_preset.mkdir()
    (keras_preset / "model.weights.h5").write_bytes(b"")
    for run, method, lora in (("lora", "lora", LoraConfig(rank=2)),
                              ("probe", "probe", LoraConfig(targets=())),
                              ("keras", "lora", LoraConfig(rank=2))):
        pretrained = load_pretrained(str(tiny_hf_preset), lora)
        source = {**pretrained.source, "preset": str(keras_preset)} if run == "keras" else \
            pretrained.source
        save_adapter(tmp_path / run / ADAPTER, pretrained.model, source, method=method)
    main(["--run-dir", str(tmp_path / "lora"), "--out", str(tmp_path / "lora_peft")])
    config = json.loads((tmp_path / "lora_peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_hf_preset) and config["r"] == 2
    for run, error in (("probe", "error: --method probe:"), ("keras", "error: --base-model:")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--run-dir", str(tmp_path / run), "--out", str(tmp_path / f"{run}_peft")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(error) and "\n" not in err
        assert not (tmp_path / f"{run}_peft").exists()


def _edit(folder, tmp_path, config=None, tensors=None):
    """A copy of an exported folder with config fields set and tensors changed (None drops)."""
    copy = tmp_path / "edited"
    shutil.copytree(folder, copy)
    path = copy / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **(config or {})}))
    if tensors:
        arrays = {**read_tensors(copy)[0], **tensors}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        safetensors.numpy.save_file(arrays, str(copy / "adapter_model.safetensors"))
    return copy


B0 = f"{P}bert.encoder.layer.0.attention.self.query.lora_B.weight"


@pytest.mark.parametrize("config, tensors, match", [
    ({"peft_type": "LOHA"}, None, "peft_type='LOHA': only LORA, IA3"),
    ({"bias": "all"}, None, "bias='all': jax_lora does not support it"),
    ({"fan_in_fan_out": True}, None, "fan_in_fan_out=True"),
    ({"layers_to_transform": [0]}, None, "layers_to_transform=\\[0\\]"),
    ({"init_lora_weights": "pissa"}, None, "rewrites the base weights"),
    ({"target_modules": ["dense"]}, None, "selects bert.pooler.dense, not one of BERT's"),
    ({"target_modules": r".*\.0\.attention\.self\.query"}, None, "in layers \\[0\\] only"),
    ({"modules_to_save": ["LayerNorm"]}, None, "modules_to_save=.*saves bert.embeddings"),
    (None, {B0: None}, f"tensor {re.escape(B0)} is missing"),
    (None, {f"{P}bert.pooler.dense.bias": np.zeros(32, np.float32)}, "has no place"),
    (None, {B0: np.zeros((4, 32), np.float32)}, "has shape \\(4, 32\\), the model needs"),
])
def test_import_refuses_what_our_model_cannot_hold(lora_folder, tiny_hf_preset, tmp_path,
                                                   config, tensors, match):
    with pytest.raises(ValueError, match=match) as error:
        load_peft(_edit(lora_folder, tmp_path, config, tensors), str(tiny_hf_preset))
    assert "\n" not in str(error.value)


def test_import_reads_safetensors_only(lora_folder, tmp_path):
    copy = _edit(lora_folder, tmp_path)
    (copy / "adapter_model.safetensors").rename(copy / "adapter_model.bin")
    with pytest.raises(FileNotFoundError, match="adapter_model.bin .*only safetensors"):
        load_peft(copy)


# ---------------------------------------------------------------- against torch + PEFT



def torch_logits(hf, model, batch) -> np.ndarray:
    ids = {name: hf.torch.tensor(batch[ours]).long() for name, ours in (
        ("input_ids", "token_ids"), ("token_type_ids", "segment_ids"),
        ("attention_mask", "padding_mask"))}
    with hf.torch.no_grad():
        return model.eval()(**ids).logits.numpy()


def test_peft_loads_our_folder_to_our_logits(hf, exported, tiny_hf_preset, batch):
    differences = {}
    for act in ("gelu_pytorch_tanh", "gelu"):
        base = hf.Bert.from_pretrained(str(tiny_hf_preset), num_labels=3, hidden_act=act)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = hf.peft.PeftModel.from_pretrained(base, str(exported.out))
        # PEFT warns about missing or unexpected adapter keys; there must be none.
        assert not [w for w in caught if "keys" in str(w.message).lower()]
        differences[act] = np.abs(torch_logits(hf, model, batch) - exported.logits).max()
    print(f"{exported.name}: max |logit difference| {differences}")
    assert differences["gelu_pytorch_tanh"] <= TANH_TOLERANCE
    assert differences["gelu"] > 10 * max(differences["gelu_pytorch_tanh"], 1e-7)


def test_peft_writes_our_names_and_config(hf, exported, tiny_hf_preset, tmp_path):
    """The same setup made with PEFT itself: the same tensor names and shapes, the same
    adapter_config.json (target_modules as a set; PEFT keeps a list as a set)."""
    lora = exported.lora
    config = hf.peft.LoraConfig(
        task_type="SEQ_CLS", r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=exported.targets, use_rslora=lora.rslora, use_dora=lora.dora,
        modules_to_save=["pooler"] if lora.train_pooler else None)
    base = hf.Bert.from_pretrained(str(tiny_hf_preset), num_labels=3)
    hf.peft.get_peft_model(base, config).save_pretrained(str(tmp_path))
    theirs, ours = read_tensors(tmp_path), read_tensors(exported.out)
    assert set(theirs[0]) == set(ours[0]) == expected_keys(lora)
    assert {k: v.shape for k, v in theirs[0].items()} == {k: v.shape for k, v in ours[0].items()}
    assert theirs[1] == ours[1]
    their_config, our_config = (json.loads((folder / "adapter_config.json").read_text())
                                for folder in (tmp_path, exported.out))
    for config in (their_config, our_config):
        if isinstance(config["target_modules"], list):
            config["target_modules"] = sorted(config["target_modules"])
    assert their_config == our_config


# Adapters made by PEFT (B random from the start), as a PEFT user would configure them:
# (target_modules, use_dora + rslora + pooler, the targets we should read).
FOREIGN = [(["query", "value"], False, ("query", "value")),
           (["query", "key", "value", "dense"], True, ("query", "key", "value",
                                                       "attention_output", "ffn_in", "ffn_out")),
           (["output.dense"], False, ("attention_output", "ffn_out"))]


@pytest.mark.parametrize("targets, dora, ours", FOREIGN)
def test_load_peft_reads_peft_made_adapters(hf, tiny_hf_preset, batch, tmp_path, targets, dora,
                                            ours):
    hf.torch.manual_seed(0)
    config = hf.peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets,
                                use_dora=dora, use_rslora=dora, init_lora_weights=False,
                                modules_to_save=["pooler"] if dora else None)
    base = hf.Bert.from_pretrained(str(tiny_hf_preset), num_labels=3,
                                   hidden_act="gelu_pytorch_tanh")
    model = hf.peft.get_peft_model(base, config)
    with hf.torch.no_grad():  # move magnitudes and the saved pooler off their initial values
        for name, parameter in model.named_parameters():
            if "lora_magnitude_vector" in name or "modules_to_save" in name:
                parameter.mul_(1 + 0.2 * hf.torch.randn_like(parameter))
    model.save_pretrained(str(tmp_path))
    expected = torch_logits(hf, model, batch)
    loaded = load_peft(tmp_path, str(tiny_hf_preset))
    assert loaded.model.lora.targets == ours and loaded.model.lora.dora == dora
    assert loaded.model.lora.train_pooler == dora
    assert np.abs(logits(loaded.model, batch) - expected).max() <= TANH_TOLERANCE
