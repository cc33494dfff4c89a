"""Any finished run directory as a Flax model, to predict and to draw attention maps.

Both trainers' runs load without TensorFlow: a jax_lora run is its base preset plus its
adapter/ (jax_lora.adapter.load_adapter, every method, BERT or XLM-R); a tf_baseline run is
its preset/, a keras-hub BertTextClassifier (XLMRobertaTextClassifier for XLM-R) saved whole,
read from its h5 files: the encoder (and BERT's pooler) from model.weights.h5, the head from
task.weights.h5 (BERT's logits; XLM-R's pooled_dense and logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_lora import compile_cache
from jax_lora.adapter import ADAPTER, ADAPTER_META, load_adapter, read_adapter_meta
from jax_lora.lora import LoraConfig
from jax_lora.models import BertClassifier, set_compute_dtype
from jax_lora.tokenizer import TRUNCATIONS, Tokenizer
from jax_lora.weights import load_head, load_pretrained, read_keras_head
from jax_lora.xlmr_tokenizer import XLMRobertaTokenizer
from shared.runs.encoder import encoder_numbers
from shared.runs.presets import PresetError
from shared.runs.reuse import RunStateError, read_manifest
from shared.runs.run_dir import MANIFEST

TF_PRESET = "preset"  # tf_baseline's trained classifier inside its run directory
TF_PRESET_FILES = ("config.json", "model.weights.h5", "task.weights.h5")
INPUTS = ("token_ids", "segment_ids", "padding_mask")
TextTokenizer = Tokenizer | XLMRobertaTokenizer  # BERT's WordPiece, XLM-R's SentencePiece


class RunLoadError(ValueError):
    """A run directory that cannot be loaded; the message names the file or folder and what
    to do."""


@dataclass
class LoadedRun:
    model: BertClassifier  # eval-ready: predict() passes no dropout key
    tokenizer: TextTokenizer
    sequence_length: int  # what the run tokenized its pairs to
    manifest: dict
    weights: str  # where the weights came from, for people


def load_run(run_dir) -> LoadedRun:
    """The finished run in `run_dir` (jax_lora or tf_baseline) as a Flax model and tokenizer."""
    compile_cache.enable()  # the forward pass compiles once per batch shape, then loads
    run_dir = Path(run_dir)
    try:
        manifest = read_manifest(run_dir)
    except RunStateError:
        raise RunLoadError(f"{run_dir / MANIFEST}: not valid JSON; pick another run") from None
    if manifest is None:
        raise RunLoadError(f"{run_dir}: no {MANIFEST}, so not a run directory; pick a folder "
                           f"a trainer wrote")
    if manifest.get("status") != "finished":
        raise RunLoadError(f"{run_dir}: run not finished (status {manifest.get('status')}); "
                           f"finish it or pick another")
    trainer = manifest.get("trainer")
    if trainer == "jax_lora":
        model, tokenizer, weights = _load_jax_lora(run_dir, manifest)
    elif trainer == "tf_baseline":
        model, tokenizer, weights = _load_tf_baseline(run_dir)
    else:
        raise RunLoadError(f"{run_dir}: trainer {trainer!r} is neither jax_lora nor "
                           f"tf_baseline; pick a run of one of them")
    # The run's own rule for cutting long pairs (jax_lora's --truncate; keras-hub's round_robin).
    tokenizer.truncate = manifest.get("preprocessing", {}).get("truncate") or "round_robin"
    if tokenizer.truncate not in TRUNCATIONS:
        raise RunLoadError(f"{run_dir / MANIFEST}: truncate {tokenizer.truncate!r} is unknown; "
                           f"pick another run")
    # tf_baseline's config says None for "the preset's length"; its preprocessing record
    # holds the length used.
    sequence_length = (manifest["config"].get("sequence_length")
                       or manifest.get("preprocessing", {}).get("sequence_length"))
    if not sequence_length:
        raise RunLoadError(f"{run_dir / MANIFEST}: records no sequence length; pick another run")
    return LoadedRun(model, tokenizer, sequence_length, manifest, weights)


def _load_jax_lora(run_dir: Path, manifest: dict) -> tuple[BertClassifier, TextTokenizer, str]:
    adapter_dir = run_dir / ADAPTER
    if not (adapter_dir / ADAPTER_META).is_file():
        raise RunLoadError(f"{adapter_dir}: missing or without {ADAPTER_META}; the run's "
                           f"trained weights are gone, pick another run")
    meta = read_adapter_meta(adapter_dir)
    base = meta["base"]["preset"]
    try:
        pretrained = load_adapter(adapter_dir)
    except PresetError as err:
        raise RunLoadError(f"{adapter_dir}: its base preset {base} cannot be loaded ({err}); "
                           f"put the base weights back there") from None
    except (ValueError, OSError) as err:  # base checksum mismatch, damaged weights
        raise RunLoadError(f"{run_dir}: cannot load its adapter: {err}") from None
    # The numerics the run's own predictions were computed with.
    set_compute_dtype(pretrained.model, manifest["config"].get("compute_dtype", "float32"))
    return pretrained.model, pretrained.tokenizer, f"base {base} + adapter ({meta['method']})"


def _load_tf_baseline(run_dir: Path) -> tuple[BertClassifier, TextTokenizer, str]:
    preset = run_dir / TF_PRESET
    for name in TF_PRESET_FILES:
        if not (preset / name).is_file():
            raise RunLoadError(f"{preset / name}: missing; the run's saved classifier is "
                               f"incomplete, pick another run")
    try:
        # The logits layer (Dense "logits", BERT's and XLM-R's alike) gives the classes.
        classes = read_keras_head(preset / "task.weights.h5")["bias"].shape[0]
        # keras-hub's classifiers read BERT's pooler or XLM-R's <s> (cls pooling); a BERT
        # without a pooler (multilingual-e5) the mean of the last layer.
        pretrained = load_pretrained(str(preset), LoraConfig(targets=()), num_classes=classes,
                                     pooling=encoder_numbers(str(preset)).default_pooling)
        load_head(pretrained.model, str(preset))  # every head layer, shapes checked
    except (ValueError, OSError) as err:  # WeightsError, PresetError, an unreadable file
        raise RunLoadError(f"{preset}: cannot be loaded ({err}); pick another run") from None
    return pretrained.model, pretrained.tokenizer, ("tf_baseline preset (keras-hub classifier) "
                                                    "loaded into Flax")


@nnx.jit(static_argnames="attention_maps")
def _forward(model: BertClassifier, token_ids, segment_ids, padding_mask, attention_maps: bool):
    """(softmax probabilities [B, classes], attention maps [layers, B, heads, T, T] or None)."""
    if attention_maps:
        out = model.encode(token_ids, segment_ids, padding_mask, cls_only=False,
                           attention_maps=True)
        return jax.nn.softmax(out["logits"], axis=-1), jnp.stack(out["attention_maps"])
    return jax.nn.softmax(model(token_ids, segment_ids, padding_mask), axis=-1), None


def predict(loaded: LoadedRun, premises: list[str], hypotheses: list[str], *,
            attention_maps: bool = False, batch_size: int = 32) -> dict:
    """{'probabilities': float32 [N, 3], 'token_ids', 'segment_ids', 'padding_mask': int32
    [N, T]} and with attention_maps, 'attention_maps': float32 [layers, N, heads, T, T] (rows
    of real query tokens sum to 1, padded key columns are 0). T is the run's sequence length.
    Rows go through the model `batch_size` at a time, each batch shape compiled once."""
    if not len(premises):
        raise ValueError("predict: no premise/hypothesis pairs given")
    inputs = loaded.tokenizer(list(premises), list(hypotheses), loaded.sequence_length)
    probabilities, maps = [], []
    for start in range(0, len(premises), batch_size):
        batch = [inputs[name][start:start + batch_size] for name in INPUTS]
        probs, batch_maps = _forward(loaded.model, *batch, attention_maps=attention_maps)
        probabilities.append(np.asarray(probs, np.float32))
        if attention_maps:
            maps.append(np.asarray(batch_maps, np.float32))
    out = {"probabilities": np.concatenate(probabilities), **inputs}
    if attention_maps:
        out["attention_maps"] = np.concatenate(maps, axis=1)
    return out
