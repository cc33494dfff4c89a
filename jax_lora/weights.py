"""Pretrained BERT and XLM-R weights into the Flax model: keras-hub presets (BertBackbone,
XLMRobertaBackbone) and Hugging Face folders (model_type bert, xlm-roberta).

Both readers map every tensor by name onto a parameter path of models.BertClassifier, check
its shape, and fail on any tensor left over or any parameter left unset; the head and the LoRA
factors are the only parameters that start fresh. Tensors are read one at a time straight into
the model, so loading needs the weights' memory plus one tensor, not twice the weights. Files
are read directly (h5py, safetensors), so loading never imports TensorFlow; only a keras-hub
preset *name* needs keras_hub, to download the preset folder (shared.runs.presets).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import h5py
import jax
import numpy as np
from flax import nnx

from jax_lora.lora import LoraConfig, LoraParam, init_dora_magnitudes
from jax_lora.models import BertClassifier, BertConfig
from jax_lora.quant import quantize, quantized_linears
from jax_lora.tokenizer import Tokenizer
from jax_lora.xlmr_tokenizer import XLMRobertaTokenizer
from shared.runs.encoder import EncoderNumbers, encoder_numbers
from shared.runs.presets import (HF_MODEL_TYPES, KERAS_BACKBONES, describe_preset,
                                 preset_dir)

# Not part of BertModel: the position-id buffer and the pre-training (MLM/NSP) heads.
HF_IGNORED = re.compile(r"(bert\.)?embeddings\.position_ids|cls\..*")


@dataclass(frozen=True)
class WeightNames:
    """How one checkpoint format names BERT's tensors, as tables: a tensor is named by its
    module (a layer inside transformer layer i, or a top-level layer) and a leaf, whose meaning
    depends on the kind of layer (layer_kind)."""
    layer: str                        # regex of a module inside a layer: (index, part)
    layer_parts: dict[str, str]       # part -> our path inside layers/<i>
    top_parts: dict[str, str]         # top-level module -> our path
    leaves: dict[str, dict[str, str]]  # kind -> {leaf in the file: our leaf}, in file order

    def path(self, module: str, leaf: str) -> tuple | None:
        """Our parameter path of (module, leaf); None when it has no counterpart."""
        match = re.fullmatch(self.layer, module)
        if match and match.group(2) in self.layer_parts:
            prefix = ("layers", int(match.group(1)), *self.layer_parts[match.group(2)].split("/"))
        elif module in self.top_parts:
            prefix = tuple(self.top_parts[module].split("/"))
        else:
            return None
        ours = self.leaves[layer_kind(prefix[-1])].get(leaf)
        return None if ours is None else (*prefix, ours)


def layer_kind(name: str) -> str:
    """'embedding', 'layer_norm' or 'dense', from a layer's name (ours or keras-hub's)."""
    return ("embedding" if name.endswith("embedding") else
            "layer_norm" if name.endswith("layer_norm") else "dense")


# Hugging Face: encoder.layer.<i>.<part>.<leaf> and <top>.<leaf> (after any "bert." prefix);
# `weight` means the kind's main tensor, and checkpoints converted from TensorFlow name the
# LayerNorm leaves gamma/beta.
HF_NAMES = WeightNames(
    layer=r"encoder\.layer\.(\d+)\.(.+)",
    layer_parts={"attention.self.query": "attention/query", "attention.self.key": "attention/key",
                 "attention.self.value": "attention/value",
                 "attention.output.dense": "attention/output",
                 "attention.output.LayerNorm": "attention_layer_norm",
                 "intermediate.dense": "ffn_in", "output.dense": "ffn_out",
                 "output.LayerNorm": "ffn_layer_norm"},
    top_parts={"embeddings.word_embeddings": "embeddings/token_embedding",
               "embeddings.position_embeddings": "embeddings/position_embedding",
               "embeddings.token_type_embeddings": "embeddings/segment_embedding",
               "embeddings.LayerNorm": "embeddings/layer_norm", "pooler.dense": "pooler"},
    leaves={kind: {"weight": weight, "bias": "bias", "gamma": "scale", "beta": "bias"}
            for kind, weight in (("embedding", "embedding"), ("layer_norm", "scale"),
                                 ("dense", "kernel"))})
# keras-hub BertTextClassifier: transformer_layer_<i>/<part> and <top> layer paths; a layer's
# variables in creation order, which is how model.weights.h5 indexes them (_h5_variable_name).
KERAS_NAMES = WeightNames(
    layer=r"transformer_layer_(\d+)/(.+)",
    layer_parts={"self_attention_layer/query": "attention/query",
                 "self_attention_layer/key": "attention/key",
                 "self_attention_layer/value": "attention/value",
                 "self_attention_layer/attention_output": "attention/output",
                 "self_attention_layer_norm": "attention_layer_norm",
                 "feedforward_intermediate_dense": "ffn_in",
                 "feedforward_output_dense": "ffn_out",
                 "feedforward_layer_norm": "ffn_layer_norm"},
    top_parts={"token_embedding": "embeddings/token_embedding",
               "position_embedding": "embeddings/position_embedding",
               "segment_embedding": "embeddings/segment_embedding",
               "embeddings_layer_norm": "embeddings/layer_norm", "pooled_dense": "pooler",
               "logits": "head"},  # the head lives in BertTextClassifier, not the backbone
    leaves={"embedding": {"embeddings": "embedding"},
            "layer_norm": {"gamma": "scale", "beta": "bias"},
            "dense": {"kernel": "kernel", "bias": "bias"}})

# XLM-R (keras-hub's XLMRobertaBackbone, the layers named as BERT's): TokenAndPositionEmbedding
# "embeddings" holds the token and position tables; XLMRobertaTextClassifier's head is its
# pooled_dense and logits (task.weights.h5).
KERAS_XLMR_NAMES = dataclasses.replace(KERAS_NAMES, top_parts={
    "embeddings/token_embedding": "embeddings/token_embedding",
    "embeddings/position_embedding": "embeddings/position_embedding",
    "embeddings_layer_norm": "embeddings/layer_norm", "pooled_dense": "head/dense",
    "logits": "head/out_proj"})
# Hugging Face XLM-R (after any "roberta." prefix): BERT's layer names, no pooler the head
# reads, classifier.dense / classifier.out_proj as the head (read_head).
HF_XLMR_NAMES = dataclasses.replace(HF_NAMES, top_parts={
    "embeddings.word_embeddings": "embeddings/token_embedding",
    "embeddings.position_embeddings": "embeddings/position_embedding",
    "embeddings.LayerNorm": "embeddings/layer_norm", "classifier.dense": "head/dense",
    "classifier.out_proj": "head/out_proj"})
# Not part of keras-hub's XLMRobertaBackbone, which its converter skips as well: the
# position-id buffer, XLMRobertaModel's pooler (XLMRobertaForSequenceClassification does not
# read it), the MLM head, the task head (read_head reads it), and the token-type table, which
# is folded into the position table (_keras_hub_positions).
HF_XLMR_IGNORED = re.compile(r"(roberta\.)?(embeddings\.(position_ids|token_type_embeddings\..*)|"
                             r"pooler\..*)|lm_head\..*|classifier\..*")
TOKEN_TYPES = "embeddings.token_type_embeddings.weight"
# How each format names an architecture; the files' own names for it.
HF_FORMATS = {"bert": (HF_NAMES, HF_IGNORED, "bert."),
              "xlm_roberta": (HF_XLMR_NAMES, HF_XLMR_IGNORED, "roberta.")}
KERAS_FORMATS = {"bert": KERAS_NAMES, "xlm_roberta": KERAS_XLMR_NAMES}
# What keras-hub's RobertaBackbone and XLMRobertaTextClassifier fix instead of reading from a
# config: no segment embedding, and the classifier's dropout default 0.0 (Hugging Face's
# classification head drops with hidden_dropout_prob, 0.1). The GELU and LayerNorm epsilon
# come from shared.runs.encoder, as for BERT.
XLMR_FIXED = {"num_segments": 0, "architecture": "xlm_roberta", "head_dropout": 0.0}
# By tokenizer family (shared.runs.encoder): BERT's WordPiece, or XLM-R's SentencePiece, which
# BERTs such as multilingual-e5 use too.
TOKENIZERS = {"wordpiece": Tokenizer, "sentencepiece": XLMRobertaTokenizer}


def _numbers_fields(numbers: EncoderNumbers) -> dict:
    """BertConfig's fields that shared.runs.encoder decides for both trainers."""
    return {"activation": numbers.activation, "layer_norm_epsilon": numbers.layer_norm_epsilon,
            "dropout": numbers.dropout, "pooler": numbers.pooler}

# Parameters that start fresh instead of coming from the checkpoint.
FRESH = nnx.Any(LoraParam, nnx.PathContains("head"))
# What the readers yield: (parameter path, array, tensor name in the file).
Tensor = tuple[tuple, np.ndarray, str]


class WeightsError(ValueError):
    """A weights file that does not fit the model; the message names the tensor and file."""


@dataclass
class Pretrained:
    model: BertClassifier
    config: BertConfig
    tokenizer: Tokenizer | XLMRobertaTokenizer
    source: dict  # shared.runs.presets.describe_preset: preset, kind, file checksums, sha256


def load_pretrained(preset: str, lora: LoraConfig, *, num_classes: int = 3, seed: int = 0,
                    pooling: str = "cls", source: dict | None = None,
                    base_dtype: str = "float32", quantize_pooler: bool = True,
                    dropout: float | None = None, tuning=None) -> Pretrained:
    """The model with pretrained encoder + pooler, a fresh head and fresh LoRA factors (from
    `seed`; DoRA magnitudes = the pretrained kernels' column norms), its tokenizer, and where
    the weights came from (shared.runs.presets.describe_preset, the same record tf_baseline
    writes; pass `source` when it is already computed). `base_dtype` (jax_lora.quant): the
    encoder's kernels, and the pooler's when `quantize_pooler`, are stored quantized as they
    are read, so the float32 kernels are never all in memory at once. `dropout` replaces the
    preset's rate at every encoder site (and BERT's head). `tuning` (jax_lora.tuners.Tuning):
    another family's parameters, fresh like the head."""
    directory, file_kind = preset_dir(preset)
    read = read_hf if file_kind == "hf" else read_keras
    config, tensors, weights_file = read(directory)
    if dropout is not None:
        config = dataclasses.replace(config, dropout=dropout)
    source = source or describe_preset(preset)
    model = _fresh_model(config, num_classes, lora, seed, pooling, tuning)
    assign(model, tensors, weights_file, base_dtype=base_dtype,
           stored={path for path, _ in quantized_linears(model, pooler=quantize_pooler)},
           parameters=nnx.Not(fresh_filter(config)))
    init_dora_magnitudes(model)
    if tuning is not None:
        tuning.after_load(model, seed)
    tokenizer = TOKENIZERS[encoder_numbers(str(directory)).tokenizer].from_preset_dir(
        directory, file_kind)
    return Pretrained(model=model, config=config, tokenizer=tokenizer, source=source)


def _fresh_model(config: BertConfig, num_classes: int, lora: LoraConfig, seed: int,
                 pooling: str, tuning=None) -> BertClassifier:
    """An abstract model whose head and LoRA factors alone hold values (from `seed`); the
    pretrained parameters are left for assign()."""
    model = nnx.eval_shape(lambda: BertClassifier(config, num_classes=num_classes, lora=lora,
                                                  pooling=pooling, tuning=tuning,
                                                  rngs=nnx.Rngs(0)))
    nnx.update(model, _fresh_state(config, num_classes, lora, pooling, tuning,
                                   jax.random.key(seed)))
    return model


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _fresh_state(config: BertConfig, num_classes: int, lora: LoraConfig, pooling: str,
                 tuning, key: jax.Array):
    # XLA drops the random init of everything not returned, so mBERT's 180M pretrained
    # parameters are never drawn; jit caches the program per (config, num_classes, lora).
    model = BertClassifier(config, num_classes=num_classes, lora=lora, rngs=nnx.Rngs(key),
                           pooling=pooling, tuning=tuning)
    return nnx.state(model, fresh_filter(config))


def fresh_filter(config: BertConfig) -> nnx.filterlib.Filter:
    """FRESH, and the pooler that cls pooling adds to weights without one (e5)."""
    return FRESH if config.pooler else nnx.Any(FRESH, nnx.PathContains("pooler"))


def read_hf(directory: Path) -> tuple[BertConfig, Iterator[Tensor], Path]:
    """BertConfig, tensors (read lazily) and weights file of a Hugging Face BERT or XLM-R
    folder."""
    config_file, weights_file = directory / "config.json", directory / "model.safetensors"
    hf = json.loads(config_file.read_text(encoding="utf-8"))
    architecture = HF_MODEL_TYPES.get(hf.get("model_type", "bert"))
    if architecture is None:
        raise WeightsError(f"{config_file}: model_type={hf['model_type']!r}; supported: "
                           f"{', '.join(HF_MODEL_TYPES)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise WeightsError(f"{config_file}: position_embedding_type="
                           f"{hf['position_embedding_type']!r}; only 'absolute' is supported")
    numbers = encoder_numbers(str(directory))
    common = dict(vocab_size=hf["vocab_size"], hidden_dim=hf["hidden_size"],
                  num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                  intermediate_dim=hf["intermediate_size"], **_numbers_fields(numbers))
    if architecture == "bert":
        config = BertConfig(**common, max_sequence_length=hf["max_position_embeddings"],
                            num_segments=hf.get("type_vocab_size", 2))
    else:
        if hf.get("pad_token_id", 1) != 1:
            raise WeightsError(f"{config_file}: pad_token_id={hf['pad_token_id']!r}; only 1 "
                               f"(positions from 2, as keras-hub's converter assumes)")
        # keras-hub's converter: HF's position rows 0 and 1 only ever serve padding.
        config = BertConfig(**common, max_sequence_length=hf["max_position_embeddings"] - 2,
                            **XLMR_FIXED)
    return config, _hf_tensors(weights_file, architecture), weights_file


def _hf_tensors(weights_file: Path, architecture: str) -> Iterator[Tensor]:
    from safetensors import safe_open

    names, ignored, prefix = HF_FORMATS[architecture]
    # pread, not the default mmap: mapped pages stay resident until the file is closed, which
    # would bring back a second copy of the weights.
    with safe_open(weights_file, framework="numpy", backend="pread") as weights:
        token_types = None if architecture == "bert" else next(
            (weights.get_tensor(name) for name in weights.keys()
             if name.removeprefix(prefix) == TOKEN_TYPES), None)
        for name in weights.keys():
            if ignored.fullmatch(name):
                continue
            path = _hf_path(name.removeprefix(prefix), names)
            if path is None:
                raise WeightsError(f"{weights_file}: tensor {name} has no place in the model")
            array = weights.get_tensor(name)
            if architecture == "xlm_roberta" and path[:2] == ("embeddings", "position_embedding"):
                array = _keras_hub_positions(array, token_types)
            # torch Linear stores [out, in]; embeddings are [rows, H] in both.
            yield path, (array.T if path[-1] == "kernel" else array), name


def _keras_hub_positions(positions: np.ndarray, token_types: np.ndarray | None) -> np.ndarray:
    """XLM-R's position table as keras-hub's converter (convert_xlm_roberta.py) makes it.
    Hugging Face numbers real tokens from padding_idx + 1 = 2 (rows 0 and 1 serve padding
    only) where keras-hub counts from 0, so keras-hub's row i is HF's row i + 2; and HF adds
    token-type row 0 to every token (XLM-R has one type), which keras-hub, without a segment
    embedding, adds to the position table once, in float32 as here."""
    positions = positions[2:]
    return positions if token_types is None else positions + token_types[0]


def _hf_path(name: str, names: WeightNames) -> tuple | None:
    module, _, leaf = name.rpartition(".")
    return names.path(module, leaf)


def read_keras(directory: Path) -> tuple[BertConfig, Iterator[Tensor], Path]:
    """BertConfig, tensors (read lazily) and weights file of a keras-hub BERT or XLM-R preset
    folder."""
    config_file, weights_file = directory / "config.json", directory / "model.weights.h5"
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    architecture = KERAS_BACKBONES.get(saved.get("class_name"))
    if architecture is None:
        raise WeightsError(f"{config_file}: class_name={saved.get('class_name')!r}; "
                           f"supported: {', '.join(KERAS_BACKBONES)}")
    keras = saved["config"]
    common = dict(vocab_size=keras["vocabulary_size"], hidden_dim=keras["hidden_dim"],
                  num_layers=keras["num_layers"], num_heads=keras["num_heads"],
                  intermediate_dim=keras["intermediate_dim"],
                  max_sequence_length=keras.get("max_sequence_length", 512),
                  **_numbers_fields(encoder_numbers(str(directory))))
    config = (BertConfig(**common, num_segments=keras.get("num_segments", 2))
              if architecture == "bert" else BertConfig(**common, **XLMR_FIXED))
    tensors = _keras_tensors(weights_file, KERAS_FORMATS[architecture])
    if not config.pooler:
        # keras-hub's BertBackbone always builds pooled_dense; a model saved from one without
        # a pooler (encoder_numbers.json says so) holds an unused one.
        tensors = (tensor for tensor in tensors if tensor[0][0] != "pooler")
    return config, tensors, weights_file


def _keras_tensors(weights_file: Path, names: WeightNames) -> Iterator[Tensor]:
    """Keras 3 names h5 groups after layer classes (`transformer_encoder_3`), so tensors are
    mapped through the layer names stored in each group's `vars` attributes instead."""
    with h5py.File(weights_file, "r") as h5:
        for name, dataset in _keras_named_datasets(h5, weights_file):
            layer, _, index = name.rpartition("/")
            path = names.path(layer, _h5_variable_name(layer, index))
            if path is None:
                raise WeightsError(f"{weights_file}: tensor {name} has no place in the model")
            array = dataset[()]
            # Attention kernels are [H, heads, head_dim] (q, k, v) and [heads, head_dim, H]
            # (output), biases [heads, head_dim]; ours are [d_in, d_out] and [d_out].
            if path[-1] == "kernel" and path[-2] == "output":
                array = array.reshape(-1, array.shape[-1])
            elif path[-1] == "kernel":
                array = array.reshape(array.shape[0], -1)
            elif path[-1] == "bias":
                array = array.reshape(-1)
            yield path, array, name


def _h5_variable_name(layer: str, index: str) -> str:
    """Keras saves a layer's variables by creation index; the name depends on the layer kind."""
    names = list(KERAS_NAMES.leaves[layer_kind(layer.rpartition("/")[2])])
    return names[int(index)] if index.isdigit() and int(index) < len(names) else index


def _keras_named_datasets(h5: h5py.File, weights_file: Path) -> list[tuple[str, h5py.Dataset]]:
    """(layer-name path/index, unread dataset) for every variable, e.g. transformer_layer_0/
    self_attention_layer/query/0."""
    found = []

    def visit(group_path, item):
        if not isinstance(item, h5py.Dataset):
            return
        parts = group_path.split("/")  # e.g. layers/transformer_encoder/.../vars/0
        names = []
        for end in range(len(parts) - 1):
            group = h5["/".join(parts[:end])] if end else h5
            if isinstance(group.get("vars"), h5py.Group):
                if "name" not in group["vars"].attrs:
                    raise WeightsError(f"{weights_file}: group {group.name} has no layer name; "
                                       f"re-save the preset with keras >= 3")
                names.append(group["vars"].attrs["name"])
        # names[0] is the backbone itself.
        found.append(("/".join([*names[1:], parts[-1]]), item))

    h5.visititems(visit)
    return found


def read_keras_head(task_weights: Path) -> dict[str, np.ndarray]:
    """{'kernel': [H, classes], 'bias': [classes]}: the head (Dense "logits") in the
    task.weights.h5 of a keras-hub classifier preset, which holds the task's own variables
    (head, the compiled optimizer's scalars) but not the backbone's (model.weights.h5)."""
    head = {path[-1]: array for path, array, _ in _keras_head_tensors(task_weights, KERAS_NAMES)}
    missing = {"kernel", "bias"} - set(head)
    if missing:
        raise WeightsError(f"{task_weights}: no head {' or '.join(sorted(missing))} (Dense "
                           f"'logits'); pass the task.weights.h5 of a BertTextClassifier preset")
    return head


def _keras_head_tensors(task_weights: Path, names: WeightNames) -> list[Tensor]:
    found = []
    with h5py.File(task_weights, "r") as h5:
        for name, dataset in _keras_named_datasets(h5, task_weights):
            layer, _, index = name.rpartition("/")
            path = names.path(layer, _h5_variable_name(layer, index))
            if path is not None and path[0] == "head":
                found.append((path, np.asarray(dataset[()], np.float32), name))
    return found


def read_head(preset: str) -> tuple[list[Tensor], Path]:
    """(tensors, file) of the classification head a preset folder carries (see load_head): a
    keras-hub classifier preset's task.weights.h5 (BertTextClassifier's logits;
    XLMRobertaTextClassifier's pooled_dense and logits), or a Hugging Face XLM-R folder's
    classifier.dense and classifier.out_proj. No tensors when it has none. load_pretrained
    never reads it, as keras-hub's converters do not: a run's head starts fresh (a
    checkpoint's classes and their order are its own)."""
    directory, file_kind = preset_dir(preset)
    if file_kind == "keras_dir":
        config, _, _ = read_keras(directory)
        task_weights = directory / "task.weights.h5"
        if not task_weights.is_file():
            return [], task_weights
        return _keras_head_tensors(task_weights, KERAS_FORMATS[config.architecture]), task_weights
    from safetensors import safe_open

    config, _, weights_file = read_hf(directory)
    names, _, prefix = HF_FORMATS[config.architecture]
    tensors = []
    with safe_open(weights_file, framework="numpy") as weights:
        for name in weights.keys():
            path = _hf_path(name.removeprefix(prefix), names)
            if path is not None and path[0] == "head":
                array = weights.get_tensor(name)
                tensors.append((path, array.T if path[-1] == "kernel" else array, name))
    return tensors, weights_file


def load_head(model: BertClassifier, preset: str) -> None:
    """The preset's own classification head (read_head) into `model`; WeightsError naming the
    file when it has none or it does not fit."""
    tensors, source = read_head(preset)
    assign(model, tensors, source, parameters=nnx.All(nnx.Param, nnx.PathContains("head")))


def assign(model: BertClassifier, tensors: Iterable[Tensor], weights_file: Path, *,
           base_dtype: str = "float32", stored: set = frozenset(),
           parameters: nnx.filterlib.Filter = nnx.Not(FRESH)) -> None:
    """Put each tensor into the model as it is read; every parameter of `parameters` (by
    default all but head and LoRA) must receive exactly one. The kernels of the modules at the
    paths `stored` are quantized as `base_dtype` (jax_lora.quant) one at a time, and stored so
    once all are read."""
    state = nnx.state(model, parameters)
    unset, set_from, quantized = dict(nnx.to_flat_state(state)), {}, {}
    for path, array, name in tensors:
        where = "/".join(map(str, path))
        if path not in unset:
            reason = f"already set from {set_from[path]}" if path in set_from else "maps to"
            raise WeightsError(f"{weights_file}: tensor {name} has no place in the model "
                               f"({reason} {where})")
        variable = unset.pop(path)
        if array.shape != variable.shape:
            raise WeightsError(f"{weights_file}: tensor {name} has shape {array.shape}, "
                               f"parameter {where} needs {variable.shape}")
        set_from[path] = name
        if base_dtype != "float32" and path[-1] == "kernel" and path[:-1] in stored:
            quantized[path[:-1]] = quantize(np.asarray(array, np.float32), base_dtype)
            continue
        variable.set_value(np.asarray(array, np.float32))
    if unset:
        raise WeightsError(f"{weights_file}: no tensor for parameter "
                           f"{'/'.join(map(str, next(iter(unset))))}")
    nnx.update(model, state)
    for path, (codes, scales) in quantized.items():
        module_at(model, path).store_base(base_dtype, codes, scales)


def module_at(model, path: tuple):
    """The submodule of `model` at a module path such as ("layers", 0, "attention", "query")."""
    for part in path:
        model = model[part] if isinstance(part, int) else getattr(model, part)
    return model
