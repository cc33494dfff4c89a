"""Export: a LoRA-adapted Flax model -> keras-hub preset whose TF logits equal the Flax ones."""

import dataclasses

import numpy as np
import pytest

from jax_lora.export import ExportError, export_preset
from jax_lora.lora import LoraConfig
from jax_lora.weights import load_pretrained

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def round_trip(keras_hub_reference):
    """The tiny HF model with random non-zero LoRA on every target, exported, reloaded by
    keras-hub in TensorFlow (done in the keras_hub_reference subprocess)."""
    root = keras_hub_reference["root"]
    return root / "exported", dict(np.load(root / "export.npz"))


def test_exported_preset_reproduces_the_adapted_model(round_trip):
    preset, result = round_trip
    assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5",
            "tokenizer.json", "preprocessor.json"} <= {p.name for p in preset.iterdir()}
    assert (preset / "assets" / "tokenizer" / "vocabulary.txt").is_file()
    flax_logits = result["flax_logits"]
    from_ids = np.abs(result["tf_logits_from_ids"] - flax_logits).max()
    # Through the exported preprocessor, from raw text: casing and vocabulary survived too.
    from_text = np.abs(result["tf_logits_from_text"] - flax_logits).max()
    print(f"export max abs: ids {from_ids:.2e}, text {from_text:.2e}")
    assert np.abs(flax_logits).max() > 0.05
    assert from_ids <= TOLERANCE and from_text <= TOLERANCE


def test_export_from_an_nf4_base_writes_its_dequantized_kernels(keras_hub_reference):
    """A QLoRA-style model (kernels stored as NF4, adapters float32) exports the kernels it
    computes with: dequantized + adapter, float32; keras-hub's logits equal the Flax ones."""
    root = keras_hub_reference["root"]
    result, plain = dict(np.load(root / "export_nf4.npz")), dict(np.load(root / "export.npz"))
    gap = np.abs(result["tf_logits_from_ids"] - result["flax_logits"]).max()
    quantization = np.abs(result["flax_logits"] - plain["flax_logits"]).max()
    print(f"nf4 export max abs {gap:.2e}; nf4 vs float32 base logits {quantization:.2e}")
    assert gap <= TOLERANCE and quantization > 10 * TOLERANCE  # the NF4 base, not the float32
    pretrained = load_pretrained(str(root / "exported_nf4"), LoraConfig(targets=()))
    kernel = pretrained.model.layers[0].attention.query.kernel.get_value()
    assert kernel.dtype == np.float32 and len(np.unique(kernel)) > 16


def test_export_reloads_as_our_own_keras_preset(round_trip):
    """The exported folder is also a valid --preset for jax_lora (weights.read_keras)."""
    preset, result = round_trip
    pretrained = load_pretrained(str(preset), LoraConfig(targets=()))
    assert pretrained.source["kind"] == "keras_dir"
    assert pretrained.tokenizer.normalizer.lowercase is True  # the text rules came along


def test_refuses_a_folder_with_files(tiny_hf_preset, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    pretrained = load_pretrained(str(tiny_hf_preset), LoraConfig(targets=()))
    with pytest.raises(ExportError, match="not empty"):
        export_preset(pretrained.model, pretrained.tokenizer, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_refuses_a_layer_norm_epsilon_keras_hub_cannot_hold(tiny_hf_preset, tmp_path):
    pretrained = load_pretrained(str(tiny_hf_preset), LoraConfig(targets=()))
    pretrained.model.config = dataclasses.replace(pretrained.config, layer_norm_epsilon=1e-6)
    with pytest.raises(ExportError, match="layer_norm_epsilon"):
        export_preset(pretrained.model, pretrained.tokenizer, tmp_path / "out")
    assert not (tmp_path / "out").exists()
