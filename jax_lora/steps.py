"""The jitted training and evaluation steps, and the devices they run on: pure functions of
(graphdef, optimizer, trainable filter, dropout key) that jax_lora/train.py drives and the
benchmarks and tests call directly. Only the trainable leaves are differentiated; the frozen
ones get zero gradients that the partitioned optimizer never reads (jax_lora/optim.py)."""

from __future__ import annotations

import contextlib
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_lora import distributed
from jax_lora.input_pipeline import Encoded, eval_batches
from jax_lora.optim import split_trainable, with_frozen_zeros
from shared.runs.run_dir import softmax

# Dropout keys come from their own stream: nnx.Rngs(seed) folds small counters into
# key(seed) for the head/adapter init, so key(seed) folded with the step would repeat them.
DROPOUT_STREAM = 0x0D0F
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
METRICS = ("loss_sum", "correct", "count")


class TrainState(NamedTuple):
    step: jax.Array
    params: nnx.State  # every parameter; the optimizer moves only the trainable ones
    opt_state: optax.OptState


# ---------------------------------------------------------------- pure step functions

def batch_metrics(logits, labels, weights) -> dict:
    """Sums, so batches and epochs add up exactly; weight 0 marks eval padding rows."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return {"loss_sum": jnp.sum(losses * weights), "correct": jnp.sum(correct * weights),
            "count": jnp.sum(weights)}


def memory_scheduler() -> dict:
    """XLA:CPU's memory-optimised scheduler as compiler options ({} on other backends)."""
    if jax.default_backend() != "cpu":
        return {}
    return {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}


def compiler_options(remat: str) -> dict:
    """XLA options of the train step. XLA:CPU's default scheduler runs independent operations
    concurrently and so keeps recomputed activations alive as long as stored ones: with
    rematerialisation on, the step needs its memory-optimised scheduler to use less memory
    (benchmarks/BENCHMARKS.md)."""
    return {} if remat == "none" else memory_scheduler()


def make_loss_sum(graphdef):
    """(trainable, frozen, batch, dropout_key) -> (loss summed over the batch's real rows,
    metrics), to differentiate with respect to the trainable part only."""
    def loss_sum(trainable_params, frozen, batch, dropout_key):
        model = nnx.merge(graphdef, trainable_params, frozen)
        logits = model(batch["token_ids"], batch["segment_ids"], batch["padding_mask"],
                       dropout_key=dropout_key)
        metrics = batch_metrics(logits, batch["labels"], batch["weights"])
        return metrics["loss_sum"], metrics
    return loss_sum


def apply_gradients(tx: optax.GradientTransformation, state: TrainState, grads,
                    frozen) -> TrainState:
    """One optimizer step on the trainable leaves' gradients (frozen leaves get zeros, which
    the partitioned optimizer never reads)."""
    updates, opt_state = tx.update(with_frozen_zeros(grads, frozen), state.opt_state,
                                   state.params)
    return TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)


class Bound:
    """A jitted function with its last arguments bound: `Bound(f, key)(state, batch)` is
    `f(state, batch, key)`. The bound values are arguments of the compiled program, not
    constants folded into it, so runs that differ only in them (the seed's dropout key) run one
    program, which the persistent compilation cache then serves. `lower(...).compile()` gives
    the compiled program with the same values bound."""

    def __init__(self, function, *bound):
        self.function, self.bound = function, bound

    def __call__(self, *args):
        return self.function(*args, *self.bound)

    def lower(self, *args):
        return _BoundLowered(self.function.lower(*args, *self.bound), self.bound)

    def __getattr__(self, name):  # as_text, cost_analysis, ... of a compiled program
        return getattr(self.function, name)


class _BoundLowered:
    def __init__(self, lowered, bound):
        self.lowered, self.bound = lowered, bound

    def compile(self, *args, **kwargs) -> Bound:
        return Bound(self.lowered.compile(*args, **kwargs), *self.bound)

    def __getattr__(self, name):
        return getattr(self.lowered, name)


def make_train_step(graphdef, tx: optax.GradientTransformation, trainable, dropout_base, *,
                    options: dict | None = None):
    """The jitted step (state donated) on one batch; `options` are XLA compiler options
    (compiler_options). The dropout key is an argument of the program (Bound)."""
    loss_sum = make_loss_sum(graphdef)

    def mean_loss(*args):
        total, metrics = loss_sum(*args)
        return total / metrics["count"], metrics

    def train_step(state: TrainState, batch: dict, dropout_base):
        # Differentiate only the trainable part: no weight gradients for the frozen base.
        trainable_params, frozen = split_trainable(state.params, trainable)
        dropout_key = jax.random.fold_in(dropout_base, state.step)
        grads, metrics = jax.grad(mean_loss, has_aux=True)(trainable_params, frozen, batch,
                                                           dropout_key)
        return apply_gradients(tx, state, grads, frozen), metrics

    return Bound(jax.jit(train_step, donate_argnums=0, compiler_options=options or None),
                 dropout_base)


def make_accumulated_step(graphdef, tx: optax.GradientTransformation, trainable, dropout_base,
                          accumulate: int, *, options: dict | None = None):
    """step(state, micro_batches) -> (state, metrics), --accumulate: one optimizer step on the
    mean loss over the real rows of up to `accumulate` micro-batches. Each micro-batch adds
    the gradient of its summed loss (one jitted program per batch shape, the running sums
    donated); one update then divides by the number of real rows, so micro-batches of other
    lengths (dynamic padding) or a shorter last group are exact. Micro-batch k of step s draws
    its dropout masks from key s · accumulate + k."""
    grad_sum = jax.grad(make_loss_sum(graphdef), has_aux=True)

    def micro_step(state: TrainState, grads, metrics, batch, k, dropout_base):
        trainable_params, frozen = split_trainable(state.params, trainable)
        dropout_key = jax.random.fold_in(dropout_base, state.step * accumulate + k)
        more, more_metrics = grad_sum(trainable_params, frozen, batch, dropout_key)
        return (jax.tree.map(jnp.add, grads, more),
                {name: metrics[name] + more_metrics[name] for name in METRICS})

    def update(state: TrainState, grads, count):
        frozen = split_trainable(state.params, trainable)[1]
        return apply_gradients(tx, state, jax.tree.map(lambda g: g / count, grads), frozen)

    jit = functools.partial(jax.jit, compiler_options=options or None)
    micro, update = jit(micro_step, donate_argnums=(1, 2)), jit(update, donate_argnums=0)
    zeros = jax.jit(lambda params: jax.tree.map(jnp.zeros_like,
                                                split_trainable(params, trainable)[0]))

    def train_step(state: TrainState, micro_batches: list[dict]):
        grads = zeros(state.params)
        metrics = {name: jnp.zeros((), jnp.float32) for name in METRICS}  # three buffers
        for k, batch in enumerate(micro_batches):
            grads, metrics = micro(state, grads, metrics, batch, jnp.int32(k), dropout_base)
        return update(state, grads, metrics["count"]), metrics

    return train_step


def make_eval_step(graphdef):
    def eval_step(params: nnx.State, batch: dict):
        model = nnx.merge(graphdef, params)
        encoded = model.encode(batch["token_ids"], batch["segment_ids"], batch["padding_mask"],
                               cls_only=True)
        # The vector the head's pooling starts from: [CLS], or the token mean.
        features = encoded["cls"] if model.pooling == "cls" else encoded["pooled_output"]
        return encoded["logits"], features

    return jax.jit(eval_step)


# ---------------------------------------------------------------- devices and timing

def make_mesh(devices=None) -> Mesh:
    """The `data` mesh over `devices`, by default every process's."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    return distributed.put(batch, NamedSharding(mesh, PartitionSpec("data")))


def replicate(tree, mesh: Mesh):
    return distributed.put(tree, NamedSharding(mesh, PartitionSpec()))


def device_info(mesh: Mesh) -> dict:
    devices = list(mesh.devices.flat)
    return {"platform": devices[0].platform, "replicas": len(devices),
            "processes": jax.process_count(),
            "devices": [f"{d} ({d.device_kind})" for d in devices]}


def peak_accelerator_mb(mesh: Mesh) -> float | None:
    """Largest per-device peak of this process's devices; None where the backend keeps no
    statistics (CPU)."""
    stats = [device.memory_stats() for device in mesh.local_devices]
    if any(s is None or "peak_bytes_in_use" not in s for s in stats):
        return None
    return max(s["peak_bytes_in_use"] for s in stats) / 2 ** 20


@contextlib.contextmanager
def compile_clock():
    """Seconds spent tracing and compiling inside the block (one compile per batch shape)."""
    clock = {"seconds": 0.0}

    def listen(event, duration, **_):
        if event in COMPILE_EVENTS:
            clock["seconds"] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield clock
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


# ---------------------------------------------------------------- evaluation

def evaluate(eval_step, params, data: Encoded, *, global_batch: int, mesh: Mesh, dynamic: bool):
    """(logits [n, classes], cls [n, hidden]) for every row, in the rows' order."""
    logits, cls = None, None
    for rows, batch in eval_batches(data, global_batch, dynamic=dynamic):
        batch_logits, batch_cls = distributed.gather(eval_step(params, shard_batch(batch, mesh)))
        if logits is None:
            logits = np.zeros((len(data), batch_logits.shape[1]), np.float32)
            cls = np.zeros((len(data), batch_cls.shape[1]), np.float32)
        logits[rows], cls[rows] = batch_logits[: len(rows)], batch_cls[: len(rows)]
    return logits, cls


def val_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    probs = softmax(logits)
    return {"val_loss": float(-np.log(probs[np.arange(len(labels)), labels]).mean()),
            "val_accuracy": float((probs.argmax(axis=1) == labels).mean())}
