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
from shared.cli import add_config_flags, check_fields, config_from_flags, config_to_dict
from shared.data.spec import DataSpec
from shared.runs.presets import KAGGLE_PRESET
from shared.runs.tokenization import MIN_SEQUENCE_LENGTH

SCHEDULES = ("constant", "linear")
MAX_SEQUENCE_LENGTH = 512  # BERT's position table, and the baseline's maximum
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
    restart: bool = False  # discard what --run-dir holds (checkpoints, outputs) and train from scratch
    check: bool = False  # check flags, data, preset and --run-dir, print what a run would do, write nothing
    seed: int = 0  # seed of the head/adapter init, shuffling and dropout
    data: DataSpec = field(default_factory=DataSpec)  # the rows and split

    def __post_init__(self):
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch-per-device", self.batch_per_device >= 1, "must be >= 1"),
            ("lr", self.lr > 0, "must be > 0"),
            ("weight-decay", self.weight_decay >= 0, "must be >= 0"),
            ("schedule", self.schedule in SCHEDULES, f"choose one of {', '.join(SCHEDULES)}"),
            ("remat", self.remat in REMAT, f"choose one of {', '.join(REMAT)}"),
            ("warmup-steps", self.warmup_steps >= 0, "must be >= 0"),
            ("sequence-length", MIN_SEQUENCE_LENGTH <= self.sequence_length <= MAX_SEQUENCE_LENGTH,
             f"must lie in [{MIN_SEQUENCE_LENGTH}, {MAX_SEQUENCE_LENGTH}] ([CLS] premise [SEP] "
             f"hypothesis [SEP] with a token of each)"),
            ("checkpoint-every", self.checkpoint_every >= 0, "must be >= 0 (0 = epoch ends)"),
            ("keep-checkpoints", self.keep_checkpoints >= 1, "must be >= 1"),
        ]
        check_fields(self, checks)
        if not (self.lora.targets or self.lora.train_head or self.lora.train_pooler):
            raise ValueError("--targets is empty and --no-train-head: nothing would train; "
                             "give adapter targets or train the head")

    def to_dict(self) -> dict:
        """Every hyperparameter, JSON-ready (the manifest's `config`)."""
        return config_to_dict(self)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune BERT with LoRA adapters (JAX/Flax) on the Watson NLI data.")
    add_config_flags(parser, TrainConfig, title="training", rename=LORA_FLAG_NAMES)
    return parser


def parse_config(argv=None) -> TrainConfig:
    """TrainConfig from command-line flags; raises ValueError naming the flag on a bad value."""
    return config_from_flags(TrainConfig, vars(build_parser().parse_args(argv)),
                             rename=LORA_FLAG_NAMES)
