"""The config's defaults are the starter notebook's recipe, and every field is a flag."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from shared.data.spec import DataSpec
from shared.runs.presets import PresetError
from shared.runs.reuse import config_differences
from tf_baseline.config import TrainConfig, build_parser, parse_config


def test_defaults_are_the_notebooks_recipe():
    config = TrainConfig()
    assert config.preset == "bert_base_multi"  # keras_nlp.models.BertClassifier.from_preset
    assert config.sequence_length is None  # the preset's own preprocessor length (512 below)
    assert config.epochs == 3
    assert config.batch_per_replica == 16  # .batch(16 * strategy.num_replicas_in_sync)
    assert config.lr_per_replica == 1e-5  # Adam(1e-5 * strategy.num_replicas_in_sync)
    assert config.data.split == "kaggle"  # first 70 % / last 30 %
    assert config.data.train_fraction == 0.7
    assert config.lora_rank is None  # full fine-tuning
    assert config.cpu_replicas is None  # TPU, else MirroredStrategy() over what TF sees
    assert config.data.limit is None and config.data.data_dir is None and not config.quiet


def test_preset_preprocessor_defaults_are_the_notebooks():
    keras_hub = pytest.importorskip("keras_hub")
    defaults = inspect.signature(keras_hub.models.BertTextClassifierPreprocessor).parameters
    assert defaults["sequence_length"].default == 512
    assert defaults["truncate"].default == "round_robin"
    keras_nlp = pytest.importorskip("keras_nlp")
    assert keras_nlp.models.BertClassifier is keras_hub.models.BertTextClassifier


def test_no_flags_give_the_defaults_and_every_field_has_a_flag():
    assert parse_config([]) == TrainConfig()
    help_text = build_parser().format_help()
    fields = [f for f in dataclasses.fields(TrainConfig) if f.name != "data"]
    for field in fields + list(dataclasses.fields(DataSpec)):
        assert f"--{field.name.replace('_', '-')}" in help_text


def test_flags_override_and_types_follow_the_fields():
    config = parse_config(["--epochs", "1", "--batch-per-replica", "4", "--lr-per-replica", "3e-5",
                           "--sequence-length", "64", "--lora-rank", "8", "--run-dir", "/tmp/x",
                           "--split", "grouped", "--seed", "7", "--split-seed", "3",
                           "--limit", "50", "--quiet"])
    assert (config.epochs, config.batch_per_replica, config.lr_per_replica) == (1, 4, 3e-5)
    assert (config.sequence_length, config.lora_rank, config.seed) == (64, 8, 7)
    assert config.data == DataSpec(split="grouped", split_seed=3, limit=50)
    assert config.run_dir == Path("/tmp/x") and config.quiet


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs 0: must be >= 1"),
    (["--batch-per-replica", "0"], "--batch-per-replica 0: must be >= 1"),
    (["--lr-per-replica", "-1"], "--lr-per-replica -1.0: must be > 0"),
    (["--sequence-length", "4"], "--sequence-length 4: must be >= 5"),
    (["--lora-rank", "0"], "--lora-rank 0: must be >= 1"),
    (["--cpu-replicas", "0"], "--cpu-replicas 0: must be >= 1"),
])
def test_bad_values_name_the_flag(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_config(argv)


def test_missing_or_unusable_preset_folder(tmp_path):
    with pytest.raises(PresetError, match="no such folder"):
        TrainConfig(preset=str(tmp_path / "nope"))
    with pytest.raises(PresetError, match="neither model.safetensors"):
        TrainConfig(preset=str(tmp_path))


def test_reuse_ignores_only_presentation():
    base = TrainConfig().to_dict()
    neutral = TrainConfig(quiet=True, run_dir=Path("/elsewhere"), restart=True, check=True)
    assert config_differences(base, neutral.to_dict()) == []
    assert config_differences(base, TrainConfig(epochs=2).to_dict()) == ["epochs 3 -> 2"]
    assert config_differences(base, TrainConfig(data=DataSpec(limit=9)).to_dict()) == [
        "data.limit None -> 9"]
