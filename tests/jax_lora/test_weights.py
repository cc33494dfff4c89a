"""Weight import: every tensor lands where it belongs, anything unexpected fails loudly."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jax_lora.lora import LoraConfig, LoraParam
from jax_lora.models import BertConfig
from jax_lora.weights import WeightsError, load_pretrained
from shared.data.watson import file_sha256
from shared.runs.presets import KERAS_PRESET_FILES, describe_preset

LORA = LoraConfig(rank=2, targets=("query", "value"))
REPO = Path(__file__).resolve().parents[2]


def _edited_hf_copy(source, target, edit):
    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    edit(tensors)
    save_file(tensors, str(target / "model.safetensors"))
    return str(target)


def test_hf_folder_maps_every_tensor(tiny_hf_preset):
    pretrained = load_pretrained(str(tiny_hf_preset), LORA)
    assert pretrained.config == BertConfig(
        vocab_size=len((tiny_hf_preset / "vocab.txt").read_text().splitlines()), hidden_dim=32,
        num_layers=2, num_heads=2, intermediate_dim=64, max_sequence_length=128)
    assert pretrained.source == describe_preset(str(tiny_hf_preset))
    assert pretrained.source["kind"] == "hf" and pretrained.source["files"][
        "model.safetensors"] == file_sha256(tiny_hf_preset / "model.safetensors")
    tensors = load_file(tiny_hf_preset / "model.safetensors")
    layer = pretrained.model.layers[1]
    np.testing.assert_array_equal(layer.attention.value.kernel[...],
                                  tensors["encoder.layer.1.attention.self.value.weight"].T)
    np.testing.assert_array_equal(layer.ffn_layer_norm.scale[...],
                                  tensors["encoder.layer.1.output.LayerNorm.weight"])
    np.testing.assert_array_equal(pretrained.model.embeddings.segment_embedding.embedding[...],
                                  tensors["embeddings.token_type_embeddings.weight"])
    assert not np.asarray(layer.attention.value.lora_b[...]).any()
    assert pretrained.tokenizer.normalizer.lowercase is True  # the folder's own text rules


def test_head_and_adapters_start_fresh_from_the_seed(tiny_hf_preset):
    first, again, other = (load_pretrained(str(tiny_hf_preset), LORA, seed=s).model
                           for s in (0, 0, 1))
    fresh = nnx.Any(LoraParam, nnx.PathContains("head"))
    for (_, a), (_, b), (_, c) in zip(*(nnx.to_flat_state(nnx.state(m, fresh))
                                        for m in (first, again, other))):
        np.testing.assert_array_equal(a.get_value(), b.get_value())
    np.testing.assert_array_equal(first.pooler.kernel[...], other.pooler.kernel[...])
    assert not np.allclose(first.head.kernel[...], other.head.kernel[...])
    assert not np.allclose(first.layers[0].attention.query.lora_a[...],
                           other.layers[0].attention.query.lora_a[...])


def test_prefixed_checkpoint_with_pretraining_heads_loads(tiny_hf_preset, tmp_path):
    """bert-base-* folders name tensors bert.* and carry cls.* MLM/NSP heads."""
    def edit(tensors):
        for name in list(tensors):
            tensors["bert." + name] = tensors.pop(name)
        tensors["cls.predictions.bias"] = np.zeros(3, np.float32)
    preset = _edited_hf_copy(tiny_hf_preset, tmp_path / "prefixed", edit)
    assert load_pretrained(preset, LORA).config.num_layers == 2


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update({"encoder.layer.0.extra.weight": np.zeros(2, np.float32)}),
     r"tensor encoder\.layer\.0\.extra\.weight has no place"),
    (lambda t: t.pop("encoder.layer.1.output.dense.bias"),
     r"no tensor for parameter layers/1/ffn_out/bias"),
    (lambda t: t.update({"pooler.dense.weight": np.zeros((32, 31), np.float32)}),
     r"tensor pooler\.dense\.weight has shape \(31, 32\)"),
    (lambda t: t.update({"bert.pooler.dense.bias": t["pooler.dense.bias"]}),
     r"tensor (bert\.)?pooler\.dense\.bias has no place in the model \(already set from "
     r"(bert\.)?pooler\.dense\.bias pooler/bias\)"),
])
def test_mismatched_checkpoint_fails_with_one_line(tiny_hf_preset, tmp_path, edit, message):
    preset = _edited_hf_copy(tiny_hf_preset, tmp_path / "edited", edit)
    with pytest.raises(WeightsError, match=message) as err:
        load_pretrained(preset, LORA)
    assert "model.safetensors" in str(err.value) and "\n" not in str(err.value)


def test_keras_preset_folder_loads(tiny_keras_preset):
    pretrained = load_pretrained(str(tiny_keras_preset), LORA)
    assert pretrained.config == BertConfig(
        vocab_size=len(pretrained.tokenizer.vocabulary), hidden_dim=32, num_layers=2,
        num_heads=2, intermediate_dim=64, max_sequence_length=128)
    assert pretrained.source == describe_preset(str(tiny_keras_preset))
    assert pretrained.source["kind"] == "keras_dir" and pretrained.source["files"][
        "model.weights.h5"] == file_sha256(tiny_keras_preset / "model.weights.h5")
    assert pretrained.tokenizer.lowercase is False


# keras-hub 0.32 maps the built-in name bert_base_multi to this Kaggle handle (BUILTIN_PRESETS);
# its get_file hands a kaggle:// handle to kagglehub.model_download. For a versioned handle
# kagglehub (1.0) returns <cache>/models/<owner>/<model>/<framework>/<variation>/<version>/<file>
# without asking the API when that file and its completion marker
# <cache>/models/<owner>/<model>/<framework>/<variation>/.complete/<version>/<file>.complete
# both exist (<cache> is $KAGGLEHUB_CACHE); without the marker it downloads the file again. An
# unversioned handle would first ask the API for the latest version.
KAGGLE_HANDLE = "keras/bert/keras/bert_base_multi/3"
# Runs in a fresh interpreter: importing keras_hub imports TensorFlow, which pytest never does.
# Sockets are refused, so the name must resolve from the cache alone.
RESOLVE_OFFLINE = """
import dataclasses, json, socket, sys
def refuse(*args, **kwargs):
    raise OSError("offline test: no network")
socket.socket.connect = socket.socket.connect_ex = socket.getaddrinfo = refuse
from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS
from jax_lora.lora import LoraConfig
from jax_lora.weights import load_pretrained
from shared.runs.presets import PresetError, resolve_preset_name
handle = BUILTIN_PRESETS["bert_base_multi"]["kaggle_handle"]
assert handle == "kaggle://" + sys.argv[1], f"keras-hub now maps bert_base_multi to {handle}"
directory = resolve_preset_name("bert_base_multi")
pretrained = load_pretrained("bert_base_multi", LoraConfig(rank=2, targets=("query", "value")))
try:
    resolve_preset_name("bert_base_en")  # a built-in name that is not cached
    uncached = None
except PresetError as err:
    uncached = str(err)
print(json.dumps({"directory": str(directory), "source": pretrained.source,
                  "config": dataclasses.asdict(pretrained.config),
                  "token_embedding_sum": float(pretrained.model.embeddings.token_embedding
                                               .embedding[...].sum()),
                  "uncached": uncached}))
"""


@pytest.fixture(scope="module")
def offline_name_resolution(tiny_keras_preset, tmp_path_factory):
    """The tiny keras preset cached as kagglehub caches bert_base_multi, then resolved by name
    in a subprocess with the network refused; returns what the subprocess saw."""
    root = tmp_path_factory.mktemp("kagglehub")
    owner, model, framework, variation, version = KAGGLE_HANDLE.split("/")
    base = root / "cache" / "models" / owner / model / framework / variation
    for name in KERAS_PRESET_FILES:
        (base / version / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny_keras_preset / name, base / version / name)
        marker = base / ".complete" / version / f"{name}.complete"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    # An empty home and Kaggle config folder: no credentials of the machine are read.
    (root / "home").mkdir()
    env = {key: value for key, value in os.environ.items()
           if key not in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")}
    env.update(KAGGLEHUB_CACHE=str(root / "cache"), HOME=str(root / "home"),
               KAGGLE_CONFIG_DIR=str(root / "home"), PYTHONPATH=str(REPO),
               TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, "-c", RESOLVE_OFFLINE, KAGGLE_HANDLE], env=env,
                            cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise AssertionError(f"offline name resolution failed:\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]),
            "cached": base / version}


def test_preset_name_resolves_from_the_kagglehub_cache(offline_name_resolution,
                                                        tiny_keras_preset):
    """keras-hub's real get_file, kagglehub's real cache lookup, no network."""
    seen = offline_name_resolution
    assert seen["directory"] == str(seen["cached"])
    source = seen["source"]
    assert (source["preset"], source["kind"]) == ("bert_base_multi", "name")
    assert source["directory"] == str(seen["cached"].resolve())
    # The same files as the folder it was copied from: the same checksums and the same model.
    assert source["sha256"] == describe_preset(str(tiny_keras_preset))["sha256"]
    direct = load_pretrained(str(tiny_keras_preset), LORA)
    assert seen["config"] == dataclasses.asdict(direct.config)
    assert seen["token_embedding_sum"] == pytest.approx(
        float(direct.model.embeddings.token_embedding.embedding[...].sum()))


def test_uncached_preset_name_fails_offline_with_one_line(offline_name_resolution):
    message = offline_name_resolution["uncached"]
    assert message is not None and "\n" not in message
    assert message.startswith("--preset bert_base_en: cannot fetch it (")
    assert "offline test: no network" in message and "pass a local preset folder" in message
