"""Fine-tune BERT in JAX/Flax (LoRA, DoRA, full or a linear probe) and write the run directory.

    python jax_lora/train.py                     # the recipe: bert_base_multi, Kaggle split,
                                                 # 3 epochs, 16 rows x devices, r=16 on Q/V
    MINILM=$(python -c 'import shared.runs.presets as p; print(p.minilm_dir())')
    python jax_lora/train.py --preset $MINILM --epochs 1 --run-dir /tmp/jaxcheck --quiet
                                                 # offline smoke run on the embedded sample
    python jax_lora/train.py --method probe --run-dir runs/probe && \
    python jax_lora/train.py --method lora --init-from runs/probe --run-dir runs/lp_lora
                                                 # LP→LoRA: a probe, then LoRA from its head

--method says what trains (config.METHODS; tuners.trainable_filter is the rule): adapters and
the new head, or every parameter, or the head alone, or a jax_lora/tuners family (BitFit,
(IA)³, prompt tuning) with the head. Data parallel over every device of the host, or of
every host (--num-processes, jax_lora/distributed.py): the batch is split along a
1-D `data` mesh, parameters are replicated, so the same code runs on CPU, GPUs and TPU.
The jitted steps and the device mesh are jax_lora/steps.py, what the loop keeps between steps
(training clock, dev evaluations, checkpoints) jax_lora/loop.py; this file loads, checks,
loops and writes. Rerunning the same command after a crash resumes from run_dir/checkpoints;
batch order and dropout keys are functions of the step number, so the resumed run ends with
the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # `python jax_lora/train.py`: import the repo, not this folder
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import functools
import itertools
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import pandas as pd
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from jax_lora import compile_cache, distributed
from jax_lora.adapter import ADAPTER, init_from_parent, read_parent, save_adapter
from jax_lora.checkpoint import Checkpoints
from jax_lora.config import TrainConfig, parse_config
from jax_lora.dev_eval import BestCheckpoint, DevTracker
from jax_lora.input_pipeline import encode, micro_batches_per_epoch, train_batches
from jax_lora.loop import Clock, EvalAndSave, Progress, Schedule, Window, zero_sums
from jax_lora.models import set_compute_dtype
from jax_lora.optim import make_optimizer, param_counts, split_trainable, trainable_mask
from jax_lora.quant import stored_bytes
from jax_lora.steps import (DROPOUT_STREAM, METRICS, TrainState, compile_clock,
                            compiler_options, device_info, evaluate, make_accumulated_step,
                            make_eval_step, make_mesh, make_train_step, peak_accelerator_mb,
                            replicate, shard_batch, val_metrics)
from jax_lora.tuners import trainable_filter
from jax_lora.weights import Pretrained, load_pretrained
from shared.cli import exit_on_bad_input, trainer_main
from shared.data.spec import Data
from shared.runs.lock import lock_run_dir, unlock_run_dir
from shared.runs.reuse import NEW, clear_run_dir, code_version, plan_run
from shared.runs.run_dir import (HISTORY_COLUMNS, RunWriter, library_versions, predictions_frame,
                                 softmax, submission_frame)

TRAINER = "jax_lora"


@dataclass(frozen=True)
class Setup:
    """Everything that is checked before the run directory is touched."""
    config: TrainConfig
    data: Data
    state: str  # shared.runs.reuse: NEW or RESUME
    pretrained: Pretrained
    encoded: dict  # split name -> Encoded: "train", "val" and, when test.csv exists, "test"
    mesh: Mesh
    micro_batches: int  # batches of global_batch rows per epoch
    parent: dict | None  # adapter.read_parent of --init-from

    @property
    def global_batch(self) -> int:
        """Rows of one (micro-)batch over all devices."""
        return self.config.batch_per_device * self.mesh.size

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch: one per --accumulate micro-batches (a whole number:
        input_pipeline.micro_batches_per_epoch)."""
        return self.micro_batches // self.config.accumulate

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run: every epoch, or --max-steps if fewer."""
        steps = self.steps_per_epoch * self.config.epochs
        return min(steps, self.config.max_steps) if self.config.max_steps else steps

    def examples_at(self, step: int) -> int:
        """Training rows seen after `step` optimizer steps."""
        return step * self.config.accumulate * self.global_batch


# ---------------------------------------------------------------- the epoch loop

def micro_batches_of(setup: Setup, *, epoch: int, start: int) -> list[int]:
    """How many micro-batches each optimizer step from `start` of `epoch` takes."""
    return [setup.config.accumulate] * (setup.steps_per_epoch - start)


def train_epoch(setup: Setup, train_step, state: TrainState, *, epoch: int, start: int,
                totals: dict, after_step):
    """Steps `start`.. of `epoch`, continuing the epoch's running sums `totals`; after each
    step `after_step(state, totals, metrics, step, epoch_end)` may save, evaluate, and stop
    the epoch early by returning True. Returns (state, totals, wall seconds of the steps
    including compiling and after_step, seconds compiling, stopped early)."""
    config = setup.config
    totals = {k: jnp.float32(v) for k, v in totals.items()}
    bar = tqdm(total=setup.steps_per_epoch, initial=start, unit="step", leave=False,
               desc=f"epoch {epoch + 1}/{config.epochs}", disable=config.quiet)
    with compile_clock() as compiled:
        began = time.perf_counter()
        batches = train_batches(setup.encoded["train"], setup.global_batch, seed=config.seed,
                                epoch=epoch, dynamic=config.dynamic_padding,
                                group_by_length=config.group_by_length,
                                start=start * config.accumulate, accumulate=config.accumulate)
        rows, stopped = 0, False
        for index, size in enumerate(micro_batches_of(setup, epoch=epoch, start=start),
                                     start=start + 1):
            group = [shard_batch(batch, setup.mesh) for batch in itertools.islice(batches, size)]
            state, metrics = train_step(state, group)
            totals = {k: totals[k] + metrics[k] for k in METRICS}
            rows += size * setup.global_batch
            bar.update()
            if index % 10 == 0 and not config.quiet:  # reading the loss waits for the device
                rate = rows / (time.perf_counter() - began - compiled["seconds"])
                bar.set_postfix(loss=f"{float(totals['loss_sum'] / totals['count']):.4f}",
                                examples_per_s=f"{rate:.1f}")
            step = epoch * setup.steps_per_epoch + index
            if after_step(state, totals, metrics, step, index == setup.steps_per_epoch):
                stopped = True
                break
        jax.block_until_ready(state)
        seconds = time.perf_counter() - began
    bar.close()
    return state, totals, seconds, compiled["seconds"], stopped


# ---------------------------------------------------------------- setup (validation) and run

def prepare(config: TrainConfig) -> Setup | None:
    """Load and check everything; raises ValueError/DataError/FileNotFoundError on bad input.
    None when nothing is left to do: a --check, or this very run found finished in the run
    directory (shared/runs/reuse.py)."""
    distributed.initialize(config.processes, config.to_dict())
    config = config.with_preset_defaults()
    plan = plan_run(TRAINER, config)
    # Every process has read the run directory before process 0 changes it (run).
    distributed.sync("run directory read")
    if plan is None:
        return None
    data, weights, state = plan
    mesh = make_mesh()
    global_batch = config.batch_per_device * mesh.size
    micro_batches = micro_batches_per_epoch(len(data.train), global_batch, config.accumulate)
    if micro_batches == 0:
        raise ValueError(f"--batch-per-device {config.batch_per_device}: global batch "
                         f"{global_batch} x --accumulate {config.accumulate} "
                         f"({mesh.size} device(s)) exceeds the {len(data.train)} training "
                         f"rows; lower them or use more rows")
    steps = micro_batches // config.accumulate * config.epochs
    steps = min(steps, config.max_steps) if config.max_steps else steps
    if config.warmup_steps > steps:
        raise ValueError(f"--warmup-steps {config.warmup_steps}: longer than the whole run "
                         f"({steps} optimizer steps)")
    parent = (None if config.init_from is None else
              read_parent(config.init_from, split=data.split.describe(), weights=weights,
                          pooling=config.pooling))
    # The pooler stays float32 when it is not the base's: it trains, or comes from the parent.
    own_pooler = config.lora.train_pooler or (parent is not None and parent["pooler"])
    pretrained = load_pretrained(config.preset, config.lora, seed=config.seed,
                                 pooling=config.pooling, source=weights, dropout=config.dropout,
                                 base_dtype=config.base_dtype, quantize_pooler=not own_pooler,
                                 tuning=config.tuning)
    pretrained.tokenizer.truncate = config.truncate
    if config.sequence_length > pretrained.config.max_sequence_length:
        raise ValueError(f"--sequence-length {config.sequence_length}: {config.preset} has "
                         f"{pretrained.config.max_sequence_length} positions")
    if config.tuning is not None and config.tuning.family.check is not None:
        config.tuning.family.check(pretrained.config, config.tuner, config.sequence_length)
    frames = {"train": data.train, "dev": data.dev, "val": data.val,
              "test": data.test if config.predict_test else None}
    encoded = {name: encode(pretrained.tokenizer, frame, config.sequence_length)
               for name, frame in frames.items() if frame is not None}
    return Setup(config, data, state, pretrained, encoded, mesh, micro_batches, parent)


def run(setup: Setup) -> Path:
    config, mesh = setup.config, setup.mesh
    # From here on this run writes the run directory: process 0 holds its lock for all.
    with exit_on_bad_input():
        distributed.on_main_process("run directory locked",
                                    lambda: lock_run_dir(config.run_dir))
    total_steps = setup.total_steps
    cache_dir = compile_cache.enable()  # a repeated or resumed run loads its compiled steps
    programs = compile_cache.Programs()
    print(f"{TRAINER}: {len(setup.data.train)} train / {len(setup.data.val)} val rows"
          + (f" / {len(setup.data.dev)} dev" if setup.data.dev is not None else "")
          + f", {setup.steps_per_epoch} steps x {config.epochs} epochs of {setup.global_batch} "
          + (f"x {config.accumulate} accumulated " if config.accumulate > 1 else "")
          + (f"(at most {total_steps} steps) " if config.max_steps else "")
          + f"on {mesh.size} {jax.default_backend()} device(s) -> {config.run_dir}", flush=True)
    if setup.data.extra is not None:
        print(f"{TRAINER}: {setup.data.extra.summary()}", flush=True)

    # ------------------------------------------------------------ model and optimizer
    # The mask says which leaves move; the rest keep no optimizer state.
    model = setup.pretrained.model
    model.remat = config.remat
    inherited = [] if setup.parent is None else init_from_parent(model, setup.parent)
    set_compute_dtype(model, config.compute_dtype)
    graphdef, params = nnx.split(model)
    trainable = trainable_filter(config.lora, full=config.full, tuning=config.tuning,
                                 pooling=config.pooling)
    mask = trainable_mask(params, trainable)
    tx = make_optimizer(config, params, mask, total_steps)
    state = replicate(TrainState(jnp.int32(0), params, tx.init(params)), mesh)
    dropout_base = jax.random.fold_in(jax.random.key(config.seed), DROPOUT_STREAM)
    options = compiler_options(config.remat)
    if config.accumulate == 1:
        single_step = make_train_step(graphdef, tx, trainable, dropout_base, options=options)
        train_step = lambda state, micro_batches: single_step(state, *micro_batches)  # noqa: E731
    else:
        train_step = make_accumulated_step(graphdef, tx, trainable, dropout_base,
                                           config.accumulate, options=options)
    predict = functools.partial(evaluate, make_eval_step(graphdef), mesh=mesh,
                                global_batch=setup.global_batch, dynamic=config.dynamic_padding)

    if setup.state == NEW and distributed.is_main():
        clear_run_dir(config.run_dir)  # --restart: nothing of the old run survives
    distributed.sync("run directory cleared")

    # ------------------------------------------------------------ resume
    # The newest checkpoint that restores holds the trainable leaves, Adam's moments and
    # progress; damaged ones are set aside with a warning, and if none restores the run stops
    # with one line (before the manifest is touched).
    checkpoints = Checkpoints(config.run_dir, keep=config.keep_checkpoints)
    progress = Progress(config.to_dict())
    trainable_params, frozen = split_trainable(state.params, trainable)
    with exit_on_bad_input():
        restored = checkpoints.restore_latest(trainable_params, state.opt_state)
    step = 0
    if restored is not None:
        step, trainable_params, opt_state, saved = restored
        progress = Progress.resumed(progress.config, saved)
        state = TrainState(jnp.int32(step), nnx.merge_state(trainable_params, frozen), opt_state)
        print(f"{TRAINER}: resumed from step {step}", flush=True)
    dev = setup.encoded.get("dev")
    tracker = DevTracker(config.patience, progress.evals)
    tracker.truncate(step)
    best = None if dev is None else BestCheckpoint(config.run_dir)
    if best is not None:
        best.forget_after(step)
        with exit_on_bad_input():
            best.check(trainable_params)

    writer = RunWriter(config.run_dir) if distributed.is_main() else distributed.Silent()
    writer.start(trainer=TRAINER, config=config.to_dict(), weights=setup.pretrained.source,
                 code=code_version(),
                 split=setup.data.split.describe(), data=setup.data.describe(),
                 versions=library_versions("jax", "jaxlib", "flax", "optax",
                                           "orbax-checkpoint", "tokenizers"),
                 devices=device_info(mesh), params=param_counts(params, mask))
    writer.update(preprocessing={"sequence_length": config.sequence_length,
                                 "truncate": config.truncate,
                                 **setup.pretrained.tokenizer.describe()},
                  model={"method": config.method, "pooling": config.pooling,
                         "adapter_scale": config.lora.scale if config.lora.targets else None,
                         "base_dtype": config.base_dtype, "compute_dtype": config.compute_dtype,
                         "frozen_kernel_bytes": stored_bytes(model)})
    if setup.parent is not None:
        writer.update(parent={**setup.parent, "inherited": inherited})

    # ------------------------------------------------------------ saving and dev evaluation
    # Training seconds exclude dev evaluations and checkpoint saves: the clock adds the time
    # since its mark, and sums what the current epoch spent on the other two (and on compiling
    # the evaluation, which the epoch's compile clock hears too). The dev part is evaluated
    # every --eval-every steps and at each epoch end; checkpoints are saved after those
    # evaluations, every --checkpoint-every steps, at each epoch end and when the run stops.
    clock = Clock(progress.train_seconds)
    schedule = Schedule(total_steps, setup.steps_per_epoch, config.eval_every,
                        config.checkpoint_every, has_dev=dev is not None)
    actions = EvalAndSave(progress, clock, Window(progress.window), tracker, schedule,
                          checkpoints=checkpoints, trainable=trainable, writer=writer,
                          predict=predict, examples_at=setup.examples_at, dev=dev, best=best)

    # ------------------------------------------------------------ training loop
    # Each epoch runs what is left of its permutation (all of it, unless resumed); the run
    # stops early at --max-steps, or when --patience dev evaluations bring nothing better.
    last_val = None
    for epoch in range(step // setup.steps_per_epoch, config.epochs):
        if step >= total_steps or tracker.exhausted():
            break
        start = step - epoch * setup.steps_per_epoch
        clock.new_epoch()
        state, totals, train_seconds, compile_seconds, stopped = train_epoch(
            setup, train_step, state, epoch=epoch, start=start, totals=progress.epoch_totals,
            after_step=actions.after_step)
        mid_epoch = dict(clock.aside)  # the epoch-end evaluations are timed below
        clock.tick()
        step = int(state.step)
        eval_began = time.perf_counter()
        if dev is not None and not stopped:
            actions.evaluate_dev(state, step)
        # With a dev part the validation rows are evaluated once, from the best step (below):
        # the dev curve is evals.csv, and history.csv's validation columns stay empty.
        if dev is None:
            last_val = predict(state.params, setup.encoded["val"])
        record = {"epoch": epoch + 1,
                  "train_loss": float(totals["loss_sum"] / totals["count"]),
                  "train_accuracy": float(totals["correct"] / totals["count"]),
                  **(val_metrics(last_val[0], setup.encoded["val"].labels) if dev is None
                     else {"val_loss": None, "val_accuracy": None})}
        progress.history = [r for r in progress.history if r["epoch"] <= epoch] + [record]
        writer.write_history(pd.DataFrame(progress.history, columns=list(HISTORY_COLUMNS)))
        # As tf_baseline's (a Keras epoch): `seconds` spans the whole epoch, compiling,
        # evaluations and checkpoints included; `train_seconds` the training steps alone
        # (compiling included), so that it divided by the steps is the step time.
        eval_seconds = time.perf_counter() - eval_began
        seconds = train_seconds + eval_seconds
        examples = setup.examples_at(step) - setup.examples_at(epoch * setup.steps_per_epoch
                                                               + start)
        writer.add_epoch(epoch + 1, seconds, examples,
                         train_seconds=train_seconds - mid_epoch["evals"]
                         - mid_epoch["checkpoints"],
                         compile_seconds=compile_seconds - mid_epoch["eval_compile"],
                         eval_seconds=eval_seconds + mid_epoch["evals"],
                         checkpoint_seconds=mid_epoch["checkpoints"],
                         **({"resumed_from_step": epoch * setup.steps_per_epoch + start}
                            if start else {}))
        clock.skip()  # the epoch's evaluations were not training
        if not stopped:  # a stop mid-epoch saved its checkpoint, with the epoch's sums
            actions.save_checkpoint(state, zero_sums())
        print(f"epoch {epoch + 1}/{config.epochs}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in record.items()
                          if k != "epoch" and v is not None)
              + f", {examples / seconds:.1f} examples/s (evaluations included)", flush=True)
    checkpoints.close()
    ended = {"step": step, "reason": "patience" if tracker.exhausted() else
             "max_steps" if step < setup.steps_per_epoch * config.epochs else "epochs"}

    # ------------------------------------------------------------ final outputs
    # From the best dev step when there is a dev part: validation rows, test file, [CLS]
    # vectors, the adapter.
    params = state.params
    if best is not None:
        trainable_now, frozen = split_trainable(state.params, trainable)
        params = nnx.merge_state(best.restore(trainable_now), frozen)
        best.close()
        print(f"{TRAINER}: best dev accuracy {tracker.best['dev_accuracy']:.4f} at step "
              f"{tracker.best['step']}; stopped at step {step} ({ended['reason']})", flush=True)
    val_logits, val_cls = last_val or predict(params, setup.encoded["val"])
    writer.write_predictions(predictions_frame(setup.data.val, softmax(val_logits)))
    writer.write_embeddings(val_cls)
    if "test" in setup.encoded:
        test_logits, _ = predict(params, setup.encoded["test"])
        writer.write_submission(submission_frame(setup.data.test, softmax(test_logits)))
    if distributed.is_main():
        nnx.update(model, jax.device_get(params))
        save_adapter(Path(config.run_dir) / ADAPTER, model, setup.pretrained.source,
                     method=config.method,
                     pooler=any(n.startswith("pooler.") for n in inherited))
    writer.finish(peak_accelerator_mem_mb=peak_accelerator_mb(mesh), steps=step,
                  global_batch=setup.global_batch, accumulate=config.accumulate,
                  effective_batch=setup.global_batch * config.accumulate, adapter=ADAPTER,
                  best=tracker.summary(), stopped=ended,
                  compilation={"cache": None if cache_dir is None else str(cache_dir),
                               **(programs.close() if cache_dir else {})})
    unlock_run_dir(config.run_dir)
    return Path(config.run_dir)


def train(config: TrainConfig) -> Path:
    """Train (or resume, or keep when finished) as `config` says; returns the run directory."""
    setup = prepare(config)
    return run(setup) if setup is not None else Path(config.run_dir)


def main(argv=None) -> None:
    trainer_main(parse_config, prepare, run, argv)


if __name__ == "__main__":
    main()
