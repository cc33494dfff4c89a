"""TrainConfig: every value of the TF baseline run, and the command-line flags built from it.

The defaults are the Kaggle "KerasNLP starter notebook" (Contradictory, My Dear Watson):
bert_base_multi at its preset sequence length 512, Kaggle split (first 70 % / last 30 %),
batches of 16 x replicas, Adam(1e-5 x replicas) at a constant rate, 3 epochs. On a TPU v3-8
the notebook's saved runs reached validation accuracy 0.56–0.61 after each of the 3 epochs,
about 39 s per epoch (the notebook's published figures). --schedule and --warmup-steps give
jax_lora's warm-up and decay instead (tf_baseline/schedule.py).

    python tf_baseline/train.py                      # the notebook's recipe
    python tf_baseline/train.py --help

Each flag's help is the comment on its field below, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from shared.cli import add_config_flags, check_fields, config_from_flags, config_to_dict
from shared.data.spec import DataSpec
from shared.runs.presets import KAGGLE_PRESET, preset_architecture
from shared.runs.tokenization import MIN_SEQUENCE_LENGTH

SCHEDULES = ("constant", "linear")  # --schedule: tf_baseline.schedule, as jax_lora's


@dataclass(frozen=True)
class TrainConfig:
    preset: str = KAGGLE_PRESET  # keras-hub preset name, handle or folder (BERT, or XLM-R e.g. xlm_roberta_base_multi); or a Hugging Face BERT or XLM-R folder; or the offline models scripts/setup.sh installs, by name: all-minilm-l6-v2, multilingual-e5-small
    run_dir: Path = Path("runs/tf_baseline")  # outputs and backup; rerun the same command to resume
    epochs: int = 3  # passes over the training split (notebook: 3)
    batch_per_replica: int = 16  # rows per replica per step; global batch = this x replicas
    lr_per_replica: float = 1e-5  # Adam learning rate = this x replicas, constant (notebook); the peak with --warmup-steps or --schedule linear
    schedule: str = "constant"  # after warm-up: constant (notebook), or linear decay to 0 at the run's last step (jax_lora's --schedule)
    warmup_steps: int = 0  # optimizer steps of linear warm-up from 0 to the learning rate, at most the run's steps per epoch x epochs (jax_lora's --warmup-steps; notebook: 0)
    sequence_length: int | None = None  # tokens per pair after truncation [default: the preset's]
    lora_rank: int | None = None  # R: keras-hub backbone.enable_lora(R) [default: full fine-tuning]
    cpu_replicas: int | None = None  # mirror over N logical CPUs, no TPU probe (tests, CI)
    quiet: bool = False  # no Keras progress bar (CI logs)
    restart: bool = False  # discard what --run-dir holds (resume state, outputs) and train from scratch
    check: bool = False  # check flags, data, preset and --run-dir, print what a run would do, write nothing
    seed: int = 0  # seed of the head init and dropout
    data: DataSpec = field(default_factory=DataSpec)  # the rows and split (notebook: kaggle, 0.7)

    def __post_init__(self):
        checks = [
            ("epochs", self.epochs >= 1, "must be >= 1"),
            ("batch-per-replica", self.batch_per_replica >= 1, "must be >= 1"),
            ("lr-per-replica", self.lr_per_replica > 0, "must be > 0"),
            ("schedule", self.schedule in SCHEDULES, f"choose one of {', '.join(SCHEDULES)}"),
            ("warmup-steps", self.warmup_steps >= 0, "must be >= 0"),
            ("sequence-length", self.sequence_length is None
             or self.sequence_length >= MIN_SEQUENCE_LENGTH,
             f"must be >= {MIN_SEQUENCE_LENGTH} ([CLS] premise [SEP] hypothesis [SEP] with a "
             f"token of each)"),
            ("lora-rank", self.lora_rank is None or self.lora_rank >= 1, "must be >= 1"),
            ("cpu-replicas", self.cpu_replicas is None or self.cpu_replicas >= 1,
             "must be >= 1"),
        ]
        check_fields(self, checks)
        preset_architecture(self.preset)  # a missing or unusable folder fails here, before work

    def to_dict(self) -> dict:
        """Every value, JSON-ready (the manifest's `config`)."""
        return config_to_dict(self)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Fine-tune multilingual BERT with keras-hub on the Watson NLI data, "
                    "replicating the Kaggle KerasNLP starter notebook; rerun the same command "
                    "to resume an interrupted run.")
    add_config_flags(parser, TrainConfig, title="model and training")
    return parser


def parse_config(argv=None) -> TrainConfig:
    """TrainConfig from command-line flags; raises ValueError naming the flag on a bad value."""
    return config_from_flags(TrainConfig, vars(build_parser().parse_args(argv)))
