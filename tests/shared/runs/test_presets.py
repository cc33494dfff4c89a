"""Preset aliases (shared.runs.presets.ALIASES): `multilingual-e5-small` and
`all-minilm-l6-v2` name the offline folders in every function that takes a --preset."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from shared.runs import presets
from shared.runs.tokenization import load_normalizer
from tests.conftest import write_tiny_hf_preset

ALIAS = "multilingual-e5-small"


@pytest.fixture
def venv_with_e5(tmp_path, monkeypatch) -> Path:
    """A venv prefix whose models/multilingual-e5-small is a tiny BERT folder."""
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    return write_tiny_hf_preset(tmp_path / "models" / ALIAS)


def test_the_e5_folder_is_inside_the_venv_or_a_one_line_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    with pytest.raises(presets.PresetError, match=r"not built at .*run scripts/setup\.sh"):
        presets.e5_dir()
    with pytest.raises(presets.PresetError):
        presets.preset_kind(ALIAS)  # the alias of a missing folder fails as e5_dir does


def test_the_alias_resolves_everywhere_and_the_manifest_names_it(venv_with_e5):
    assert presets.e5_dir() == venv_with_e5
    assert presets.preset_kind(ALIAS) == "hf"
    assert presets.preset_dir(ALIAS) == (venv_with_e5, "hf")
    assert presets.preset_architecture(ALIAS) == "bert"
    described = presets.describe_preset(ALIAS)
    assert described["preset"] == ALIAS and described["directory"] == str(venv_with_e5.resolve())
    assert described["sha256"] == presets.describe_preset(str(venv_with_e5))["sha256"]
    assert load_normalizer(ALIAS) == load_normalizer(venv_with_e5)


def test_a_folder_named_like_an_alias_needs_dot_slash(venv_with_e5, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ./multilingual-e5-small is not a preset folder
    (tmp_path / ALIAS).mkdir()
    assert presets.preset_dir(ALIAS)[0] == venv_with_e5
    with pytest.raises(presets.PresetError, match="neither"):
        presets.preset_kind(f"./{ALIAS}")
