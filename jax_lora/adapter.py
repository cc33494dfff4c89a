"""A run's trained weights as an artifact, and a run started from another run's (LP→X).

run_dir/adapter/  adapter.safetensors + adapter.json: what the base preset lacks, i.e. the
    trainable leaves (A, B and DoRA's magnitudes, the head, the pooler if it trained; every
    parameter for --method full) and the fresh head even when frozen, plus the method, the
    LoRA config, the pooling and the base preset's checksum. For LoRA a few MB that turn the
    base model into the trained one. jax_lora/peft_format.py writes the same weights in
    Hugging Face PEFT's format.
--init-from RUN: a new run starts from a finished run's head, and its adapters and pooler
    where both runs have them (seed 003's linear probe first, then LoRA or full fine-tuning).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import safetensors.numpy
from flax import nnx

from jax_lora.checkpoint import flat_arrays, replace_arrays
from jax_lora.lora import LoraConfig, LoraParam, init_dora_magnitudes
from jax_lora.quant import base_dtype_of
from jax_lora.tuners import Tuning, trainable_filter
from jax_lora.weights import Pretrained, load_pretrained
from shared.runs.run_dir import MANIFEST, atomic_write_bytes, atomic_write_text

ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_META = "adapter.json"
# What a child run takes from its parent (--init-from): parameter paths containing these.
INHERITED = ("head", "pooler")


def adapter_filter(lora: LoraConfig, *, full: bool = False, pooler: bool = False,
                   tuning: Tuning | None = None, pooling: str = "cls") -> nnx.filterlib.Filter:
    """What the base preset lacks: the trainable leaves (of a jax_lora/tuners family too:
    `tuning`, read with `pooling`), the fresh head even when frozen, and the pooler when it is
    not the base's (`pooler`: inherited from an --init-from parent)."""
    kept = [trainable_filter(lora, full=full, tuning=tuning, pooling=pooling),
            nnx.All(nnx.Param, nnx.PathContains("head"))]
    if pooler:
        kept.append(nnx.All(nnx.Param, nnx.PathContains("pooler")))
    return nnx.Any(*kept)


def save_adapter(directory: Path, model, source: dict, *, method: str,
                 pooler: bool = False) -> None:
    """Write `model`'s adapter (see adapter_filter) and what it must be loaded onto."""
    state = nnx.state(model, adapter_filter(model.lora, full=method == "full", pooler=pooler,
                                            tuning=model.tuning, pooling=model.pooling))
    arrays = {name: np.asarray(value) for name, value in flat_arrays(state).items()}
    meta = {"method": method, "lora": dataclasses.asdict(model.lora), "pooling": model.pooling,
            **({} if model.tuning is None else {"tuning": model.tuning.to_dict()}),
            "pooler": pooler, "base_dtype": base_dtype_of(model),
            "num_classes": model.num_classes, "base": source,
            "bert_config": dataclasses.asdict(model.config),
            "parameters": {name: list(value.shape) for name, value in arrays.items()}}
    directory = Path(directory)
    atomic_write_bytes(directory / ADAPTER_WEIGHTS, safetensors.numpy.save(arrays))
    # Written last: its presence says the weights next to it are complete.
    atomic_write_text(directory / ADAPTER_META, json.dumps(meta, indent=2, default=str) + "\n")


def read_adapter_meta(directory: Path) -> dict:
    """adapter.json of a run's adapter/ folder; adapters saved before --method are LoRA."""
    directory = Path(directory)
    if not (directory / ADAPTER_META).is_file():
        raise FileNotFoundError(f"{directory}: no {ADAPTER_META}; pass a run's adapter/ folder")
    meta = json.loads((directory / ADAPTER_META).read_text())
    return {"method": "lora", "pooling": "cls", "pooler": False, "base_dtype": "float32",
            **meta}


def load_adapter(directory: Path, preset: str | None = None) -> Pretrained:
    """The base preset (from adapter.json unless given), its kernels stored as in training
    (--base-dtype), with the adapter applied. Refuses a base whose checksum differs from the
    one the adapter was trained on."""
    directory = Path(directory)
    meta = read_adapter_meta(directory)
    lora = LoraConfig(**meta["lora"])
    tuning = None if meta.get("tuning") is None else Tuning.from_dict(meta["tuning"])
    pretrained = load_pretrained(preset or meta["base"]["preset"], lora,
                                 num_classes=meta["num_classes"], pooling=meta["pooling"],
                                 base_dtype=meta["base_dtype"],
                                 quantize_pooler=not (meta["pooler"] or lora.train_pooler),
                                 tuning=tuning)
    if pretrained.source.get("sha256") != meta["base"].get("sha256"):
        raise ValueError(f"{directory}: trained on base weights with sha256 "
                         f"{meta['base'].get('sha256')}, but {pretrained.source.get('preset')} "
                         f"has {pretrained.source.get('sha256')}; pass the original --preset")
    state = nnx.state(pretrained.model, adapter_filter(lora, full=meta["method"] == "full",
                                                       pooler=meta["pooler"], tuning=tuning,
                                                       pooling=meta["pooling"]))
    arrays = safetensors.numpy.load_file(str(directory / ADAPTER_WEIGHTS))
    nnx.update(pretrained.model, replace_arrays(state, arrays, str(directory / ADAPTER_WEIGHTS)))
    return pretrained


def export_parser(prog: str, description: str, out_help: str) -> argparse.ArgumentParser:
    """The flags every exporter of a finished run shares: --run-dir, --out, --preset."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--run-dir", type=Path, required=True, help="a finished jax_lora run")
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--preset", default=None,
                        help="the base weights, when they moved since training [default: the "
                             "preset recorded in the adapter]")
    return parser


# ---------------------------------------------------------------- --init-from (LP→X)

def read_parent(run_dir: Path, *, split: dict, weights: dict, pooling: str) -> dict:
    """The record of a finished jax_lora run that a new run may start from: its run directory,
    method, split fingerprint and adapter checksum. ValueError naming what to change when it is
    unfinished, on another split, base or pooling, or a full fine-tune (its encoder would
    replace the base, which the new run's manifest says it trains on)."""
    run_dir = Path(run_dir)
    flag = f"--init-from {run_dir}"
    manifest_path, adapter_dir = run_dir / MANIFEST, run_dir / ADAPTER
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{flag}: no {MANIFEST}; pass a finished jax_lora run directory")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("trainer") != "jax_lora" or manifest.get("status") != "finished" or not (
            adapter_dir / ADAPTER_META).is_file():
        raise ValueError(f"{flag}: not a finished jax_lora run (trainer "
                         f"{manifest.get('trainer')!r}, status {manifest.get('status')!r}); "
                         f"finish it first (rerun its command)")
    meta = read_adapter_meta(adapter_dir)
    theirs, ours = manifest["split"]["fingerprint"], split["fingerprint"]
    problems = [
        (theirs != ours, f"it was trained on split {theirs[:12]}, this run uses {ours[:12]}; "
                         f"give both runs the same data flags"),
        (meta["base"].get("sha256") != weights.get("sha256"),
         f"its base weights ({meta['base'].get('preset')}) differ from --preset's; pass its "
         f"--preset"),
        (meta["pooling"] != pooling, f"its head reads --pooling {meta['pooling']}, this run "
                                     f"--pooling {pooling}; use the same pooling"),
        (meta["method"] == "full", "it is a full fine-tune (its encoder is not the base); "
                                   "start from a probe or adapter run"),
    ]
    for failed, problem in problems:
        if failed:
            raise ValueError(f"{flag}: {problem}")
    weights_file = adapter_dir / ADAPTER_WEIGHTS
    return {"run_dir": str(run_dir), "method": meta["method"], "split_fingerprint": theirs,
            "adapter_sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest(),
            # its adapter holds a pooler (trained or inherited), which the child then takes
            "pooler": any(name.startswith("pooler.") for name in meta.get("parameters", {}))}


def init_from_parent(model, parent: dict) -> list[str]:
    """Copy the parent run's head, pooler (if it trained one) and adapter leaves that `model`
    also has into `model`, bitwise; returns the copied parameter names. A leaf both have with
    other shapes (another rank) is a ValueError. DoRA magnitudes the parent lacks (a LoRA
    parent) are set to ‖W + s·A·B‖ of the copied adapters, as PEFT does when it adds DoRA to
    trained factors, so the child starts as the parent's model."""
    weights_file = Path(parent["run_dir"]) / ADAPTER / ADAPTER_WEIGHTS
    arrays = safetensors.numpy.load_file(str(weights_file))
    state = nnx.state(model, nnx.Param)
    adapters = {path for path, _ in nnx.to_flat_state(nnx.state(model, LoraParam))}
    copied = []
    for path, variable in nnx.to_flat_state(state):
        name = ".".join(map(str, path))
        inherited = path in adapters or any(part in path for part in INHERITED)
        if not inherited or name not in arrays:
            continue
        if tuple(arrays[name].shape) != tuple(variable.get_value().shape):
            raise ValueError(f"--init-from {parent['run_dir']}: {name} has shape "
                             f"{tuple(arrays[name].shape)} there, {tuple(variable.get_value().shape)}"
                             f" here; use the parent's --rank")
        variable.set_value(arrays[name])
        copied.append(name)
    nnx.update(model, state)
    if not any(name.endswith("lora_magnitude") for name in copied):
        init_dora_magnitudes(model)
    return copied
