"""Training checkpoints (orbax) and the stand-alone adapter artifact.

run_dir/checkpoints/<step>/  trainable parameters + optimizer state + JSON progress. The base
    weights are not in it: they are reloaded from the preset, whose checksum the config pins.
    Orbax writes into a temporary folder and renames it when complete, so a run killed
    mid-save leaves no checkpoint that looks whole; only the newest `keep` are kept.
run_dir/adapter/  adapter.safetensors (A/B, head, pooler if trained) + adapter.json (LoRA
    config, base preset and checksum): a few MB that turn the base model into the trained one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import safetensors.numpy
from flax import nnx

from jax_lora.lora import LoraConfig, trainable_filter
from jax_lora.weights import Pretrained, load_pretrained
from shared.run_dir import atomic_write_bytes, atomic_write_text

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_META = "adapter.json"


def flat_arrays(state: nnx.State) -> dict[str, jax.Array]:
    """{'layers.0.attention.query.lora_a': array, ...}"""
    return {".".join(map(str, path)): variable.get_value()
            for path, variable in nnx.to_flat_state(state)}


def replace_arrays(state: nnx.State, arrays: dict, source: str) -> nnx.State:
    """A copy of `state` holding `arrays` (by flat_arrays names); every name must match."""
    names = set(flat_arrays(state))
    if names != set(arrays):
        missing, extra = sorted(names - set(arrays)), sorted(set(arrays) - names)
        raise ValueError(f"{source}: parameters do not match the model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}); was it made with another LoRA config?")
    flat = []
    for path, variable in nnx.to_flat_state(state):
        name = ".".join(map(str, path))
        if tuple(arrays[name].shape) != tuple(variable.get_value().shape):
            raise ValueError(f"{source}: {name} has shape {tuple(arrays[name].shape)}, the "
                             f"model expects {tuple(variable.get_value().shape)}")
        flat.append((path, variable.replace(arrays[name])))
    return nnx.from_flat_state(flat)


class Checkpoints:
    """run_dir/checkpoints, created on first use; `keep` newest are kept (None: all)."""

    def __init__(self, run_dir: Path, *, keep: int | None = None):
        # Synchronous saves: a LoRA checkpoint is a few MB, and a save that has returned is
        # on disk, which is what a kill -9 test (and a preempted job) needs.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(Path(run_dir).resolve() / CHECKPOINTS,
                                             options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, trainable: nnx.State, opt_state, meta: dict) -> None:
        arrays = {"trainable": flat_arrays(trainable), "opt_state": jax.tree.leaves(opt_state)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                        meta=ocp.args.JsonSave(meta)))

    def restore(self, trainable: nnx.State, opt_state):
        """(trainable, opt_state, meta) of the newest checkpoint; the arguments give the tree
        structure, shapes and shardings to restore into."""
        like = {"trainable": flat_arrays(trainable), "opt_state": jax.tree.leaves(opt_state)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(
            self.latest_step(), args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                        meta=ocp.args.JsonRestore()))
        arrays = restored.state
        opt_state = jax.tree.unflatten(jax.tree.structure(opt_state), arrays["opt_state"])
        return (replace_arrays(trainable, arrays["trainable"], str(self.manager.directory)),
                opt_state, restored.meta)

    def close(self) -> None:
        self.manager.close()


def latest_meta(run_dir: Path) -> dict | None:
    """The newest checkpoint's JSON progress, without loading arrays or writing anything;
    None when the run directory has no checkpoint."""
    if not (Path(run_dir) / CHECKPOINTS).is_dir():
        return None
    checkpoints = Checkpoints(run_dir)
    step = checkpoints.latest_step()
    meta = None if step is None else checkpoints.manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    checkpoints.close()
    return meta


def adapter_filter(lora: LoraConfig) -> nnx.filterlib.Filter:
    """What the base preset lacks: the trainable leaves, and the fresh head even when frozen."""
    return nnx.Any(trainable_filter(lora), nnx.All(nnx.Param, nnx.PathContains("head")))


def save_adapter(directory: Path, model, source: dict) -> None:
    """Write `model`'s adapter (see adapter_filter) and what it must be loaded onto."""
    state = nnx.state(model, adapter_filter(model.lora))
    arrays = {name: np.asarray(value) for name, value in flat_arrays(state).items()}
    meta = {"lora": dataclasses.asdict(model.lora), "num_classes": model.num_classes,
            "base": source, "bert_config": dataclasses.asdict(model.config),
            "parameters": {name: list(value.shape) for name, value in arrays.items()}}
    directory = Path(directory)
    atomic_write_bytes(directory / ADAPTER_WEIGHTS, safetensors.numpy.save(arrays))
    # Written last: its presence says the weights next to it are complete.
    atomic_write_text(directory / ADAPTER_META, json.dumps(meta, indent=2, default=str) + "\n")


def load_adapter(directory: Path, preset: str | None = None) -> Pretrained:
    """The base preset (from adapter.json unless given) with the adapter applied. Refuses a
    base whose checksum differs from the one the adapter was trained on."""
    directory = Path(directory)
    if not (directory / ADAPTER_META).is_file():
        raise FileNotFoundError(f"{directory}: no {ADAPTER_META}; pass a run's adapter/ folder")
    meta = json.loads((directory / ADAPTER_META).read_text())
    lora = LoraConfig(**meta["lora"])
    pretrained = load_pretrained(preset or meta["base"]["preset"], lora,
                                 num_classes=meta["num_classes"])
    if pretrained.source.get("sha256") != meta["base"].get("sha256"):
        raise ValueError(f"{directory}: trained on base weights with sha256 "
                         f"{meta['base'].get('sha256')}, but {pretrained.source.get('preset')} "
                         f"has {pretrained.source.get('sha256')}; pass the original --preset")
    state = nnx.state(pretrained.model, adapter_filter(lora))
    arrays = safetensors.numpy.load_file(str(directory / ADAPTER_WEIGHTS))
    nnx.update(pretrained.model, replace_arrays(state, arrays, str(directory / ADAPTER_WEIGHTS)))
    return pretrained
