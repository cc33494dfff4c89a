"""A jax_lora LoRA/DoRA adapter in Hugging Face PEFT's own on-disk format, and back.

    python -m jax_lora.peft_format --run-dir RUN --out DIR [--preset P] [--base-model NAME]

DIR gets what PEFT 0.21's `save_pretrained` writes for a LoRA adapter on
BertForSequenceClassification, or XLMRobertaForSequenceClassification for an XLM-R run (task
SEQ_CLS): adapter_config.json, adapter_model.safetensors, and a README.md saying how to load
it, i.e. `PeftModel.from_pretrained(<class>.from_pretrained(base, num_labels=N), DIR)`.
load_peft reads such a folder, ours or one PEFT wrote, into our BertClassifier. Neither
direction imports torch or peft; the names, layouts and config fields below are PEFT's, as
tests/jax_lora/test_peft_format.py (and test_xlmr_outputs.py for XLM-R) checks against the
installed PEFT when it is there. The tensor and module names, and PEFT's rules for which modules
a config selects, are jax_lora/peft_names.py's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import safetensors.numpy
from flax import nnx

from jax_lora.adapter import adapter_filter
from jax_lora.checkpoint import flat_arrays, replace_arrays
from jax_lora.lora import LoraConfig
from jax_lora.peft_names import (HF_CLASSES, PEFT_FORMAT_VERSION, PEFT_LORA_DEFAULTS,
                                 POOLER_MODULE, SEQ_CLS_MODULES, HFClassifier, lora_from_peft)
from jax_lora.quant import base_dtype_of
from jax_lora.tuners import TUNERS, Tuner, Tuning
from jax_lora.weights import Pretrained, load_pretrained, read_hf, read_keras
from shared.runs.presets import preset_dir, resolve_alias

CONFIG_FILE, WEIGHTS_FILE, README_FILE = ("adapter_config.json", "adapter_model.safetensors",
                                          "README.md")
# Fields load_peft reads, and fields that cannot change what the adapter computes; any other
# field must hold its default (a variant or per-layer setting we do not reproduce).
READ_FIELDS = {"peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules",
               "exclude_modules", "use_rslora", "use_dora", "modules_to_save",
               "init_lora_weights", "base_model_name_or_path"}
INERT_FIELDS = {"inference_mode", "peft_version", "revision", "auto_mapping", "megatron_core",
                "qalora_group_size", "loftq_config", "eva_config", "corda_config",
                "lora_ga_config", "ensure_weight_tying"}
# These initialisations only draw A and B; pissa, olora, corda, loftq, lora_ga... also
# rewrite the base weights, which a folder of adapter tensors alone cannot reproduce.
PLAIN_INITS = (True, False, "gaussian", "orthogonal", "eva")


def _torch_layout(array, name: str = "") -> np.ndarray:
    """[in, out] <-> [out, in] for 2-D leaves (the transpose is its own inverse), float32; an
    embedding table (leaf `embedding`, [rows, H]) is laid out as torch's nn.Embedding."""
    array = np.asarray(array, np.float32)
    transpose = array.ndim == 2 and not name.endswith("embedding")
    return np.ascontiguousarray(array.T if transpose else array)


# ---------------------------------------------------------------- export

def peft_family(peft_type: str | None) -> Tuner | None:
    """The jax_lora/tuners family whose PEFT form has `peft_type` (None: none has)."""
    return next((tuner for tuner in TUNERS.values()
                 if tuner.peft is not None and tuner.peft.peft_type == peft_type), None)


def check_exportable(method: str, pooling: str, out_dir: Path,
                     architecture: str = "bert") -> None:
    """One-line ValueError when the adapter has no PEFT form (LoRA's, or its jax_lora/tuners
    family's) or `out_dir` has files."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(f"--out {out_dir}: folder is not empty; pass a new folder")
    if method in TUNERS and TUNERS[method].peft is None:
        raise ValueError(f"--method {method}: PEFT has no such adapter type; use `python -m "
                         f"jax_lora.export` for a keras-hub preset of the whole model instead")
    if method not in ("lora", "dora", *TUNERS):  # full, probe
        raise ValueError(f"--method {method}: the run trained no LoRA adapter, and PEFT's LORA "
                         f"type needs target modules; use `python -m jax_lora.export` for a "
                         f"keras-hub preset of the whole model instead")
    if pooling != "cls":
        class_name, _, head_reads, _ = HF_CLASSES[architecture]
        raise ValueError(f"--pooling {pooling}: the head reads the mean of the last layer, but "
                         f"{class_name} classifies from {head_reads} and would predict "
                         f"differently; no PEFT adapter is written (train with --pooling cls "
                         f"for one: on weights without a pooler, such as multilingual-e5, it "
                         f"trains a fresh pooler, as {class_name} does)")


def peft_config(lora: LoraConfig, hf: HFClassifier, base_model_name_or_path: str, *,
                pooler: bool) -> dict:
    """adapter_config.json as PEFT writes it for `lora` on the classifier `hf`, with BERT's
    pooler among the modules to save when `pooler`."""
    alpha = int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha  # PEFT: int field
    return {**PEFT_LORA_DEFAULTS, "task_type": "SEQ_CLS", "r": lora.rank, "lora_alpha": alpha,
            "lora_dropout": lora.dropout, "use_rslora": lora.rslora, "use_dora": lora.dora,
            "target_modules": hf.target_modules(lora.targets),
            "modules_to_save": [POOLER_MODULE] * pooler + SEQ_CLS_MODULES,
            "base_model_name_or_path": base_model_name_or_path}


def save_peft(model, out_dir: str | Path, *, base_model_name_or_path: str, method: str,
              pooler: bool = False) -> Path:
    """Write `model`'s adapter (a BertClassifier trained with --method lora or dora, or a
    jax_lora/tuners family with a PEFT form: ia3) as a PEFT adapter folder for
    BertForSequenceClassification (XLMRobertaForSequenceClassification for XLM-R); nothing is
    written when it is refused (check_exportable). BERT's pooler is saved when it trained or
    `pooler` says it is not the base's (adapter.json's "pooler": inherited from an
    --init-from parent)."""
    out_dir = Path(out_dir)
    # An alias (multilingual-e5-small) means nothing to transformers: name its folder.
    base_model_name_or_path = resolve_alias(base_model_name_or_path)
    hf = HFClassifier.of(model.config)
    check_exportable(method, model.pooling, out_dir, hf.architecture)
    tuning = getattr(model, "tuning", None)
    if tuning is not None and tuning.method != method:
        raise ValueError(f"--method {method}: the model was built for --method "
                         f"{tuning.method}; pass the method the run was trained with")
    if tuning is None and ((method == "dora") != model.lora.dora or not model.lora.targets):
        raise ValueError(f"--method {method}: the model's adapters (targets "
                         f"{','.join(model.lora.targets) or 'none'}, dora={model.lora.dora}) "
                         f"do not match it; pass the method the run was trained with")
    pooler = (pooler or model.lora.train_pooler) and hasattr(model, "pooler")  # XLM-R: none
    kept = adapter_filter(model.lora, tuning=tuning, pooling=model.pooling)
    if pooler:
        kept = nnx.Any(kept, nnx.All(nnx.Param, nnx.PathContains("pooler")))
    state = nnx.state(model, kept)
    peft = None if tuning is None else tuning.family.peft
    peft_key = hf.key if peft is None or peft.key is None else (
        lambda name: peft.key(hf, name))
    arrays = flat_arrays(state)
    if peft is not None and peft.arrays is not None:
        arrays = peft.arrays(model, arrays)
    tensors = {peft_key(name): _torch_layout(array, name) for name, array in arrays.items()}
    config = (peft_config(model.lora, hf, base_model_name_or_path, pooler=pooler)
              if peft is None else peft.config(model, hf, base_model_name_or_path, pooler))
    staging = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:  # a failed write leaves neither DIR nor DIR.partial
        # {"format": "pt"} is the metadata PEFT (safetensors.torch) writes.
        safetensors.numpy.save_file(tensors, str(staging / WEIGHTS_FILE),
                                    metadata={"format": "pt"})
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        (staging / README_FILE).write_text(_readme(base_model_name_or_path, model.num_classes,
                                                   out_dir.name, method, base_dtype_of(model),
                                                   hf.class_name))
        if out_dir.exists():
            out_dir.rmdir()
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# Per class: what from_pretrained needs for jax_lora's logits, and why.
_README_NOTES = {"BertForSequenceClassification": (', hidden_act="gelu_pytorch_tanh"', """\
`hidden_act="gelu_pytorch_tanh"` (or "gelu_new") matters: jax_lora's BERT, like keras-hub's, uses
tanh-approximate GELU, while Hugging Face BERT's default "gelu" is the exact erf form; without
it the logits differ slightly from jax_lora's, with it they agree to float rounding.
"""), "XLMRobertaForSequenceClassification": ("", """\
jax_lora's XLM-R, like keras-hub's, uses Hugging Face's exact (erf) GELU, and its position
table is Hugging Face's rows from padding_idx + 1 with the token-type row added, so the logits
should agree with jax_lora's to float rounding.
""")}


def _readme(base: str, num_classes: int, name: str, method: str, base_dtype: str,
            class_name: str) -> str:
    return f"""---
base_model: {base}
library_name: peft
---
# {name}: a {method.upper()} adapter for {class_name}

Written by `python -m jax_lora.peft_format` in PEFT {PEFT_FORMAT_VERSION}'s format. Load it with

    from peft import PeftModel
    from transformers import {class_name}
    base = {class_name}.from_pretrained(
        {base!r}, num_labels={num_classes}{_README_NOTES[class_name][0]})
    model = PeftModel.from_pretrained(base, "{name}").eval()

and tokenize with the base model's tokenizer, pairs as `tokenizer(premises, hypotheses,
truncation="longest_first", max_length=...)`. Pairs longer than the sequence length: jax_lora
cuts them with keras-hub's round-robin rule unless trained with `--truncate longest_first`
(Hugging Face's rule). The two differ only on an odd budget, where round-robin gives the spare
token to the premise and longest_first to the longer text, so on such rows a run trained with
round_robin predicts from one token more or less than the code above.

{_README_NOTES[class_name][1]}""" + (
        "" if base_dtype == "float32" else f"""
The adapter was trained on the base's kernels stored as {base_dtype} (jax_lora --base-dtype
{base_dtype}, QLoRA's idea). On the float32 base above its logits differ from jax_lora's by that
rounding. jax_lora's nf4 follows bitsandbytes' layout (blocks of 64 weights of torch's
[out, in] kernel, absmax scales, the same 16 NF4 levels, no double quantization), so a base
loaded with `BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")` is the closest
match; that was not compared here (no bitsandbytes on the machine that wrote this).
""")


# ---------------------------------------------------------------- import

def read_peft_config(directory: Path) -> dict:
    """adapter_config.json, refused (one line) unless it is a plain LoRA on SEQ_CLS, or the
    type of a jax_lora/tuners family (whose reader checks its fields)."""
    config_file = Path(directory) / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: no {CONFIG_FILE}; pass a PEFT adapter folder")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    types = ["LORA"] + [t.peft.peft_type for t in TUNERS.values() if t.peft is not None]
    family = peft_family(config.get("peft_type"))
    checks = [("peft_type", config.get("peft_type") in types,
               f"only {', '.join(types)} adapters are read"),
              ("task_type", config.get("task_type") == "SEQ_CLS",
               f"only SEQ_CLS ({' or '.join(c[0] for c in HF_CLASSES.values())}) adapters are "
               f"read"),
              ("init_lora_weights", config.get("init_lora_weights", True) in PLAIN_INITS,
               "this initialisation rewrites the base weights, which the folder does not hold")]
    for field, value in config.items() if family is None else ():
        default = PEFT_LORA_DEFAULTS.get(field)
        unset = value == default or value in (None, False, {}, [])
        if field not in READ_FIELDS | INERT_FIELDS and not unset:
            checks.append((field, False, f"jax_lora does not support it (only {default!r})"))
    for field, ok, problem in checks:
        if not ok:
            raise ValueError(f"{config_file}: {field}={config.get(field)!r}: {problem}")
    return config


def load_peft(directory: str | Path, preset: str | None = None) -> Pretrained:
    """The base BERT or XLM-R (`preset`, default: the config's base_model_name_or_path) with a
    PEFT adapter folder for its sequence classifier applied (LoRA/DoRA, or a jax_lora/tuners
    family's type: IA3): adapters, classifier head and BERT's pooler (if saved). Every tensor of the file must have a place in the model
    and every adapter leaf a tensor."""
    directory = Path(directory)
    config = read_peft_config(directory)
    weights_file = directory / WEIGHTS_FILE
    if not weights_file.is_file():
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE} (an adapter_model.bin is not "
                                f"read: only safetensors); re-save it with save_pretrained()")
    preset = preset or config.get("base_model_name_or_path")
    if not preset:
        raise ValueError(f"{directory / CONFIG_FILE}: no base_model_name_or_path; pass the preset")
    directory_of_base, kind = preset_dir(preset)
    base = (read_hf if kind == "hf" else read_keras)(directory_of_base)[0]  # tensors unread
    hf = HFClassifier.of(base)
    tensors = safetensors.numpy.load_file(str(weights_file))
    family = peft_family(config["peft_type"])
    peft = None if family is None else family.peft
    if peft is None:
        lora, tuning = lora_from_peft(config, hf, str(directory / CONFIG_FILE)), None
    else:
        lora, tuner = peft.read(config, hf, str(directory / CONFIG_FILE))
        tuning = Tuning(family.name, tuner)
    peft_key = hf.key if peft is None or peft.key is None else (
        lambda name: peft.key(hf, name))
    logits_key = peft_key(hf.logits_name)
    if logits_key not in tensors:
        raise ValueError(f"{weights_file}: no tensor {logits_key}; the classifier head of "
                         f"{hf.class_name} (the base {preset}'s) is needed")
    pretrained = load_pretrained(preset, lora, num_classes=tensors[logits_key].shape[0],
                                 pooling="cls", tuning=tuning)
    state = nnx.state(pretrained.model, adapter_filter(lora, tuning=tuning))
    shapes = {name: tuple(value.shape) for name, value in flat_arrays(state).items()}
    names = {peft_key(name): name for name in shapes}
    for key in sorted(set(names) ^ set(tensors)):
        problem = "has no place in the model" if key in tensors else "is missing"
        raise ValueError(f"{weights_file}: tensor {key} {problem} (adapter config: targets "
                         f"{','.join(lora.targets)}, pooler {lora.train_pooler}"
                         + ("" if tuning is None else f", {tuning.method} {tuning.config}")
                         + ")")
    for key, name in names.items():
        needed = _torch_layout(np.empty(shapes[name], np.float32), name).shape
        if tuple(tensors[key].shape) != needed:
            raise ValueError(f"{weights_file}: tensor {key} has shape "
                             f"{tuple(tensors[key].shape)}, the model needs {needed}")
    arrays = {name: _torch_layout(tensors[key], name) for key, name in names.items()}
    nnx.update(pretrained.model, replace_arrays(state, arrays, str(weights_file)))
    return pretrained


def main(argv=None) -> None:
    """python -m jax_lora.peft_format --run-dir RUN --out DIR: a run's adapter for PEFT."""
    from jax_lora.adapter import (ADAPTER, ADAPTER_META, export_parser, load_adapter,
                                  read_adapter_meta)
    from shared.cli import exit_on_bad_input
    from shared.runs.presets import preset_kind

    parser = export_parser(
        "python -m jax_lora.peft_format",
        "Write a jax_lora run's LoRA or DoRA adapter as a Hugging Face PEFT folder for "
        "BertForSequenceClassification, or XLMRobertaForSequenceClassification for an XLM-R "
        "run (PeftModel.from_pretrained).", "new folder for the adapter")
    parser.add_argument("--base-model", default=None,
                        help="base_model_name_or_path to write: the Hugging Face name or folder "
                             "of the base weights [default: the preset, which must then be a "
                             "Hugging Face BERT or XLM-R folder]")
    args = parser.parse_args(argv)
    with exit_on_bad_input():
        adapter_dir = args.run_dir / ADAPTER
        if not (adapter_dir / ADAPTER_META).is_file():
            raise FileNotFoundError(f"--run-dir {args.run_dir}: no {ADAPTER}/{ADAPTER_META}; "
                                    f"pass a finished jax_lora run")
        meta = read_adapter_meta(adapter_dir)
        check_exportable(meta["method"], meta["pooling"], args.out,
                         meta.get("bert_config", {}).get("architecture", "bert"))
        preset = args.preset or meta["base"]["preset"]
        if args.base_model is None and preset_kind(preset) != "hf":
            raise ValueError(f"--base-model: the base {preset} is a keras-hub preset, which "
                             f"transformers cannot load; pass the Hugging Face name or folder "
                             f"of the same weights")
        pretrained = load_adapter(adapter_dir, args.preset)
        save_peft(pretrained.model, args.out, method=meta["method"],
                  base_model_name_or_path=args.base_model or preset,
                  pooler=meta.get("pooler", False))
    print(f"PEFT adapter written to {args.out}; load it as {args.out / README_FILE} says")


if __name__ == "__main__":
    main()
