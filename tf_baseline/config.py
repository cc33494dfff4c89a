"""TrainConfig: every value of the TF baseline run, and the command-line flags built from it.

The defaults are the Kaggle "KerasNLP starter notebook" (Contradictory, My Dear Watson):
bert_base_multi at its preset sequence length 512, Kaggle split (first 70 % / last 30 %),
batches of 16 x replicas, Adam(1e-5 x replicas), 3 epochs. On a TPU v3-8 the notebook's
saved runs reached validation accuracy 0.56-0.61 after 3 epochs, about 39 s per epoch.

    python tf_baseline/train.py                      # the notebook's recipe
    python tf_baseline/train.py --help

Each flag's help is the comment on its field below, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from shared.cli import (DATA_FIELDS, add_config_flags, add_data_args, check_fields,
                        data_namespace)
from shared.data import DEFAULT_MAX_TEXT_CHARS
from shared.presets import KAGGLE_PRESET, preset_kind

# Fields that change how a run is watched or where it lives, not what it computes: a run may
# be resumed with different values of these.
RESUME_NEUTRAL = ("run_dir", "quiet")
# [CLS] premise [SEP] hypothesis [SEP] needs five positions to hold one token of each text.
MIN_SEQUENCE_LENGTH = 5


@dataclass(frozen=True)
class TrainConfig:
    preset: str = KAGGLE_PRESET  # keras-hub preset name, handle or folder; or a HF BERT folder
    run_dir: Path = Path("runs/tf_baseline")  # outputs and backup; rerun the same command to resume
    epochs: int = 3  # passes over the training split (notebook: 3)
    batch_per_replica: int = 16  # rows per replica per step; global batch = this x replicas
    lr_per_replica: float = 1e-5  # Adam learning rate = this x replicas, constant (notebook)
    sequence_length: int | None = None  # tokens per pair after truncation [default: the preset's]
    lora_rank: int | None = None  # R: keras-hub backbone.enable_lora(R) [default: full fine-tuning]
    cpu_replicas: int | None = None  # mirror over N logical CPUs, no TPU probe (tests, CI)
    quiet: bool = False  # no Keras progress bar (CI logs)
    data_dir: Path | None = None  # Watson CSV folder; None = Kaggle input if attached, else sample
    split: str = "kaggle"  # train/validation rule of shared/split.py (notebook: kaggle)
    train_fraction: float = 0.7  # share of train.csv that trains (notebook: 0.7)
    seed: int = 0  # seed of the seeded split rules, head init and dropout
    limit: int | None = None  # use only the first N rows of train.csv and test.csv
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS  # reject texts longer than this

    def __post_init__(self):
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch-per-replica", self.batch_per_replica >= 1, "must be >= 1"),
            ("lr-per-replica", self.lr_per_replica > 0, "must be > 0"),
            ("sequence-length", self.sequence_length is None
             or self.sequence_length >= MIN_SEQUENCE_LENGTH,
             f"must be >= {MIN_SEQUENCE_LENGTH} ([CLS] premise [SEP] hypothesis [SEP])"),
            ("lora-rank", self.lora_rank is None or self.lora_rank >= 1, "must be >= 1"),
            ("cpu-replicas", self.cpu_replicas is None or self.cpu_replicas >= 1,
             "must be >= 1"),
        ]
        check_fields(self, checks)
        preset_kind(self.preset)  # a missing or unusable folder fails here, before any work

    @property
    def data_args(self) -> argparse.Namespace:
        """The data fields as shared.cli.load_data expects them."""
        return data_namespace(self)

    def to_dict(self) -> dict:
        """Every value, JSON-ready (the manifest's `config`)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))

    def resume_key(self) -> dict:
        """What an unfinished run must have been started with for this config to resume it."""
        return {k: v for k, v in self.to_dict().items() if k not in RESUME_NEUTRAL}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune multilingual BERT with keras-hub on the Watson NLI data, "
                    "replicating the Kaggle KerasNLP starter notebook; rerun the same command "
                    "to resume an interrupted run.")
    add_config_flags(parser.add_argument_group("model and training"), TrainConfig,
                     skip=DATA_FIELDS)
    add_data_args(parser)
    return parser


def parse_config(argv=None) -> TrainConfig:
    """TrainConfig from command-line flags; raises ValueError naming the flag on a bad value."""
    values = vars(build_parser().parse_args(argv))
    return TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)})
