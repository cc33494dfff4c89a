"""One real training epoch of the PyTorch peer, run the way its users run it: Hugging Face
`Trainer` + PEFT LoRA on all-MiniLM-L6-v2, on the real Watson training split.

The peer to jax_lora's own epoch: same split (shared.data), same recipe (jax_lora's defaults:
LoRA r=16, alpha=16 on query and value, the head trains; AdamW lr 2e-4, eps 1e-8, no weight
decay, constant schedule, no warm-up, no gradient clipping; 16 rows a step, the incomplete last
batch dropped; rows cut at 512 tokens; length-grouped batches padded to their longest row).
Unlike bench_torch.py (one fixed batch timed in a loop), everything a user waits for is in the
clock: the Trainer's sampler, DataCollatorWithPadding, forward, backward and optimizer.

    python -m benchmarks.torch_epoch --out benchmarks/results/torch_epoch.json

Writes one JSON result (--out, atomically) and prints a one-paragraph summary, then the JSON as
the last stdout line. Needs benchmarks/requirements.txt (bash benchmarks/setup_peer.sh).
Smoke run: add `--limit 256 --max-steps 3 --sequence-length 64`.

Batch order: the stock LengthGroupedSampler shuffles rows, sorts each megabatch of 50 batches
by length and then plays that megabatch's batches longest first, so every 50 steps the lengths
sweep from long to short. jax_lora sorts chunks of 50 batches the same way but then shuffles the
batches. `--batch-order shuffled` does that here (the same batches, in a seeded random order);
the default stays the stock Trainer's. The result records the loss of every step and the
validation predictions per class, so a run that ends predicting one class shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# Weights come from a local folder only; never try the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import accelerate  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.epoch import WATSON_DIR  # noqa: E402
from benchmarks.spec import LORA_RANK, LORA_TARGETS, NUM_CLASSES  # noqa: E402
from shared.data.spec import DataSpec, load  # noqa: E402
from shared.runs.run_dir import atomic_write_text  # noqa: E402
from shared.runs.tokenization import MIN_SEQUENCE_LENGTH  # noqa: E402

SCHEMA = "watson-torch-epoch/1"
# jax_lora's defaults (jax_lora.config.TrainConfig, METHOD_DEFAULTS["lora"]); restated because
# this peer runs without JAX. tests/benchmarks/test_torch_epoch.py checks they still agree.
LEARNING_RATE = 2e-4
ADAM_EPSILON = 1e-8
WEIGHT_DECAY = 0.0
BATCH = 16
SEQUENCE_LENGTH = 512
SEED = 0
LORA_DROPOUT = 0.0
# jax_lora clips nothing; the Trainer clips to 1.0 unless told otherwise (0 switches it off).
MAX_GRAD_NORM = 0.0
EVAL_BATCH = 64  # prediction only: no gradients, so a larger batch than training's
# trainer: the stock LengthGroupedSampler's order; shuffled: its batches in a seeded random
# order, as jax_lora.input_pipeline.epoch_batches plays its length-sorted batches.
BATCH_ORDERS = ("trainer", "shuffled")
SCHEDULES = ("constant", "linear")  # jax_lora's --schedule; the Trainer's names below
TRAINER_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=WATSON_DIR,
                        help=f"Watson CSV folder [default: {WATSON_DIR}]")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N rows of train.csv (smoke runs) [default: all]")
    parser.add_argument("--preset", type=Path, default=None,
                        help="Hugging Face BERT folder [default: the all-MiniLM-L6-v2 folder]")
    parser.add_argument("--sequence-length", type=int, default=SEQUENCE_LENGTH,
                        help=f"tokens per row after truncation [default: {SEQUENCE_LENGTH}]")
    parser.add_argument("--batch", type=int, default=BATCH,
                        help=f"training rows per step [default: {BATCH}]")
    parser.add_argument("--eval-batch", type=int, default=EVAL_BATCH,
                        help=f"rows per prediction batch [default: {EVAL_BATCH}]")
    parser.add_argument("--lr", type=float, default=LEARNING_RATE,
                        help=f"AdamW learning rate, constant [default: {LEARNING_RATE}]")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="after warm-up: constant, or linear decay to 0 at the last step, "
                             "as jax_lora's --schedule [default: constant]")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="steps of linear warm-up from 0 to --lr [default: 0]")
    parser.add_argument("--max-grad-norm", type=float, default=MAX_GRAD_NORM,
                        help="gradient clipping norm; 0 = none, as jax_lora [default: 0]")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the split [default: 1]")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after N steps (smoke runs) [default: the whole epoch(s)]")
    parser.add_argument("--seed", type=int, default=SEED, help=f"[default: {SEED}]")
    parser.add_argument("--batch-order", choices=BATCH_ORDERS, default="trainer",
                        help="trainer: the stock LengthGroupedSampler's (each megabatch of 50 "
                             "batches longest first); shuffled: the same batches in a seeded "
                             "random order, as jax_lora [default: trainer]")
    parser.add_argument("--progress", action="store_true", help="show the Trainer's progress bar")
    parser.add_argument("--out", type=Path, default=None, help="JSON result file [default: none]")
    args = parser.parse_args(argv)
    if not MIN_SEQUENCE_LENGTH <= args.sequence_length <= SEQUENCE_LENGTH:
        parser.error(f"--sequence-length {args.sequence_length}: must lie in "
                     f"[{MIN_SEQUENCE_LENGTH}, {SEQUENCE_LENGTH}]")
    for name in ("batch", "eval_batch", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    if args.warmup_steps < 0:
        parser.error("--warmup-steps must be >= 0")
    return args


def resolve_preset(preset: Path | None) -> Path:
    """The Hugging Face folder to load; exits with one line when it is missing."""
    if preset is None:
        from shared.runs.presets import PresetError, minilm_dir
        try:
            preset = minilm_dir()
        except PresetError as error:
            sys.exit(f"torch_epoch: {error}")
    if not (Path(preset) / "config.json").is_file():
        sys.exit(f"torch_epoch: --preset {preset}: no config.json there; pass a Hugging Face "
                 f"BERT folder")
    return Path(preset)


def encode(tokenizer, frame, max_length: int) -> list[dict]:
    """One unpadded example per row: the collator pads each batch to its own longest row."""
    encoded = tokenizer(frame["premise"].tolist(), frame["hypothesis"].tolist(),
                        truncation=True, max_length=max_length)
    labels = frame["label"].tolist()
    return [{**{name: values[i] for name, values in encoded.items()}, "labels": labels[i]}
            for i in range(len(frame))]


def build_model(preset: Path, seed: int):
    """PEFT LoRA on BertForSequenceClassification. The head trains (PEFT's modules_to_save for
    SEQ_CLS); so does the pooler when the folder has none (multilingual-e5-small): transformers
    draws it fresh, as jax_lora's `--pooling cls` does, and a fresh pooler left frozen would be a
    random projection in front of the head. Returns (model, the modules trained whole)."""
    # The head's initial weights come from the global RNG: seed it before they are drawn.
    transformers.set_seed(seed)
    base, loading = transformers.BertForSequenceClassification.from_pretrained(
        preset, num_labels=NUM_CLASSES, output_loading_info=True)
    whole = ["classifier"] + (["pooler"] if any(key.startswith("bert.pooler.")
                                                for key in loading["missing_keys"]) else [])
    lora = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=list(LORA_TARGETS),
                           lora_dropout=LORA_DROPOUT, task_type="SEQ_CLS",
                           modules_to_save=whole)
    return peft.get_peft_model(base, lora), whole


class ShuffledBatchSampler(torch.utils.data.Sampler):
    """Another sampler's indices cut into batches of `batch` rows, the full batches played in a
    random order (seeded by `seed` and the pass); an incomplete last batch stays last, so
    dataloader_drop_last still drops the same rows. Rows meet in the same batches as with the
    wrapped sampler, only the order of the steps changes."""

    def __init__(self, inner: torch.utils.data.Sampler, batch: int, seed: int):
        self.inner, self.batch, self.seed, self.passes = inner, batch, seed, 0

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        indices = list(iter(self.inner))
        full = len(indices) // self.batch * self.batch
        batches = [indices[i:i + self.batch] for i in range(0, full, self.batch)]
        order = np.random.default_rng([self.seed, self.passes]).permutation(len(batches))
        self.passes += 1
        return iter([i for b in order for i in batches[b]] + indices[full:])


class RecordingTrainer(transformers.Trainer):
    """The stock Trainer, noting each training batch's padded length and real row lengths.

    Recorded at the step, not in the collator: accelerate's dataloader collates one batch ahead,
    so a collator would also see a batch that never trains."""

    def __init__(self, *args, batch_order: str = "trainer", **kwargs):
        super().__init__(*args, **kwargs)
        self.batch_order = batch_order
        self.batch_shapes: list[tuple[int, list[int]]] = []  # (padded length, real lengths)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if self.batch_order == "trainer" or sampler is None:
            return sampler
        return ShuffledBatchSampler(sampler, self.args.train_batch_size, self.args.seed)

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.batch_shapes.append((int(inputs["input_ids"].shape[1]),
                                  inputs["attention_mask"].sum(dim=1).tolist()))
        return super().training_step(model, inputs, num_items_in_batch)


def training_arguments(args: argparse.Namespace, output_dir: str):
    return transformers.TrainingArguments(
        output_dir=output_dir,
        # transformers 5 replaced the `group_by_length=True` flag with this sampler choice.
        train_sampling_strategy="group_by_length",
        per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=args.eval_batch,
        num_train_epochs=args.epochs,
        max_steps=-1 if args.max_steps is None else args.max_steps,
        learning_rate=args.lr,
        lr_scheduler_type=TRAINER_SCHEDULES[args.schedule],
        warmup_steps=args.warmup_steps,
        weight_decay=WEIGHT_DECAY,
        adam_epsilon=ADAM_EPSILON,
        max_grad_norm=args.max_grad_norm,
        dataloader_drop_last=True,  # jax_lora drops the incomplete last batch too
        seed=args.seed,
        use_cpu=True,
        eval_strategy="no",
        logging_strategy="steps",  # every step's loss, into trainer.state.log_history
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=not args.progress,
    )


def padding_summary(batch_shapes: list[tuple[int, list[int]]]) -> dict:
    """Per batch: padded length, longest and shortest real row; in total: padding waste."""
    padded = [length for length, _ in batch_shapes]
    padded_tokens = sum(length * len(rows) for length, rows in batch_shapes)
    real_tokens = sum(sum(rows) for _, rows in batch_shapes)
    return {"padded_lengths": padded,
            "longest_rows": [max(rows) for _, rows in batch_shapes],
            "shortest_rows": [min(rows) for _, rows in batch_shapes],
            "mean_padded_length": float(np.mean(padded)) if padded else 0.0,
            "padded_tokens": padded_tokens, "real_tokens": real_tokens,
            "padding_fraction": 1.0 - real_tokens / padded_tokens if padded_tokens else 0.0}


def length_stats(examples: list[dict]) -> dict:
    lengths = np.array([len(example["input_ids"]) for example in examples])
    return {"mean": float(lengths.mean()), "median": float(np.median(lengths)),
            "p95": float(np.percentile(lengths, 95)), "max": int(lengths.max())}


def run(args: argparse.Namespace) -> dict:
    # ---- data ------------------------------------------------------------------------------
    if not (Path(args.data_dir) / "train.csv").is_file():
        sys.exit(f"torch_epoch: --data-dir {args.data_dir}: no train.csv there; point it at the "
                 f"Watson CSV folder")
    preset = resolve_preset(args.preset)
    data = load(DataSpec(data_dir=Path(args.data_dir), limit=args.limit))
    tokenizer = transformers.AutoTokenizer.from_pretrained(preset)
    train = encode(tokenizer, data.train, args.sequence_length)
    val = encode(tokenizer, data.val, args.sequence_length)

    # ---- model -----------------------------------------------------------------------------
    model, whole = build_model(preset, args.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory(prefix="torch_epoch_") as output_dir:
        trainer = RecordingTrainer(
            model=model, args=training_arguments(args, output_dir), train_dataset=train,
            data_collator=transformers.DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer, batch_order=args.batch_order)
        if not args.progress:  # stdout holds the summary and the JSON, not the Trainer's logs
            trainer.remove_callback(transformers.PrinterCallback)

        # ---- train -------------------------------------------------------------------------
        start = time.perf_counter()
        train_output = trainer.train()
        train_s = time.perf_counter() - start

        # ---- predict the validation rows ---------------------------------------------------
        # The Trainer applies dataloader_drop_last to prediction too: it would skip the last
        # rows. Its eval sampler is length-grouped as well (shuffled), so accuracy is read
        # against the label_ids it returns, which come in the same order.
        trainer.args.dataloader_drop_last = False
        start = time.perf_counter()
        prediction = trainer.predict(val)
        val_s = time.perf_counter() - start

    steps = trainer.state.global_step
    examples = steps * args.batch
    optimizer = getattr(trainer.args.optim, "value", str(trainer.args.optim))  # an enum
    split = data.split.describe()
    predicted = prediction.predictions.argmax(axis=-1)
    step_losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    labels = np.asarray(prediction.label_ids)
    return {
        "schema": SCHEMA, "status": "ok",
        "recipe": {"preset": str(preset), "method": "peft LoRA (SEQ_CLS), trained whole: " + ", ".join(whole),
                   "pooling": "cls (BertPooler" + (", fresh and trained)" if "pooler" in whole
                                                   else ", pretrained, frozen)"),
                   "lora_rank": LORA_RANK, "lora_alpha": LORA_RANK,
                   "lora_targets": list(LORA_TARGETS), "lora_dropout": LORA_DROPOUT,
                   "optimizer": optimizer, "lr": args.lr,
                   "adam_epsilon": ADAM_EPSILON, "weight_decay": WEIGHT_DECAY,
                   "schedule": args.schedule, "warmup_steps": args.warmup_steps,
                   "max_grad_norm": args.max_grad_norm,
                   "batch": args.batch, "eval_batch": args.eval_batch,
                   "sequence_length": args.sequence_length, "epochs": args.epochs,
                   "max_steps": args.max_steps, "seed": args.seed, "drop_last": True,
                   "sampler": "group_by_length (LengthGroupedSampler)",
                   "batch_order": args.batch_order,
                   "padding": "DataCollatorWithPadding: each batch to its longest row"},
        "data": {"data_dir": str(data.data_dir), "limit": args.limit,
                 "train_rows": len(train), "val_rows": len(val),
                 "split": split, "split_fingerprint": split["fingerprint"]},
        "token_lengths": length_stats(train),
        "params": {"trainable": trainable, "total": total},
        "train": {"seconds": train_s, "steps": steps, "examples": examples,
                  "steps_per_epoch": len(train) // args.batch,
                  "examples_per_s": examples / train_s, "steps_per_s": steps / train_s,
                  "train_loss": train_output.metrics.get("train_loss"),
                  "step_losses": step_losses,
                  "last_50_steps_loss": float(np.mean(step_losses[-50:])) if step_losses else None,
                  "trainer_metrics": train_output.metrics},
        "padding": padding_summary(trainer.batch_shapes),
        "validation": {"rows": len(predicted), "seconds": val_s,
                       "accuracy": float((predicted == labels).mean()),
                       "majority_baseline": float(np.bincount(labels, minlength=NUM_CLASSES).max()
                                                  / len(labels)),
                       "predicted_per_class": np.bincount(predicted,
                                                          minlength=NUM_CLASSES).tolist(),
                       "labels_per_class": np.bincount(labels, minlength=NUM_CLASSES).tolist(),
                       # in the Trainer's prediction order (pairs with each other, not with rows)
                       "labels": labels.tolist(), "predicted": predicted.tolist(),
                       "loss": prediction.metrics.get("test_loss")},
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "intra_op_threads": torch.get_num_threads(),
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__,
                     "accelerate": accelerate.__version__},
    }


def summary(result: dict) -> str:
    train, padding, val = result["train"], result["padding"], result["validation"]
    return (f"PyTorch peer epoch (transformers {result['versions']['transformers']} Trainer + "
            f"PEFT LoRA r={result['recipe']['lora_rank']}, {result['intra_op_threads']} threads): "
            f"{train['steps']} steps of {result['recipe']['batch']} rows "
            f"({result['data']['train_rows']} training rows, split "
            f"{result['data']['split_fingerprint'][:12]}) in {train['seconds']:.1f} s, "
            f"{train['examples_per_s']:.2f} examples/s, final train loss "
            f"{train['train_loss']:.4f}. Length-grouped batches padded to "
            f"{padding['mean_padded_length']:.1f} tokens on average "
            f"({100 * padding['padding_fraction']:.1f} % of {padding['padded_tokens']} padded "
            f"tokens are padding). Validation: {val['rows']} rows in {val['seconds']:.1f} s, "
            f"accuracy {val['accuracy']:.4f} (majority class {val['majority_baseline']:.4f}; "
            f"predicted per class {val['predicted_per_class']}). "
            f"Peak RSS {result['peak_rss_mb']:.0f} MB; "
            f"{result['params']['trainable']} of {result['params']['total']} parameters train.")


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
