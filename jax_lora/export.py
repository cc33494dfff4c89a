"""Merged Flax model -> keras-hub preset folder that keras-hub's classifier loads:
`BertTextClassifier.from_preset` for BERT, `XLMRobertaTextClassifier.from_preset` for XLM-R.

The only jax_lora module that imports TensorFlow (lazily, inside export_preset): keras-hub
itself builds the classifier and writes the preset, so the folder holds exactly what keras-hub
expects (config, weights, tokenizer assets, preprocessor, classifier head: BERT's logits,
XLM-R's pooled_dense and logits). Every variable is filled from the Flax parameter that
weights.KERAS_FORMATS names for it, the table the importer reads presets with. A BERT whose
tokenizer follows a Hugging Face folder's text rules gets them beside keras-hub's files
(shared.runs.tokenization.NORMALIZER_FILE + README.md), which tf_baseline's load_preprocessor
and jax_lora's Tokenizer.from_preset_dir apply when they load the folder. XLM-R's
SentencePiece model carries its own rules and goes into the preset as is.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
from flax import nnx

from jax_lora.lora import is_plain
from jax_lora.models import BertClassifier
from jax_lora.tokenizer import Tokenizer
from jax_lora.tuners import merge_model
from jax_lora.weights import KERAS_FORMATS
from jax_lora.xlmr_tokenizer import HF_PROTO, HF_TOKENIZER, XLMRobertaTokenizer
from shared.runs.tokenization import README_FILE

# keras-hub's BertBackbone and RobertaBackbone hard-code these; a model with another epsilon
# cannot round-trip.
KERAS_HUB_LAYER_NORM_EPSILON = {"bert": 1e-12, "xlm_roberta": 1e-5}
# keras-hub's classifier of each architecture, and what its head reads.
KERAS_HUB_CLASSIFIERS = {"bert": ("BertTextClassifier", "BERT's pooler"),
                         "xlm_roberta": ("XLMRobertaTextClassifier", "<s>")}


class ExportError(ValueError):
    """A model or output folder that cannot be exported; the message says what to change."""


def export_preset(model: BertClassifier, tokenizer: Tokenizer | XLMRobertaTokenizer,
                  out_dir: str | Path, *, sequence_length: int = 512) -> Path:
    """Writes `model` (adapters merged in first and a quantized base dequantized: plain
    float32 kernels) as a keras-hub preset.

    `sequence_length` is what the saved preprocessor pads to. Nothing is written when the
    folder already has files or the model does not fit keras-hub's BERT or XLM-R."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"--out {out_dir}: folder is not empty; pass a new folder")
    config = model.config
    classifier_name, head_reads = KERAS_HUB_CLASSIFIERS[config.architecture]
    if model.pooling != "cls":
        raise ExportError(f"the model classifies from --pooling {model.pooling}; keras-hub's "
                          f"{classifier_name} classifies from {head_reads} and would predict "
                          f"differently, so no preset is written")
    fixed_gelu = config.architecture == "bert"  # BertBackbone's gelu_approximate (tanh)
    if config.approximate_gelu != fixed_gelu:
        raise ExportError(f"the model's FFN uses {'tanh' if config.approximate_gelu else 'exact'}"
                          f" GELU; keras-hub's {classifier_name} hard-codes "
                          f"{'tanh' if fixed_gelu else 'exact'} GELU and has no option for it, "
                          f"so no preset is written")
    epsilon = KERAS_HUB_LAYER_NORM_EPSILON[config.architecture]
    if config.layer_norm_epsilon != epsilon:
        raise ExportError(f"layer_norm_epsilon={config.layer_norm_epsilon}: keras-hub's "
                          f"{classifier_name} only supports {epsilon}")
    if len(tokenizer.vocabulary) != config.vocab_size:
        raise ExportError(f"tokenizer has {len(tokenizer.vocabulary)} tokens but the model's "
                          f"vocab_size is {config.vocab_size}; pass the model's own tokenizer")
    # Read (and checked) before TensorFlow is imported, as every refusal above.
    proto = _sentencepiece_proto(tokenizer) if config.architecture == "xlm_roberta" else None
    if not is_plain(model):  # adapters folded in, a quantized base dequantized
        model = merge_model(model)  # refuses a family that cannot merge (prompt tuning)
    params = {path: np.asarray(variable.get_value())
              for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param))}

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras_hub

    classifier = _keras_hub_classifier(keras_hub, model, tokenizer, sequence_length, proto)
    names = KERAS_FORMATS[config.architecture]
    for variable in classifier.weights:
        path = names.path(*variable.path.rsplit("/", 1))
        if path not in params:
            raise ExportError(f"keras-hub variable {variable.path} has no Flax parameter")
        # Row-major reshape undoes the [d_in, heads, head_dim] split of attention kernels.
        variable.assign(params.pop(path).reshape(variable.shape))
    if params:
        raise ExportError(f"Flax parameter {'/'.join(map(str, next(iter(params))))} has no "
                          f"keras-hub variable")

    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    classifier.save_to_preset(str(staging))
    normalizer = getattr(tokenizer, "normalizer", None)  # XLM-R's tokenizer has none
    if normalizer is not None:  # the text rules travel with the model
        normalizer.save(staging)
    if out_dir.exists():
        out_dir.rmdir()
    staging.rename(out_dir)
    return out_dir


def _keras_hub_classifier(keras_hub, model: BertClassifier,
                          tokenizer: Tokenizer | XLMRobertaTokenizer, sequence_length: int,
                          proto: bytes | None):
    """keras-hub's text classifier for `model`'s architecture with `tokenizer`'s preprocessor
    (XLM-R's from the SentencePiece model `proto`); its weights are still keras-hub's fresh
    ones."""
    config = model.config
    sizes = dict(vocabulary_size=config.vocab_size, num_layers=config.num_layers,
                 num_heads=config.num_heads, hidden_dim=config.hidden_dim,
                 intermediate_dim=config.intermediate_dim, dropout=config.dropout,
                 max_sequence_length=config.max_sequence_length)
    if config.architecture == "xlm_roberta":
        preprocessor = keras_hub.models.XLMRobertaTextClassifierPreprocessor(
            keras_hub.models.XLMRobertaTokenizer(proto=proto), sequence_length=sequence_length)
        # hidden_dim: the head's dense layer is H wide, as ours (keras-hub's default too).
        return keras_hub.models.XLMRobertaTextClassifier(
            keras_hub.models.XLMRobertaBackbone(**sizes), num_classes=model.num_classes,
            preprocessor=preprocessor, hidden_dim=config.hidden_dim, dropout=config.head_rate)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        _keras_tokenizer(keras_hub, tokenizer), sequence_length=sequence_length)
    return keras_hub.models.BertTextClassifier(
        keras_hub.models.BertBackbone(**sizes, num_segments=config.num_segments),
        num_classes=model.num_classes, preprocessor=preprocessor, dropout=config.head_rate)


def _keras_tokenizer(keras_hub, tokenizer: Tokenizer):
    """keras-hub's BertTokenizer with `tokenizer`'s settings; with a text normaliser, the ones
    it asks for (split_on_cjk and max_bytes_per_word are not saved by keras-hub: the loaders
    that read the normaliser file set them)."""
    if tokenizer.normalizer is None:
        return keras_hub.models.BertTokenizer(vocabulary=tokenizer.vocabulary,
                                              lowercase=tokenizer.lowercase)
    return keras_hub.models.BertTokenizer(vocabulary=tokenizer.vocabulary,
                                          oov_token=tokenizer.normalizer.unk_token,
                                          **tokenizer.normalizer.keras_hub_tokenizer_kwargs)


def _sentencepiece_proto(tokenizer: XLMRobertaTokenizer) -> bytes:
    """The SentencePiece model behind an XLM-R tokenizer, for keras-hub's XLMRobertaTokenizer:
    the file it was read from, or for a Hugging Face tokenizer.json the folder's
    sentencepiece.bpe.model, which keras-hub's converter (and so tf_baseline) reads for that
    folder; the two differ only on literal <s>, </s>, <mask> in a text, which tokenizer.json
    keeps whole. It must give the tokenizer's own vocabulary."""
    source = Path(tokenizer.source)
    proto_file = source.with_name(HF_PROTO) if source.name == HF_TOKENIZER else source
    if not proto_file.is_file():
        raise ExportError(f"{proto_file}: not found; keras-hub's XLMRobertaTokenizer needs the "
                          f"SentencePiece model of the tokenizer {source}; put it there")
    proto = proto_file.read_bytes()
    if XLMRobertaTokenizer.from_sentencepiece(proto, str(proto_file)).vocabulary != \
            tokenizer.vocabulary:
        raise ExportError(f"{proto_file}: its pieces are not the vocabulary of the tokenizer "
                          f"{source}; pass the model's own tokenizer")
    return proto


def main(argv=None) -> None:
    """python -m jax_lora.export --run-dir RUN --out DIR: a finished run as a keras-hub preset."""
    import json

    from jax_lora.adapter import ADAPTER, export_parser, load_adapter
    from shared.cli import exit_on_bad_input
    from shared.runs.run_dir import MANIFEST

    parser = export_parser(
        "python -m jax_lora.export",
        "Merge a jax_lora run's adapter (LoRA, DoRA; or a probe's or full fine-tune's weights) "
        "into its base BERT or XLM-R and write a keras-hub preset folder that "
        "keras_hub.models.BertTextClassifier.from_preset (XLMRobertaTextClassifier for XLM-R) "
        "loads.", "new folder for the preset")
    args = parser.parse_args(argv)
    with exit_on_bad_input():
        manifest_path = args.run_dir / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"--run-dir {args.run_dir}: no {MANIFEST}; pass a jax_lora run")
        sequence_length = json.loads(manifest_path.read_text())["config"]["sequence_length"]
        pretrained = load_adapter(args.run_dir / ADAPTER, args.preset)
        export_preset(pretrained.model, pretrained.tokenizer, args.out,
                      sequence_length=sequence_length)
    classifier_name, _ = KERAS_HUB_CLASSIFIERS[pretrained.config.architecture]
    print(f"keras-hub preset written to {args.out}; load it with "
          f"keras_hub.models.{classifier_name}.from_preset({str(args.out)!r})"
          + (f", tokenizing as {args.out / README_FILE} says"
             if (args.out / README_FILE).is_file() else ""))


if __name__ == "__main__":
    main()
