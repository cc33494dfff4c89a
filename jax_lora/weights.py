"""Pretrained BERT weights into the Flax model: keras-hub presets and Hugging Face folders.

Both readers map every tensor by name onto a parameter path of models.BertClassifier, check
its shape, and fail on any tensor left over or any parameter left unset; the head and the LoRA
factors are the only parameters that start fresh. Tensors are read one at a time straight into
the model, so loading needs the weights' memory plus one tensor, not twice the weights. Files
are read directly (h5py, safetensors), so loading never imports TensorFlow; only a keras-hub
preset *name* needs keras_hub, to download the preset folder (shared.runs.presets).
"""

from __future__ import annotations

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
from shared.runs.presets import describe_preset, preset_dir

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
    tokenizer: Tokenizer
    source: dict  # shared.runs.presets.describe_preset: preset, kind, file checksums, sha256


def load_pretrained(preset: str, lora: LoraConfig, *, num_classes: int = 3, seed: int = 0,
                    pooling: str = "cls", source: dict | None = None,
                    base_dtype: str = "float32", quantize_pooler: bool = True) -> Pretrained:
    """The model with pretrained encoder + pooler, a fresh head and fresh LoRA factors (from
    `seed`; DoRA magnitudes = the pretrained kernels' column norms), its tokenizer, and where
    the weights came from (shared.runs.presets.describe_preset, the same record tf_baseline
    writes; pass `source` when it is already computed). `base_dtype` (jax_lora.quant): the
    encoder's kernels, and the pooler's when `quantize_pooler`, are stored quantized as they
    are read, so the float32 kernels are never all in memory at once."""
    directory, file_kind = preset_dir(preset)
    read = read_hf if file_kind == "hf" else read_keras
    config, tensors, weights_file = read(directory)
    source = source or describe_preset(preset)
    model = _fresh_model(config, num_classes, lora, seed, pooling)
    assign(model, tensors, weights_file, base_dtype=base_dtype,
           stored={path for path, _ in quantized_linears(model, pooler=quantize_pooler)})
    init_dora_magnitudes(model)
    return Pretrained(model=model, config=config,
                      tokenizer=Tokenizer.from_preset_dir(directory, file_kind),
                      source=source)


def _fresh_model(config: BertConfig, num_classes: int, lora: LoraConfig, seed: int,
                 pooling: str) -> BertClassifier:
    """An abstract model whose head and LoRA factors alone hold values (from `seed`); the
    pretrained parameters are left for assign()."""
    model = nnx.eval_shape(lambda: BertClassifier(config, num_classes=num_classes, lora=lora,
                                                  pooling=pooling, rngs=nnx.Rngs(0)))
    nnx.update(model, _fresh_state(config, num_classes, lora, jax.random.key(seed)))
    return model


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _fresh_state(config: BertConfig, num_classes: int, lora: LoraConfig, key: jax.Array):
    # XLA drops the random init of everything not returned, so mBERT's 180M pretrained
    # parameters are never drawn; jit caches the program per (config, num_classes, lora).
    model = BertClassifier(config, num_classes=num_classes, lora=lora, rngs=nnx.Rngs(key))
    return nnx.state(model, FRESH)


def read_hf(directory: Path) -> tuple[BertConfig, Iterator[Tensor], Path]:
    """BertConfig, tensors (read lazily) and weights file of a Hugging Face BERT folder."""
    config_file, weights_file = directory / "config.json", directory / "model.safetensors"
    hf = json.loads(config_file.read_text(encoding="utf-8"))
    for field, expected in (("model_type", "bert"), ("position_embedding_type", "absolute")):
        if hf.get(field, expected) != expected:
            raise WeightsError(f"{config_file}: {field}={hf[field]!r}; only {expected!r} "
                               f"BERT checkpoints are supported")
    # hidden_act is not read: keras-hub runs every BERT with tanh-GELU (HF's "gelu" is erf),
    # and keras-hub is what the TF baseline and our parity tests use.
    config = BertConfig(vocab_size=hf["vocab_size"], hidden_dim=hf["hidden_size"],
                        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
                        intermediate_dim=hf["intermediate_size"],
                        max_sequence_length=hf["max_position_embeddings"],
                        num_segments=hf.get("type_vocab_size", 2),
                        dropout=hf.get("hidden_dropout_prob", 0.1),
                        layer_norm_epsilon=hf.get("layer_norm_eps", 1e-12))
    return config, _hf_tensors(weights_file), weights_file


def _hf_tensors(weights_file: Path) -> Iterator[Tensor]:
    from safetensors import safe_open

    # pread, not the default mmap: mapped pages stay resident until the file is closed, which
    # would bring back a second copy of the weights.
    with safe_open(weights_file, framework="numpy", backend="pread") as weights:
        for name in weights.keys():
            if HF_IGNORED.fullmatch(name):
                continue
            path = _hf_path(name.removeprefix("bert."))
            if path is None:
                raise WeightsError(f"{weights_file}: tensor {name} has no place in the model")
            array = weights.get_tensor(name)
            # torch Linear stores [out, in]; embeddings are [rows, H] in both.
            yield path, (array.T if path[-1] == "kernel" else array), name


def _hf_path(name: str) -> tuple | None:
    module, _, leaf = name.rpartition(".")
    return HF_NAMES.path(module, leaf)


def read_keras(directory: Path) -> tuple[BertConfig, Iterator[Tensor], Path]:
    """BertConfig, tensors (read lazily) and weights file of a keras-hub preset folder."""
    config_file, weights_file = directory / "config.json", directory / "model.weights.h5"
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    if saved.get("class_name") != "BertBackbone":
        raise WeightsError(f"{config_file}: class_name={saved.get('class_name')!r}; only "
                           f"BertBackbone presets are supported")
    keras = saved["config"]
    config = BertConfig(vocab_size=keras["vocabulary_size"], hidden_dim=keras["hidden_dim"],
                        num_layers=keras["num_layers"], num_heads=keras["num_heads"],
                        intermediate_dim=keras["intermediate_dim"],
                        max_sequence_length=keras.get("max_sequence_length", 512),
                        num_segments=keras.get("num_segments", 2),
                        dropout=keras.get("dropout", 0.1))
    return config, _keras_tensors(weights_file), weights_file


def _keras_tensors(weights_file: Path) -> Iterator[Tensor]:
    """Keras 3 names h5 groups after layer classes (`transformer_encoder_3`), so tensors are
    mapped through the layer names stored in each group's `vars` attributes instead."""
    with h5py.File(weights_file, "r") as h5:
        for name, dataset in _keras_named_datasets(h5, weights_file):
            layer, _, index = name.rpartition("/")
            path = keras_parameter_path(layer, _h5_variable_name(layer, index))
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
    head = {}
    with h5py.File(task_weights, "r") as h5:
        for name, dataset in _keras_named_datasets(h5, task_weights):
            layer, _, index = name.rpartition("/")
            path = keras_parameter_path(layer, _h5_variable_name(layer, index))
            if path is not None and path[0] == "head":
                head[path[-1]] = np.asarray(dataset[()], np.float32)
    missing = {"kernel", "bias"} - set(head)
    if missing:
        raise WeightsError(f"{task_weights}: no head {' or '.join(sorted(missing))} (Dense "
                           f"'logits'); pass the task.weights.h5 of a BertTextClassifier preset")
    return head


def keras_parameter_path(layer: str, variable: str) -> tuple | None:
    """keras-hub BertTextClassifier variable (layer path, variable name) -> our parameter
    path, e.g. ("transformer_layer_0/self_attention_layer/query", "kernel") ->
    ("layers", 0, "attention", "query", "kernel"); None when it has no counterpart."""
    return KERAS_NAMES.path(layer, variable)


def assign(model: BertClassifier, tensors: Iterable[Tensor], weights_file: Path, *,
           base_dtype: str = "float32", stored: set = frozenset()) -> None:
    """Put each tensor into the model as it is read; every parameter but head and LoRA must
    receive exactly one. The kernels of the modules at the paths `stored` are quantized as
    `base_dtype` (jax_lora.quant) one at a time, and stored so once all are read."""
    state = nnx.state(model, nnx.Not(FRESH))
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
