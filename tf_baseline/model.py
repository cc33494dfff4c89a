"""The notebook's model: distribution strategy, BertTextClassifier from a preset, optional LoRA.

XLM-RoBERTa presets (`xlm_roberta_base_multi`, a keras-hub XLM-R folder or a Hugging Face
xlm-roberta folder) take keras-hub's XLMRobertaTextClassifier and its preprocessor instead,
with keras-hub's defaults for that head (dropout 0.0 where BertTextClassifier has 0.1): the
notebook has no XLM-R recipe to copy. A BERT with XLM-R's SentencePiece tokenizer and no pooler
(multilingual-e5) takes tf_baseline/sentencepiece_bert.py's preprocessor and mean-pooling
head. What a preset computes beyond its tensors (GELU, LayerNorm epsilon, pooler) is
shared.runs.encoder's rule, the same as jax_lora's.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import keras_hub
import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from shared.data.watson import LABEL_NAMES
from shared.runs.encoder import EncoderNumbers, encoder_numbers
from shared.runs.presets import PresetError, preset_dir, preset_kind
from shared.runs.tokenization import TextNormalizer, TokenizationError, load_normalizer
from tf_baseline.sentencepiece_bert import (BertMeanTextClassifier, BertSentencePiecePreprocessor,
                                            apply_encoder_numbers, load_hf_backbone,
                                            with_tokenizer_json)

NUM_CLASSES = len(LABEL_NAMES)
TASK_CONFIG = "task.json"  # what keras-hub's save_to_preset adds for a whole classifier
# Keras 3's fit under MultiWorkerMirroredStrategy; tests/tf_baseline/test_multiworker.py keeps
# the reproduction on this model as an expected failure.
MULTI_WORKER_ISSUE = "keras-team/keras#20585"


def make_strategy(cpu_replicas: int | None) -> tf.distribute.Strategy:
    """The notebook's: a TPU when one answers, else MirroredStrategy over what TF sees."""
    if cpu_replicas:
        return _cpu_mirrored_strategy(cpu_replicas)
    try:
        tpu = tf.distribute.cluster_resolver.TPUClusterResolver.connect()
        return tf.distribute.TPUStrategy(tpu)
    except ValueError:  # no TPU: CPU, one GPU or several GPUs
        return tf.distribute.MirroredStrategy()


def check_one_worker(tf_config: str | None) -> None:
    """Refuses a TF_CONFIG cluster of several workers (chief and worker tasks).

    make_strategy would ignore it: every worker would train alone and write the same run
    directory. MultiWorkerMirroredStrategy is no way out: Keras 3's own fit fails under it on
    this model (it reduces the first batch, a dict, in one strategy.reduce, which takes single
    tensors, and then each scalar metric along an axis 0 it lacks)."""
    if tf_config is None:  # an empty one is refused below: MirroredStrategy would parse it
        return
    try:
        cluster = json.loads(tf_config).get("cluster", {})
        workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    except (ValueError, AttributeError, TypeError):
        raise ValueError("TF_CONFIG: not a JSON object with a 'cluster' of task lists; fix "
                         "or unset it") from None
    if workers > 1:
        raise ValueError(f"TF_CONFIG describes {workers} workers: tf_baseline trains on one "
                         f"machine only, since Keras 3's fit fails under "
                         f"MultiWorkerMirroredStrategy ({MULTI_WORKER_ISSUE}); unset TF_CONFIG "
                         f"and run on one machine")


def _cpu_mirrored_strategy(replicas: int) -> tf.distribute.Strategy:
    # MirroredStrategy() alone never mirrors over CPUs, so several replicas on a machine
    # without accelerators (tests, CI) need logical CPUs, named explicitly.
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:  # devices already initialised: fine if they match the request
        pass
    logical = tf.config.list_logical_devices("CPU")
    if len(logical) != replicas:
        raise ValueError(f"--cpu-replicas {replicas}: TensorFlow already runs with "
                         f"{len(logical)} logical CPU(s) in this process; start a new process")
    return tf.distribute.MirroredStrategy([device.name for device in logical])


def describe_strategy(strategy: tf.distribute.Strategy) -> dict:
    return {"strategy": type(strategy).__name__, "replicas": strategy.num_replicas_in_sync,
            "devices": list(strategy.extended.worker_devices)}


def task_classes(numbers: EncoderNumbers) -> tuple[type, type]:
    """(text classifier, its preprocessor) for a preset's numbers: keras-hub's for BERT and
    XLM-R; for a BERT with a SentencePiece tokenizer XLM-R's packing, and mean pooling when it
    has no pooler (sentencepiece_bert.py)."""
    if numbers.architecture == "xlm_roberta":
        return (keras_hub.models.XLMRobertaTextClassifier,
                keras_hub.models.XLMRobertaTextClassifierPreprocessor)
    classifier = (BertMeanTextClassifier if numbers.default_pooling == "mean"
                  else keras_hub.models.BertTextClassifier)
    preprocessor = (BertSentencePiecePreprocessor if numbers.tokenizer == "sentencepiece"
                    else keras_hub.models.BertTextClassifierPreprocessor)
    return classifier, preprocessor


def load_preprocessor(preset: str, sequence_length: int | None):
    """The preset's own preprocessor: [CLS] premise [SEP] hypothesis [SEP], round-robin.

    A Hugging Face folder, or a preset saved from one, brings its own text rules
    (shared.runs.tokenization): the tokenizer is rebuilt to follow them and the normaliser is
    attached as `preprocessor.text_normalizer`, which data.text_dataset applies to the texts
    first. A keras-hub preset keeps keras-hub's tokenizer (text_normalizer None), and so does
    XLM-R: its SentencePiece model holds its own text rules. A BERT with XLM-R's tokenizer
    (multilingual-e5) from a Hugging Face folder takes its tokenizer.json's ids
    (hf_json_tokenizer.py), and a preset saved from one keeps them."""
    _, preprocessor_class = task_classes(encoder_numbers(preset))
    bert = preprocessor_class is keras_hub.models.BertTextClassifierPreprocessor
    normalizer = _text_normalizer_of(preset) if bert else None
    overrides = {} if sequence_length is None else {"sequence_length": sequence_length}
    preprocessor = _from_preset(preprocessor_class, preset, **overrides)
    if normalizer is not None:
        preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
            normalized_tokenizer(preprocessor.tokenizer.vocabulary, normalizer),
            sequence_length=preprocessor.sequence_length, truncate=preprocessor.truncate)
    tokenizer_json = Path(keras_hub_preset(preset)) / "tokenizer.json"
    if preprocessor_class is BertSentencePiecePreprocessor and preset_kind(preset) == "hf" \
            and tokenizer_json.is_file():
        preprocessor = with_tokenizer_json(preprocessor, tokenizer_json)
    preprocessor.text_normalizer = normalizer
    return preprocessor


def text_normalizer(preprocessor) -> TextNormalizer | None:
    """What load_preprocessor attached: the text rules to apply before `preprocessor`."""
    return getattr(preprocessor, "text_normalizer", None)


def _text_normalizer_of(preset: str) -> TextNormalizer | None:
    try:
        return load_normalizer(preset)
    except TokenizationError as err:
        raise PresetError(f"--preset {preset}: {err}") from None


def normalized_tokenizer(vocabulary: list[str], normalizer: TextNormalizer):
    """keras-hub's BertTokenizer for text `normalizer` produced: no casing, accent or CJK rule
    of its own, the normaliser's special tokens kept whole, and words up to the normaliser's
    character limit never cut to [UNK] for their bytes."""
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary,
                                               oov_token=normalizer.unk_token,
                                               **normalizer.keras_hub_tokenizer_kwargs)
    _set_max_bytes_per_word(tokenizer, normalizer.max_bytes_per_word)
    return tokenizer


def _set_max_bytes_per_word(tokenizer, max_bytes: int) -> None:
    # keras-hub builds tf_text's FastWordpieceTokenizer with its default 100-byte word limit
    # and no option to change it; Hugging Face's limit is 100 characters (Greek, Cyrillic or
    # Thai words of 51-100 characters would become [UNK]). Same arguments as keras-hub 0.32's
    # WordPieceTokenizer._set_vocabulary_tf otherwise. Set again after any set_vocabulary.
    if getattr(tokenizer, "_fast_word_piece", None) is None:
        raise RuntimeError("keras-hub's WordPieceTokenizer has no _fast_word_piece (keras-hub "
                           "changed, or tensorflow-text is missing); install requirements-tf.txt")
    tokenizer._fast_word_piece = tf_text.FastWordpieceTokenizer(
        vocab=tokenizer.vocabulary, token_out_type=tokenizer.compute_dtype,
        suffix_indicator=tokenizer.suffix_indicator, unknown_token=tokenizer.oov_token,
        no_pretokenization=True, support_detokenization=True, max_bytes_per_word=max_bytes)


def load_classifier(preset: str, strategy: tf.distribute.Strategy, lora_rank: int | None = None):
    """BertTextClassifier (XLMRobertaTextClassifier for XLM-R, BertMeanTextClassifier for a
    BERT without a pooler) for 3 classes without preprocessor, its variables on `strategy`,
    computing what shared.runs.encoder says (apply_encoder_numbers).

    The preprocessor runs in the tf.data pipeline instead (see data.py), so fit, evaluate and
    predict take token ids. A backbone-only preset gets a fresh head, as in the notebook; a
    classifier preset (a run's `preset/`) brings its trained head.
    """
    numbers = encoder_numbers(preset)
    folder = Path(keras_hub_preset(preset))
    # keras-hub re-initialises a saved head when num_classes is passed, even unchanged.
    head = {} if (folder / TASK_CONFIG).is_file() else {"num_classes": NUM_CLASSES}
    classifier_class, _ = task_classes(numbers)
    # keras-hub's converter would port BERT's pooler, which these folders lack.
    own_loader = preset_kind(preset) == "hf" and numbers.architecture == "bert" \
        and numbers.tokenizer == "sentencepiece"
    with strategy.scope():
        if own_loader:
            classifier = classifier_class(load_hf_backbone(folder, numbers), NUM_CLASSES,
                                          dropout=numbers.dropout)
        else:
            classifier = _from_preset(classifier_class, preset, preprocessor=None, **head)
            apply_encoder_numbers(classifier.backbone, numbers)
        if classifier.num_classes != NUM_CLASSES:
            raise PresetError(f"--preset {preset}: holds a classifier for "
                              f"{classifier.num_classes} classes; Watson has {NUM_CLASSES}")
        if lora_rank:
            # keras-hub needs LoRA variables created under the scope, like every other one.
            classifier.backbone.enable_lora(lora_rank)
    return classifier


def keras_hub_preset(preset: str) -> str:
    """What keras-hub's from_preset takes for `preset`: a preset name as it is, any local
    preset as its folder (shared.runs.presets may name a folder by an alias)."""
    return preset if preset_kind(preset) == "name" else str(preset_dir(preset)[0])


def _from_preset(cls, preset: str, **kwargs):
    kind = preset_kind(preset)
    try:
        return cls.from_preset(keras_hub_preset(preset), **kwargs)
    except Exception as err:  # keras-hub raises many types (hub, JSON, shape, class mismatch)
        where = ("a keras-hub preset name; it needs network access to the model hub, or attach "
                 "the model under /kaggle/input and pass its folder") if kind == "name" else \
            f"a folder that keras-hub cannot load as a {cls.__name__} preset"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PresetError(f"--preset {preset}: {where} ({type(err).__name__}: {reason})") from None


def check_sequence_length(preprocessor, classifier) -> None:
    limit = classifier.backbone.max_sequence_length
    if preprocessor.sequence_length > limit:
        raise ValueError(f"--sequence-length {preprocessor.sequence_length}: the preset's "
                         f"position table holds {limit}; pass at most {limit}")


def count_params(classifier) -> dict:
    """Parameter counts as Keras sees them: with LoRA, keras-hub's per-head factors count."""
    total = int(sum(np.prod(v.shape) for v in classifier.weights))
    trainable = int(sum(np.prod(v.shape) for v in classifier.trainable_weights))
    return {"total": total, "trainable": trainable,
            "trainable_pct": round(100.0 * trainable / total, 4)}


def inference_model(classifier) -> keras.Model:
    """Logits and final-layer [CLS] vectors in one backbone pass.

    The classifier's dropout is the identity at inference, so the logits equal
    classifier.predict's; the [CLS] vector is sequence_output[:, 0, :], the definition the
    JAX side uses for its embeddings too.
    """
    features = classifier.backbone.input
    outputs = classifier.backbone(features)
    if isinstance(classifier, keras_hub.models.XLMRobertaTextClassifier):
        # sequence output only; the head is dense(tanh) on <s>, then the logits
        cls = outputs[:, 0, :]
        logits = classifier.output_dense(classifier.pooled_dense(cls))
    elif isinstance(classifier, BertMeanTextClassifier):
        cls = outputs["sequence_output"][:, 0, :]
        logits = classifier.output_dense(classifier.pool(outputs["sequence_output"],
                                                         features["padding_mask"]))
    else:
        cls, logits = outputs["sequence_output"][:, 0, :], classifier.output_dense(
            outputs["pooled_output"])
    return keras.Model(features, {"logits": logits, "cls": cls})


def save_preset(classifier, preprocessor, preset_dir: Path, numbers: EncoderNumbers) -> None:
    """A keras-hub preset of the trained classifier, with its preprocessor, for `predict`;
    with the preprocessor's text rules (shared.runs.tokenization.NORMALIZER_FILE + README)
    when it has them, and the encoder's numbers (shared.runs.encoder.NUMBERS_FILE) when
    keras-hub's files alone would be read as other numbers (its BERT config has no GELU or
    epsilon field, nor a BERT without pooler); the loaders read both back."""
    # An uncompiled twin sharing the trained layers: saving the compiled classifier would
    # store its Adam moments too, twice the size of the weights.
    head = ["output_dense"]
    extra = {}
    if isinstance(classifier, keras_hub.models.XLMRobertaTextClassifier):
        extra = {"hidden_dim": classifier.hidden_dim}
        head.append("pooled_dense")
    twin = type(classifier)(classifier.backbone, classifier.num_classes,
                            preprocessor=preprocessor, activation=classifier.activation,
                            dropout=classifier.dropout, **extra)
    for name in head:
        getattr(twin, name).set_weights(getattr(classifier, name).get_weights())
    twin.save_to_preset(str(preset_dir))
    normalizer = text_normalizer(preprocessor)
    if normalizer is not None:
        normalizer.save(preset_dir)
    if encoder_numbers(str(preset_dir)) != numbers:  # keras-hub's files alone say otherwise
        numbers.save(preset_dir)
