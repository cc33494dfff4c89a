"""End-to-end epoch estimate of each trainer's default recipe on the real Watson train split.

Both recipes fine-tune bert_base_multi (mBERT-base shape) on the `kaggle` split:
- tf_baseline (the exact notebook replica): every batch padded to the preset's 512 tokens,
  `len(train) // global_batch` steps;
- jax_lora: the recipe's epoch-0 batches (length-grouped by default), each cut at its longest
  row rounded up to a bucket (jax_lora.input_pipeline).
Epoch time = sum over the recipe's batches of the step time measured at that batch's length
(one worker per trainer times every length it needs). Batch sizes, seeds and buckets are read
from the trainers' own configs and input pipeline, not restated here.

The lengths come from jax_lora's tokenizer (identical to keras-hub's) with the all-MiniLM-L6-v2
vocabulary: the mBERT vocabulary is not on this machine, so its length distribution is a
stated proxy (an English uncased WordPiece vocabulary splits non-Latin scripts differently).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.spec import CONFIG_BY_NAME, Config, get_shape, step_flops
from benchmarks.worker import Job

WATSON_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "watson"
SHAPE = "mbert"  # both recipes' preset is bert_base_multi
TF_SEQ_LEN = 512  # tf_baseline's sequence_length=None: bert_base_multi's preprocessor default


def train_lengths(data_dir: Path) -> tuple[np.ndarray, dict]:
    """Real tokens per row of the recipe's training split, and how they were counted."""
    from jax_lora.config import TrainConfig
    from jax_lora.input_pipeline import encode
    from jax_lora.tokenizer import Tokenizer
    from shared.data.spec import DataSpec, load
    from shared.runs.presets import minilm_dir

    recipe = TrainConfig(data=DataSpec(data_dir=data_dir))
    data = load(recipe.data)
    tokenizer = Tokenizer.from_preset_dir(minilm_dir(), "hf")
    lengths = encode(tokenizer, data.train, recipe.sequence_length).lengths
    return lengths, {"rows": len(lengths), "split": data.split.describe(),
                     "tokenizer": "jax_lora.tokenizer with the all-MiniLM-L6-v2 vocabulary "
                                  "(proxy for mBERT's)"}


def jax_recipe(lengths: np.ndarray) -> tuple[int, list[int]]:
    """jax_lora's global batch on one device, and the padded length of each batch of epoch 0."""
    from jax_lora.config import TrainConfig
    from jax_lora.input_pipeline import bucket_length, epoch_batches

    recipe = TrainConfig()
    batch = recipe.batch_per_device
    batches = epoch_batches(lengths, batch, seed=recipe.seed, epoch=0,
                            group_by_length=recipe.group_by_length)
    return batch, [bucket_length(int(lengths[rows].max()), recipe.sequence_length)
                   for rows in batches]


def tf_recipe_batch() -> int:
    """tf_baseline's global batch on this machine: one replica (MirroredStrategy on a CPU)."""
    from tf_baseline.config import TrainConfig

    return TrainConfig().batch_per_replica


def estimate(data_dir: Path, preset: str, warmup: int, steps: int,
             run_config: Callable[[Config, Job], dict]) -> dict:
    if not (Path(data_dir) / "train.csv").is_file():
        return {"status": "skipped", "reason": f"real Watson data not found at {data_dir}"}
    lengths, source = train_lengths(Path(data_dir))
    tf_batch, (jax_batch, jax_lengths) = tf_recipe_batch(), jax_recipe(lengths)
    plans = {  # trainer -> (configuration, batch, padded length of each step)
        "tf_baseline": ("tf_full", tf_batch, [TF_SEQ_LEN] * (len(lengths) // tf_batch)),
        "jax_lora": ("jax_lora", jax_batch, jax_lengths),
    }
    trainers = []
    for trainer, (config_name, batch, step_lengths) in plans.items():
        needed = sorted(set(step_lengths))
        config = CONFIG_BY_NAME[config_name]
        # A worker killed for lack of memory is timed again on micro-batches of half the
        # rows: the recipe's step then costs `micro_batches` of them (as with accumulation).
        for micro_batches in (1, 2, 4):
            job = Job(config_name, SHAPE, batch // micro_batches, needed[0], steps, warmup,
                      preset, extra_seq_lens=tuple(needed[1:]))
            result = run_config(config, job)
            if result.get("returncode") != -9 or batch // micro_batches < 2:
                break
        if result["status"] != "ok":
            return {"status": result["status"],
                    "reason": f"{config_name}: {result.get('reason') or result.get('error')}"}
        per_length = {needed[0]: result["median_step_s"] * micro_batches,
                      **{int(k): v["median_step_s"] * micro_batches
                         for k, v in result["extra_seq_lens"].items()}}
        counts = Counter(step_lengths)
        trainers.append({
            "trainer": trainer, "config": config_name, "label": config.label,
            "batch": batch, "steps": len(step_lengths), "micro_batches": micro_batches,
            "steps_per_length": {str(k): counts[k] for k in needed},
            "median_step_s_per_length": {str(k): per_length[k] for k in needed},
            "lengths_summary": ", ".join(f"{k}×{counts[k]}" for k in needed),
            "epoch_s": sum(per_length[k] * n for k, n in counts.items()),
            # Machine-independent cross-check: the matmul work of the same batches.
            "epoch_flops": sum(step_flops(get_shape(SHAPE), batch, k, config.method,
                                          config.cls_only) * n for k, n in counts.items()),
        })
    return {"status": "ok", "shape": SHAPE, "source": source, "warmup": warmup,
            "timed_steps_per_length": steps,
            "token_lengths": {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
                              "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())},
            "trainers": trainers, "speedup": trainers[0]["epoch_s"] / trainers[1]["epoch_s"],
            "flops_ratio": trainers[0]["epoch_flops"] / trainers[1]["epoch_flops"],
            "note": (f"mBERT-base shape, {source['rows']} training rows ({source['tokenizer']}); "
                     f"token lengths mean {lengths.mean():.0f}, p95 "
                     f"{np.percentile(lengths, 95):.0f}, max {lengths.max()}. Median of "
                     f"{steps} timed steps per length after {warmup} warm-up step(s).")}

