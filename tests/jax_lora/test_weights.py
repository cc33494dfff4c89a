"""Weight import: every tensor lands where it belongs, anything unexpected fails loudly."""

import shutil
import sys
import types

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from jax_lora.lora import LoraConfig, LoraParam
from jax_lora.models import BertConfig
from jax_lora.weights import WeightsError, load_pretrained
from shared.data import file_sha256

LORA = LoraConfig(rank=2, targets=("query", "value"))


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
    assert pretrained.source == {"preset": str(tiny_hf_preset), "kind": "hf",
                                 "sha256": file_sha256(tiny_hf_preset / "model.safetensors")}
    tensors = load_file(tiny_hf_preset / "model.safetensors")
    layer = pretrained.model.layers[1]
    np.testing.assert_array_equal(layer.attention.value.kernel[...],
                                  tensors["encoder.layer.1.attention.self.value.weight"].T)
    np.testing.assert_array_equal(layer.ffn_layer_norm.scale[...],
                                  tensors["encoder.layer.1.output.LayerNorm.weight"])
    np.testing.assert_array_equal(pretrained.model.embeddings.segment_embedding.embedding[...],
                                  tensors["embeddings.token_type_embeddings.weight"])
    assert not np.asarray(layer.attention.value.lora_b[...]).any()
    assert pretrained.tokenizer.lowercase is True


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
    assert pretrained.source["kind"] == "keras_dir"
    assert pretrained.source["sha256"] == file_sha256(tiny_keras_preset / "model.weights.h5")
    assert pretrained.tokenizer.lowercase is False


def test_preset_name_resolves_through_keras_hub_downloads(tiny_keras_preset, monkeypatch):
    """A name goes through keras_hub's get_file (faked here: no network in tests)."""
    fetched = []

    def get_file(preset, path):
        fetched.append((preset, path))
        return str(tiny_keras_preset / path)

    preset_utils = types.ModuleType("keras_hub.src.utils.preset_utils")
    preset_utils.get_file = get_file
    monkeypatch.setitem(sys.modules, "keras_hub", types.ModuleType("keras_hub"))
    monkeypatch.setitem(sys.modules, "keras_hub.src.utils.preset_utils", preset_utils)
    pretrained = load_pretrained("bert_tiny_test", LORA)
    assert {path for _, path in fetched} >= {"config.json", "model.weights.h5"}
    assert pretrained.source["kind"] == "name" and pretrained.source["preset"] == "bert_tiny_test"


def test_unreachable_preset_name_fails_with_one_line(monkeypatch):
    def get_file(preset, path):
        raise ValueError("Kaggle API unreachable")

    preset_utils = types.ModuleType("keras_hub.src.utils.preset_utils")
    preset_utils.get_file = get_file
    monkeypatch.setitem(sys.modules, "keras_hub", types.ModuleType("keras_hub"))
    monkeypatch.setitem(sys.modules, "keras_hub.src.utils.preset_utils", preset_utils)
    with pytest.raises(WeightsError, match="--preset bert_base_multi: cannot fetch") as err:
        load_pretrained("bert_base_multi", LORA)
    assert "\n" not in str(err.value)
