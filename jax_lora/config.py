"""TrainConfig: every knob of a jax_lora run, and the command-line flags generated from it.

The defaults are the recipe: `python jax_lora/train.py` fine-tunes the TF baseline's BERT
(bert_base_multi) on the Kaggle split with rank-16 LoRA adapters on query and value, 3 epochs
of 16 rows per device. `--method` picks what trains (METHODS); the learning rate and Adam's
epsilon default per method (METHOD_DEFAULTS). Each flag's help text is the comment on its
field below, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from jax_lora.distributed import ProcessConfig
from jax_lora.lora import COMPUTE_DTYPES, LoraConfig
from jax_lora.models import POOLING, REMAT
from jax_lora.quant import BASE_DTYPES
from jax_lora.tokenizer import TRUNCATIONS
from jax_lora.tuners import TUNERS, TunerConfig, Tuning, tuning_for
from shared.cli import add_config_flags, check_fields, config_from_flags, config_to_dict
from shared.data.spec import DataSpec
from shared.runs.encoder import encoder_numbers
from shared.runs.presets import KAGGLE_PRESET
from shared.runs.tokenization import MIN_SEQUENCE_LENGTH

SCHEDULES = ("constant", "linear")
MAX_SEQUENCE_LENGTH = 512  # BERT's position table, and the baseline's maximum
# Fields whose bare name would be ambiguous on the command line, by their path in TrainConfig.
LORA_FLAG_NAMES = {"lora.dropout": "lora-dropout"}
# What trains: lora = adapters A·B on --targets + head; dora = the same, weight-decomposed
# (plus a magnitude per output); full = every parameter (the JAX twin of tf_baseline);
# probe = the head alone on the frozen encoder (linear probe); and the families of
# jax_lora/tuners (TUNERS): bitfit, ia3, prompt, prefix, bottleneck, each with the head.
METHODS = ("lora", "dora", "full", "probe", *TUNERS)
ADAPTER_METHODS = ("lora", "dora")
# Per method: the learning rate, and Adam's epsilon. full keeps tf_baseline's recipe (the
# Kaggle starter's keras.optimizers.Adam(1e-5), whose epsilon is 1e-7); adapters take PEFT's
# usual 2e-4 with torch/optax AdamW's 1e-8; the probe's rate was chosen on the real Watson
# training part (README, "Choosing the probe's learning rate").
METHOD_DEFAULTS = {"lora": {"lr": 2e-4, "adam_epsilon": 1e-8, "keras_epsilon": False},
                   "dora": {"lr": 2e-4, "adam_epsilon": 1e-8, "keras_epsilon": False},
                   "full": {"lr": 1e-5, "adam_epsilon": 1e-7, "keras_epsilon": True},
                   "probe": {"lr": 1e-2, "adam_epsilon": 1e-8, "keras_epsilon": False},
                   **{name: tuner.defaults for name, tuner in TUNERS.items()}}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = KAGGLE_PRESET  # keras-hub preset name or folder, or Hugging Face BERT folder; or the offline models scripts/setup.sh installs, by name: all-minilm-l6-v2, multilingual-e5-small
    run_dir: Path = Path("runs/jax_lora")  # run directory; rerunning the same command resumes it
    epochs: int = 3  # passes over the training split (the baseline's 3)
    method: str = "lora"  # what trains: lora, dora (adapters + head), full (everything), probe (head alone); bitfit (biases), ia3 ((IA)³ vectors), prompt (virtual tokens), prefix (key/value prefixes), bottleneck (Houlsby/Pfeiffer adapters), each + head: jax_lora/tuners
    pooling: str | None = None  # what the head reads: cls (BERT's pooler, as keras-hub) or mean (mean of the last layer, as sentence-transformers) [default: cls, or mean for a model without a pooler such as multilingual-e5]
    dropout: float | None = None  # the encoder's dropout rate at every site (and the BERT head's) [default: the preset's: config.json's hidden_dropout_prob, keras-hub's 0.1]
    init_from: Path | None = None  # a finished jax_lora run whose head (and adapters, where both runs have them) this run starts from: linear probe first, then LoRA or full (LP->X) [default: none]
    batch_per_device: int = 16  # rows per device per step (per micro-batch with --accumulate); the global batch is this x devices
    accumulate: int = 1  # gradient accumulation: the optimizer steps every K micro-batches, on the gradient of their union (effective batch = K x global batch)
    base_dtype: str = "float32"  # how the frozen encoder and pooler kernels are stored: float32, bfloat16, int8 (per output channel) or nf4 (QLoRA's NormalFloat4, blocks of 64); dequantized inside each matmul
    compute_dtype: str = "float32"  # matmul operands: float32, or bfloat16 with float32 sums (parameters, softmax, LayerNorm and loss stay float32)
    lr: float | None = None  # AdamW peak learning rate [default: per method: lora and dora 2e-4, full 1e-5, probe 1e-2]
    adam_epsilon: float | None = None  # Adam's epsilon [default: per method: full 1e-7 (Keras Adam, as tf_baseline), else 1e-8]
    keras_epsilon: bool | None = None  # add epsilon as Keras Adam does, before the bias correction (= eps / sqrt(1 - 0.999^t) after it) [default: per method: on for full, as tf_baseline]
    lora_plus_ratio: float = 1.0  # LoRA+: lora_b and every 1-D trainable leaf learn at this x --lr, as PEFT's create_loraplus_optimizer (1 = plain LoRA; its paper suggests 16)
    weight_decay: float = 0.0  # decoupled AdamW weight decay on the trainable leaves
    schedule: str = "constant"  # after warm-up: constant, or linear decay to 0 at the last step
    warmup_steps: int = 0  # steps of linear warm-up from 0 to --lr
    sequence_length: int = MAX_SEQUENCE_LENGTH  # tokens per row after truncation (max 512)
    truncate: str = "round_robin"  # how a longer pair is cut: round_robin (keras-hub's, as tf_baseline; an odd budget's spare token to the premise) or longest_first (Hugging Face's: to the longer text), for PEFT users reproducing predictions on cut rows
    dynamic_padding: bool = True  # pad each batch to its longest row, rounded up to a bucket
    group_by_length: bool = True  # batch rows of similar length (less padding), in shuffled order
    remat: str = "dots"  # what each layer keeps for the backward pass: none, dots or layers (see README)
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapters and which head layers train
    tuner: TunerConfig = field(default_factory=TunerConfig)  # the settings of --method ia3, prompt, prefix and bottleneck (jax_lora/tuners)
    eval_every: int = 0  # evaluate the dev part (--dev-fraction) every N optimizer steps, besides each epoch end; 0 = epoch ends only
    patience: int = 0  # stop after this many dev evaluations without a better dev accuracy; 0 = never stop early
    max_steps: int = 0  # stop after this many optimizer steps (a fixed budget); 0 = run every epoch
    checkpoint_every: int = 200  # steps between checkpoints, besides each epoch end; 0 = epoch ends
    keep_checkpoints: int = 3  # newest checkpoints kept in run_dir/checkpoints
    predict_test: bool = True  # write submission.csv from test.csv when it exists (--no-predict-test: skip it, e.g. for learning-rate trials)
    quiet: bool = False  # no progress bar (CI logs)
    restart: bool = False  # discard what --run-dir holds (checkpoints, outputs) and train from scratch
    check: bool = False  # check flags, data, preset and --run-dir, print what a run would do, write nothing
    seed: int = 0  # seed of the head/adapter init, shuffling and dropout
    data: DataSpec = field(default_factory=DataSpec)  # the rows and split
    processes: ProcessConfig = field(default_factory=ProcessConfig)  # one process, or several joined by jax.distributed

    def __post_init__(self):
        check_fields(self, [("method", self.method in METHODS, f"choose one of {', '.join(METHODS)}")])
        self._resolve_method()
        checks = [
            ("pooling", self.pooling is None or self.pooling in POOLING,
             f"choose one of {', '.join(POOLING)}"),
            ("dropout", self.dropout is None or 0 <= self.dropout < 1, "must lie in [0, 1)"),
            ("lora-plus-ratio", self.lora_plus_ratio > 0, "must be > 0"),
            ("lora-plus-ratio", self.lora_plus_ratio == 1.0 or self.method in ADAPTER_METHODS,
             f"LoRA+ needs adapters; --method {self.method} has none"),
            ("adam-epsilon", self.adam_epsilon > 0, "must be > 0"),
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch-per-device", self.batch_per_device >= 1, "must be >= 1"),
            ("accumulate", self.accumulate >= 1, "must be >= 1"),
            ("base-dtype", self.base_dtype in BASE_DTYPES, f"choose one of {', '.join(BASE_DTYPES)}"),
            ("base-dtype", self.base_dtype == "float32" or self.method != "full",
             "--method full trains every kernel, so none is frozen to store in fewer bits; "
             "use --method lora, dora or probe, or --base-dtype float32"),
            ("compute-dtype", self.compute_dtype in COMPUTE_DTYPES,
             f"choose one of {', '.join(COMPUTE_DTYPES)}"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight-decay", self.weight_decay >= 0, "must be >= 0"),
            ("schedule", self.schedule in SCHEDULES, f"choose one of {', '.join(SCHEDULES)}"),
            ("remat", self.remat in REMAT, f"choose one of {', '.join(REMAT)}"),
            ("warmup-steps", self.warmup_steps >= 0, "must be >= 0"),
            ("truncate", self.truncate in TRUNCATIONS, f"choose one of {', '.join(TRUNCATIONS)}"),
            ("sequence-length", MIN_SEQUENCE_LENGTH <= self.sequence_length <= MAX_SEQUENCE_LENGTH,
             f"must lie in [{MIN_SEQUENCE_LENGTH}, {MAX_SEQUENCE_LENGTH}] ([CLS] premise [SEP] "
             f"hypothesis [SEP] with a token of each)"),
            ("eval-every", self.eval_every >= 0, "must be >= 0 (0 = epoch ends)"),
            ("eval-every", self.eval_every == 0 or self.data.dev_fraction > 0,
             "evaluates the dev part: set --dev-fraction (never the validation rows)"),
            ("patience", self.patience >= 0, "must be >= 0 (0 = never stop early)"),
            ("patience", self.patience == 0 or self.data.dev_fraction > 0,
             "counts dev evaluations: set --dev-fraction (never the validation rows)"),
            ("max-steps", self.max_steps >= 0, "must be >= 0 (0 = every epoch)"),
            ("checkpoint-every", self.checkpoint_every >= 0, "must be >= 0 (0 = epoch ends)"),
            ("keep-checkpoints", self.keep_checkpoints >= 1, "must be >= 1"),
        ]
        check_fields(self, checks)
        if not (self.lora.targets or self.lora.train_head or self.lora.train_pooler
                or self.method == "full"):
            raise ValueError("--method probe with --no-train-head and --no-train-pooler: "
                             "nothing would train; train the head")
        if self.init_from is not None:
            object.__setattr__(self, "init_from", Path(self.init_from))
        if self.tuner != TunerConfig() and self.tuning is None:
            raise ValueError(f"--method {self.method}: the tuner settings (--ia3-*, "
                             f"--virtual-tokens, --prompt-init, --prefix-*, --bottleneck-config, "
                             f"--reduction-factor) are for --method "
                             f"{', '.join(TUNERS)}; drop them")

    def _resolve_method(self) -> None:
        """Fill the per-method defaults and the adapter settings --method implies."""
        defaults = METHOD_DEFAULTS[self.method]
        for name in ("lr", "adam_epsilon", "keras_epsilon"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, defaults[name])
        lora = self.lora
        if self.method in ADAPTER_METHODS:
            if not lora.targets:
                raise ValueError(f"--targets is empty: --method {self.method} needs adapter "
                                 f"targets; for the head alone use --method probe")
        else:
            if lora.targets not in ((), LoraConfig().targets):
                raise ValueError(f"--targets {','.join(lora.targets)}: --method {self.method} "
                                 f"trains no adapters; drop --targets or use --method lora")
            if lora.rslora:
                raise ValueError(f"--rslora: --method {self.method} trains no adapters")
            if self.method == "full" and not (lora.train_head and not lora.train_pooler):
                raise ValueError("--method full trains every parameter: drop --no-train-head "
                                 "and --train-pooler")
            lora = dataclasses.replace(lora, targets=())
        object.__setattr__(self, "lora", dataclasses.replace(lora, dora=self.method == "dora"))

    def extends(self, recorded: dict) -> bool:
        """Whether this config continues the finished run that `recorded` (its manifest's
        config) describes: it asks only for more epochs or steps, at a learning rate that does
        not depend on the run's length (constant schedule), so training on is the same as
        having trained longer from the start."""
        if self.schedule != "constant":
            return False
        longer = self.epochs >= recorded.get("epochs", self.epochs + 1) and (
            self.max_steps == 0 or 0 < recorded.get("max_steps", -1) <= self.max_steps)
        return longer

    def with_preset_defaults(self) -> "TrainConfig":
        """The config with the defaults that depend on the preset filled in, as the manifest
        records them: the pooling (shared.runs.encoder's default_pooling); and cls pooling on
        weights without a pooler (e5) trains the fresh pooler it adds, with the head (as
        Hugging Face's BertForSequenceClassification, whose pooler starts random there)."""
        numbers = encoder_numbers(self.preset)
        config = self if self.pooling is not None else dataclasses.replace(
            self, pooling=numbers.default_pooling)
        if (config.pooling == "cls" and numbers.architecture == "bert" and not numbers.pooler
                and not config.full and not config.lora.train_pooler):
            config = dataclasses.replace(config, lora=dataclasses.replace(config.lora,
                                                                          train_pooler=True))
        return config

    @property
    def full(self) -> bool:
        """Every parameter trains (--method full)."""
        return self.method == "full"

    @property
    def tuning(self) -> Tuning | None:
        """The jax_lora/tuners family --method names, with its settings; None for LoRA, DoRA,
        full and probe."""
        return tuning_for(self.method, self.tuner)

    def to_dict(self) -> dict:
        """Every hyperparameter, JSON-ready (the manifest's `config`). Not `processes`: how
        the devices are spread over processes changes no result (the manifest's `devices`
        records it), so a run resumes under another layout, and the processes of one run,
        whose --process-id differs, ask for the same run."""
        config = config_to_dict(self)
        del config["processes"]
        if self.tuning is None:  # unused: the manifests of other methods stay as they were
            del config["tuner"]
        return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune BERT in JAX/Flax on the Watson NLI data: LoRA or DoRA adapters, full "
                    "fine-tuning or a linear probe (--method).")
    add_config_flags(parser, TrainConfig, title="training", rename=LORA_FLAG_NAMES)
    return parser


def parse_config(argv=None) -> TrainConfig:
    """TrainConfig from command-line flags; raises ValueError naming the flag on a bad value."""
    return config_from_flags(TrainConfig, vars(build_parser().parse_args(argv)),
                             rename=LORA_FLAG_NAMES)
