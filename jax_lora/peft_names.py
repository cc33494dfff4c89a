"""PEFT's and transformers' names for jax_lora's classifier, and PEFT's rules for which
modules an adapter_config.json selects: what jax_lora/peft_format.py writes and reads for LoRA
and DoRA, and the tuner families' PEFT forms (jax_lora/tuners/ia3.py, prompt.py) for theirs.
It imports neither, so both import it and the arrows point one way (no import circle through
the tuners registry).

Tensors: base_model.model.<encoder>.encoder.layer.<i>.<module>.lora_A.weight [r, in] (our
lora_a.T), .lora_B.weight [out, r] (lora_b.T), .lora_magnitude_vector [out] (DoRA's m), with
<encoder> `bert` or `roberta` and <module> from weights.HF_NAMES; and the modules_to_save
copies under their plain names: BERT's head base_model.model.classifier.weight [classes, H]
(head.kernel.T) and .bias, base_model.model.bert.pooler.dense.* when the pooler trained;
XLM-R's head (RobertaClassificationHead, no pooler) base_model.model.classifier.dense.* and
base_model.model.classifier.out_proj.* (head.dense, head.out_proj).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from jax_lora.lora import LORA_TARGETS, LoraConfig
from jax_lora.models import BertConfig
from jax_lora.weights import HF_FORMATS, HF_NAMES, TOKEN_TYPES

PREFIX = "base_model.model."  # PeftModel > LoraModel > the ...ForSequenceClassification
# Every field PEFT 0.21.2's LoraConfig.to_dict writes, at its default (peft/tuners/lora/
# config.py; save_pretrained sets inference_mode true and fills peft_version).
PEFT_FORMAT_VERSION = "0.21.2"
PEFT_LORA_DEFAULTS = {
    "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None,
    "auto_mapping": None, "base_model_name_or_path": None, "bias": "none", "corda_config": None,
    "ensure_weight_tying": False, "eva_config": None, "exclude_modules": None,
    "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
    "kasa_config": None, "layer_replication": None, "layers_pattern": None,
    "layers_to_transform": None, "loftq_config": {}, "lora_alpha": 8, "lora_bias": False,
    "lora_dropout": 0.0, "lora_ga_config": None, "megatron_config": None,
    "megatron_core": "megatron.core", "modules_to_save": None, "monteclora_config": None,
    "peft_type": "LORA", "peft_version": PEFT_FORMAT_VERSION, "qalora_group_size": 16, "r": 8,
    "rank_pattern": {}, "revision": None, "target_modules": None, "target_parameters": None,
    "task_type": None, "trainable_token_indices": None, "use_bdlora": None, "use_dora": False,
    "use_qalora": False, "use_rslora": False, "velora_config": None}
# PeftModelForSequenceClassification appends these to modules_to_save (peft_model.py).
SEQ_CLS_MODULES = ["classifier", "score"]
POOLER_MODULE = "pooler"  # saves bert.pooler, i.e. bert.pooler.dense.{weight,bias}
PEFT_DEFAULT_TARGETS = ["query", "value"]  # peft/utils/constants.py (bert, xlm-roberta), for null
# Our LoraConfig target -> its module inside layers/<i> (models.TransformerLayer).
TARGET_PATHS = {"query": "attention/query", "key": "attention/key", "value": "attention/value",
                "attention_output": "attention/output", "ffn_in": "ffn_in", "ffn_out": "ffn_out"}
LAYER_MODULES = {ours: hf for hf, ours in HF_NAMES.layer_parts.items()}  # XLM-R's are BERT's
HF_TARGETS = {target: LAYER_MODULES[path] for target, path in TARGET_PATHS.items()}
# Our leaf -> torch's name for it; 2-D leaves are transposed ([in, out] vs torch's [out, in]).
LEAVES = {"kernel": "weight", "bias": "bias", "lora_a": "lora_A.weight",
          "lora_b": "lora_B.weight", "lora_magnitude": "lora_magnitude_vector",
          "ia3_l": "ia3_l"}  # jax_lora/tuners/ia3.py
# Per architecture: transformers' class, the model's name in messages, what its head reads,
# and our module that outputs the logits.
HF_CLASSES = {"bert": ("BertForSequenceClassification", "BERT", "BERT's pooler", "head"),
              "xlm_roberta": ("XLMRobertaForSequenceClassification", "XLM-R", "<s>",
                              "head/out_proj")}


@dataclass(frozen=True)
class HFClassifier:
    """How transformers names the modules of one architecture's sequence classifier with
    `num_layers` layers: what PEFT matches target_modules and modules_to_save against, and so
    the tensor names it saves."""
    architecture: str  # models.ARCHITECTURES
    num_layers: int

    @classmethod
    def of(cls, config: BertConfig) -> "HFClassifier":
        return cls(config.architecture, config.num_layers)

    @property
    def class_name(self) -> str:
        return HF_CLASSES[self.architecture][0]

    @property
    def encoder(self) -> str:
        """The classifier's encoder attribute with its dot: "bert." or "roberta."."""
        return HF_FORMATS[self.architecture][2]

    @property
    def top_modules(self) -> dict[str, str]:
        """Our module path outside the layers -> its module name (the head as a whole is
        `classifier`; XLM-R's head layers are classifier.dense and classifier.out_proj)."""
        names = HF_FORMATS[self.architecture][0]
        return {"head": "classifier",
                **{ours: hf if hf.startswith("classifier.") else self.encoder + hf
                   for hf, ours in names.top_parts.items()}}

    @property
    def trained_modules(self) -> set[str]:
        """The modules besides adapters that jax_lora trains (PEFT's modules_to_save)."""
        pooler = self.top_modules.get("pooler")
        return {"classifier", *([pooler, pooler.rpartition(".")[0]] if pooler else [])}

    def module_names(self) -> list[str]:
        """The classifier's module names (dropout and activation modules aside), parents
        included; XLM-R's token-type table, which our model folds away, among them."""
        names = {*self.top_modules.values()}
        if self.architecture == "xlm_roberta":
            names.add(self.encoder + TOKEN_TYPES.rpartition(".")[0])
        names |= {f"{self.encoder}encoder.layer.{i}.{part}" for i in range(self.num_layers)
                  for part in HF_NAMES.layer_parts}
        return sorted({".".join(name.split(".")[:end]) for name in names
                       for end in range(1, name.count(".") + 2)})

    def layer_modules(self, targets) -> set[str]:
        """The module names of `targets` (ours) in every layer."""
        return {f"{self.encoder}encoder.layer.{i}.{HF_TARGETS[t]}" for t in targets
                for i in range(self.num_layers)}

    def selected(self, config: dict) -> set[str]:
        """The modules PEFT puts adapters on for adapter_config `config`."""
        return {name for name in self.module_names() if peft_targets(config, name)}

    def target_modules(self, targets: tuple[str, ...]) -> list[str] | str:
        """PEFT's target_modules for our targets: each as the shortest name suffix that selects
        it alone ("query", "attention.output.dense", ...), or, when the list would select
        another module too ("output.dense" ends attention.output.dense as well), a regex PEFT
        full-matches."""
        entries = []
        for target in targets:
            part = HF_TARGETS[target].split(".")
            suffixes = [".".join(part[-n:]) for n in range(1, len(part) + 1)]
            entries.append(next((s for s in suffixes if self.selected(
                {"target_modules": [s]}) == self.layer_modules([target])), suffixes[-1]))
        if self.selected({"target_modules": entries}) == self.layer_modules(targets):
            return sorted(entries)
        parts = "|".join(re.escape(HF_TARGETS[t]) for t in targets)
        return rf"(.*\.)?encoder\.layer\.\d+\.({parts})"

    def key(self, name: str) -> str:
        """Our flat parameter name (checkpoint.flat_arrays) -> PEFT's tensor name."""
        *module, leaf = name.split(".")
        if module[0] == "layers":
            hf = f"{self.encoder}encoder.layer.{module[1]}.{LAYER_MODULES['/'.join(module[2:])]}"
        else:
            hf = self.top_modules["/".join(module)]
        return f"{PREFIX}{hf}.{LEAVES[leaf]}"

    @property
    def logits_name(self) -> str:
        """Our flat name of the kernel that outputs the logits [H, classes]."""
        return HF_CLASSES[self.architecture][3].replace("/", ".") + ".kernel"


def peft_targets(config: dict, key: str) -> bool:
    """Whether PEFT puts an adapter on module `key` (tuners_utils.check_target_module_exists,
    without layers_to_transform, which load_peft refuses)."""
    exclude = config.get("exclude_modules")
    if isinstance(exclude, str) and re.fullmatch(exclude, key):
        return False
    if isinstance(exclude, list) and (key in exclude or any(key.endswith(f".{e}")
                                                            for e in exclude)):
        return False
    # Modules to save and their children never get adapters.
    saved = [*(config.get("modules_to_save") or []), *SEQ_CLS_MODULES]
    if any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in saved):
        return False
    targets = config.get("target_modules")
    targets = PEFT_DEFAULT_TARGETS if targets is None else targets
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    return key in targets or any(key.endswith(f".{t}") for t in targets)


def lora_from_peft(config: dict, hf: HFClassifier, source: str) -> LoraConfig:
    """Our LoraConfig for a PEFT config on the classifier `hf`: the projections its
    target_modules select (by PEFT's own rule), which must be whole kinds of the encoder's
    six projections, in every layer."""
    chosen, model_name = hf.selected(config), HF_CLASSES[hf.architecture][1]
    field = f"{source}: target_modules={config.get('target_modules')!r}"
    outside = sorted(chosen - hf.layer_modules(LORA_TARGETS))
    if outside:
        raise ValueError(f"{field} selects {outside[0]}, not one of {model_name}'s "
                         f"projections ({', '.join(HF_TARGETS.values())}); jax_lora cannot "
                         f"adapt it")
    targets = tuple(t for t in LORA_TARGETS if chosen & hf.layer_modules([t]))
    for target in targets:
        own = hf.layer_modules([target])
        if not own <= chosen:
            layers = sorted(int(name.split(".")[3]) for name in own & chosen)
            raise ValueError(f"{field} adapts {HF_TARGETS[target]} in layers {layers} only; "
                             f"jax_lora adapts a projection in every layer")
    if not targets:
        raise ValueError(f"{field} selects none of {model_name}'s projections")
    # Missing r / lora_alpha take PEFT's defaults, as PEFT's own loader does.
    return LoraConfig(rank=config.get("r", PEFT_LORA_DEFAULTS["r"]),
                      alpha=float(config.get("lora_alpha", PEFT_LORA_DEFAULTS["lora_alpha"])),
                      dropout=float(config.get("lora_dropout", 0.0)), targets=targets,
                      rslora=bool(config.get("use_rslora")), dora=bool(config.get("use_dora")),
                      train_pooler=saves_pooler(config, hf, source))


def saves_pooler(config: dict, hf: HFClassifier, source: str) -> bool:
    """Whether modules_to_save saves BERT's pooler besides the classifier; a one-line
    ValueError when it saves any other module (which jax_lora does not train)."""
    saved = [*(config.get("modules_to_save") or []), *SEQ_CLS_MODULES]
    # PEFT wraps each module whose name ends with an entry (utils/other.py _set_trainable).
    wrapped = {n for n in hf.module_names() if any(n.endswith(m) for m in saved)}
    unsupported = sorted(wrapped - hf.trained_modules)
    if unsupported:
        raise ValueError(f"{source}: modules_to_save={config.get('modules_to_save')!r} saves "
                         f"{unsupported[0]}; besides adapters jax_lora trains only "
                         f"{', '.join(sorted(hf.trained_modules))}")
    return bool(wrapped & (hf.trained_modules - {"classifier"}))
