"""Configuration 5, the outside peer: PyTorch + transformers BertForSequenceClassification with
PEFT `LoraConfig(r=16, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")`,
the seed's own implementation. Needs benchmarks/requirements.txt (bash benchmarks/setup_peer.sh).

Weights load with from_pretrained from the job's Hugging Face folder (random or MiniLM).
Timed: zero_grad, forward with labels (cross-entropy), backward, AdamW step — the body of a plain
PyTorch loop (and of the Hugging Face Trainer's) on a fixed, already tokenized batch.
"""

from __future__ import annotations

import os

# Weights come from a local folder only; never try the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.spec import LORA_RANK, LORA_TARGETS, NUM_CLASSES, Config, Shape  # noqa: E402
from benchmarks.worker import Bench, Job, fake_batch, run_worker  # noqa: E402

LEARNING_RATE = 2e-4  # irrelevant to speed; a usual LoRA rate


def build(job: Job, config: Config, shape: Shape) -> Bench:
    if config.method != "lora_adapter":
        raise ValueError(f"{config.name}: the torch worker runs PEFT LoRA only")
    torch.manual_seed(job.seed)
    lora = peft.LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=list(LORA_TARGETS),
                           task_type="SEQ_CLS")
    model = peft.get_peft_model(transformers.BertForSequenceClassification.from_pretrained(
        job.preset, num_labels=NUM_CLASSES), lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=LEARNING_RATE)

    def make_step(seq_len: int):
        batch = {name: torch.from_numpy(value).long()
                 for name, value in fake_batch(shape, job.batch, seq_len, job.seed).items()}
        inputs = {"input_ids": batch["token_ids"], "token_type_ids": batch["segment_ids"],
                  "attention_mask": batch["padding_mask"], "labels": batch["labels"]}

        def step():
            optimizer.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()
            optimizer.step()
        return step

    return Bench(make_step, sum(p.numel() for p in trainable),
                 sum(p.numel() for p in model.parameters()),
                 {"framework": "torch", "torch": torch.__version__,
                  "transformers": transformers.__version__, "peft": peft.__version__,
                  "dtype": str(torch.get_default_dtype()).removeprefix("torch."),
                  "intra_op_threads": torch.get_num_threads(),
                  "attention": model.base_model.model.config._attn_implementation,
                  "step": "eager: zero_grad, forward+loss, backward, AdamW.step"})


if __name__ == "__main__":
    run_worker(build)
