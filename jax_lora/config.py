"""TrainConfig: every knob of a LoRA run, and the command-line flags generated from it.

The defaults are the recipe: `python jax_lora/train.py` fine-tunes the TF baseline's BERT
(bert_base_multi) on the Kaggle split with rank-16 adapters on query and value, 3 epochs of
16 rows per device. Each flag's help text is the comment on its field below, so the two
cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from jax_lora.lora import LoraConfig
from jax_lora.models import REMAT
from shared.cli import (DATA_FIELDS, add_config_flags, add_data_args, check_fields,
                        data_namespace, flag_dest)
from shared.data import DEFAULT_MAX_TEXT_CHARS
from shared.presets import KAGGLE_PRESET

SCHEDULES = ("constant", "linear")
MAX_SEQUENCE_LENGTH = 512  # BERT's position table, and the baseline's maximum
# Fields that change how a run is watched or stored, not what it computes; a resumed run may
# differ from its checkpoints in these and nothing else.
RESUME_NEUTRAL = ("run_dir", "quiet", "checkpoint_every", "keep_checkpoints", "remat")
# LoraConfig fields whose bare name would be ambiguous on the command line.
LORA_FLAG_NAMES = {"dropout": "lora-dropout"}


@dataclass(frozen=True)
class TrainConfig:
    preset: str = KAGGLE_PRESET  # keras-hub preset name or folder, or Hugging Face BERT folder
    run_dir: Path = Path("runs/jax_lora")  # run directory; rerunning the same command resumes it
    epochs: int = 3  # passes over the training split (the baseline's 3)
    batch_per_device: int = 16  # rows per device per step; the global batch is this x devices
    lr: float = 2e-4  # AdamW peak learning rate (adapters want ~10x full fine-tuning's)
    weight_decay: float = 0.0  # decoupled AdamW weight decay on the trainable leaves
    schedule: str = "constant"  # after warm-up: constant, or linear decay to 0 at the last step
    warmup_steps: int = 0  # steps of linear warm-up from 0 to --lr
    sequence_length: int = MAX_SEQUENCE_LENGTH  # tokens per row after truncation (max 512)
    dynamic_padding: bool = True  # pad each batch to its longest row, rounded up to a bucket
    group_by_length: bool = True  # batch rows of similar length (less padding), in shuffled order
    remat: str = "dots"  # what each layer keeps for the backward pass: none, dots or layers (see README)
    lora: LoraConfig = field(default_factory=LoraConfig)  # adapters and which head layers train
    checkpoint_every: int = 200  # steps between checkpoints, besides each epoch end; 0 = epoch ends
    keep_checkpoints: int = 3  # newest checkpoints kept in run_dir/checkpoints
    quiet: bool = False  # no progress bar (CI logs)
    data_dir: Path | None = None  # Watson CSV folder; None = Kaggle input if attached, else sample
    split: str = "kaggle"  # train/validation rule of shared/split.py
    train_fraction: float = 0.7  # share of train.csv that trains
    seed: int = 0  # seed of the seeded split rules, head/adapter init, shuffling and dropout
    limit: int | None = None  # use only the first N rows of train.csv and test.csv
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # reject texts longer than this

    def __post_init__(self):
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch-per-device", self.batch_per_device >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight-decay", self.weight_decay >= 0, "must be >= 0"),
            ("schedule", self.schedule in SCHEDULES, f"choose one of {', '.join(SCHEDULES)}"),
            ("remat", self.remat in REMAT, f"choose one of {', '.join(REMAT)}"),
            ("warmup-steps", self.warmup_steps >= 0, "must be >= 0"),
            ("sequence-length", 3 <= self.sequence_length <= MAX_SEQUENCE_LENGTH,
             f"must lie in [3, {MAX_SEQUENCE_LENGTH}] ([CLS] premise [SEP] hypothesis [SEP])"),
            ("checkpoint-every", self.checkpoint_every >= 0, "must be >= 0 (0 = epoch ends)"),
            ("keep-checkpoints", self.keep_checkpoints >= 1, "must be >= 1"),
        ]
        check_fields(self, checks)
        if not (self.lora.targets or self.lora.train_head or self.lora.train_pooler):
            raise ValueError("--targets is empty and --no-train-head: nothing would train; "
                             "give adapter targets or train the head")

    @property
    def data_args(self) -> argparse.Namespace:
        """The data fields as shared.cli.load_data expects them."""
        return data_namespace(self)

    def to_dict(self) -> dict:
        """Every hyperparameter, JSON-ready (the manifest's `config`)."""
        return json_ready(dataclasses.asdict(self))

    def resume_key(self) -> dict:
        """What a checkpoint must have been trained with for this config to continue it."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_NEUTRAL}


def json_ready(value):
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [json_ready(item) for item in value]
    return str(value) if isinstance(value, Path) else value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune BERT with LoRA adapters (JAX/Flax) on the Watson NLI data.")
    add_config_flags(parser.add_argument_group("training"), TrainConfig,
                     skip=DATA_FIELDS + ("lora",))
    add_config_flags(parser.add_argument_group("LoRA"), LoraConfig, rename=LORA_FLAG_NAMES)
    add_data_args(parser)
    return parser


def from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed flags; raises ValueError naming the flag on a bad value."""
    values = vars(args)
    lora = LoraConfig(**{f.name: values[flag_dest(f.name, LORA_FLAG_NAMES)]
                         for f in dataclasses.fields(LoraConfig)})
    return TrainConfig(lora=lora, **{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)
                                     if f.name != "lora"})


def parse_config(argv=None) -> TrainConfig:
    return from_args(build_parser().parse_args(argv))
