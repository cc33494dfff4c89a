"""Configurations 3, 4, 6-10: jax_lora's own train step, one per `--method` and base dtype.

The model comes from jax_lora.weights.load_pretrained, the optimizer from jax_lora.optim and the
jitted step from jax_lora.steps.make_train_step, with the recipe's TrainConfig for the
configuration's method (JAX_METHODS) and the trainable rule train.py uses. Configuration 4
(full) is the same Flax model without adapters and with every parameter trainable, which
isolates what LoRA itself saves; 6 is DoRA on the same adapters, 7 the head alone on the frozen
encoder; 8-10 are 3 with the frozen kernels stored as bfloat16, int8 or NF4 (--base-dtype),
loaded as train.py loads them (each kernel quantized as it is read). Timed: one `train_step` on
a fixed batch already on the device, waited for.

Every JAX worker also records the stored bytes of the frozen kernels and its logits on the
first REAL_ROWS validation rows of the real Watson data (when present; tokenized with the
MiniLM vocabulary, which also indexes mBERT's larger table), so the report can give each base
dtype's logit gap from float32 (configuration 3) of the same shape and weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from benchmarks.spec import LORA_RANK, LORA_TARGETS, Config, Shape
from benchmarks.worker import Bench, Job, fake_batch, run_worker
from jax_lora.config import ADAPTER_METHODS, TrainConfig
from jax_lora.lora import LoraConfig, trainable_filter
from jax_lora.optim import make_optimizer, param_counts, trainable_mask
from jax_lora.quant import stored_bytes
from jax_lora.steps import (DROPOUT_STREAM, TrainState, compiler_options, make_mesh,
                            make_train_step, replicate, shard_batch)
from jax_lora.weights import load_pretrained

# spec.CONFIGS name -> jax_lora --method
JAX_METHODS = {"jax_lora": "lora", "jax_full": "full", "jax_dora": "dora", "jax_probe": "probe",
               "jax_lora_bf16": "lora", "jax_lora_int8": "lora", "jax_qlora_nf4": "lora"}
REAL_ROWS = 64  # validation rows whose logits each worker records
REAL_SEQ_LEN = 128


@dataclass
class JaxSetup:
    """What train.py builds before its loop; `state` is replaced by every step."""
    graphdef: nnx.GraphDef
    state: TrainState
    tx: optax.GradientTransformation
    trainable: nnx.filterlib.Filter
    mask: nnx.State
    mesh: Mesh
    dropout_base: jax.Array
    remat: str  # the recipe's --remat, set on the model
    options: dict  # XLA compiler options of the step (jax_lora.steps.compiler_options)
    method: str  # jax_lora's --method: what trains
    frozen_bytes: dict  # jax_lora.quant.stored_bytes: the frozen kernels, as stored and float32

    def device_batch(self, shape: Shape, batch: int, seq_len: int, seed: int) -> dict:
        """A fixed global batch, sharded over the mesh as train.py shards each batch."""
        arrays = fake_batch(shape, batch, seq_len, seed)
        return shard_batch({**arrays, "weights": np.ones(batch, np.float32)}, self.mesh)


def setup(job: Job, method: str, base_dtype: str = "float32") -> JaxSetup:
    """train.py's model, trainable rule, optimizer and state for `--method method`."""
    # The adapters are the seed's (r=16, alpha=16, query and value) for lora and dora; full
    # and probe have none (TrainConfig clears the targets), the same Flax model without them.
    lora = LoraConfig(rank=LORA_RANK, alpha=float(LORA_RANK),
                      targets=LORA_TARGETS if method in ADAPTER_METHODS else ())
    config = TrainConfig(preset=job.preset, seed=job.seed, method=method, lora=lora,
                         base_dtype=base_dtype).with_preset_defaults()
    model = load_pretrained(job.preset, config.lora, seed=job.seed, pooling=config.pooling,
                            base_dtype=config.base_dtype).model
    model.remat = config.remat  # as train.py sets it, with its compiler options below
    graphdef, params = nnx.split(model)
    trainable = trainable_filter(config.lora, full=config.full)
    mask = trainable_mask(params, trainable)
    tx = make_optimizer(config, params, mask, total_steps=1_000_000)
    mesh = make_mesh()
    state = replicate(TrainState(jnp.int32(0), params, tx.init(params)), mesh)
    dropout_base = jax.random.fold_in(jax.random.key(job.seed), DROPOUT_STREAM)
    return JaxSetup(graphdef, state, tx, trainable, mask, mesh, dropout_base, config.remat,
                    compiler_options(config.remat), method, stored_bytes(model))


def real_logits(jax_setup: JaxSetup) -> list | None:
    """The model's logits (no adapters trained yet: the base and the fresh head) on the first
    REAL_ROWS validation rows of the real Watson data; None when the data is absent."""
    from benchmarks.epoch import WATSON_DIR
    from jax_lora.input_pipeline import encode
    from jax_lora.tokenizer import Tokenizer
    from shared.data.spec import DataSpec, load
    from shared.runs.presets import minilm_dir

    if not (WATSON_DIR / "train.csv").is_file():
        return None
    rows = load(DataSpec(data_dir=WATSON_DIR)).val.iloc[:REAL_ROWS]
    encoded = encode(Tokenizer.from_preset_dir(minilm_dir(), "hf"), rows, REAL_SEQ_LEN)
    forward = jax.jit(lambda params, *arrays: nnx.merge(jax_setup.graphdef, params)(*arrays))
    # 16 rows at a time: no more activation memory than a training step's, so the peak RSS
    # the worker reports is still the step's.
    return np.concatenate([np.asarray(forward(jax_setup.state.params,
                                              encoded.token_ids[i:i + 16],
                                              encoded.segment_ids[i:i + 16],
                                              encoded.padding_mask[i:i + 16]))
                           for i in range(0, len(rows), 16)]).tolist()


def build(job: Job, config: Config, shape: Shape) -> Bench:
    jax_setup = setup(job, JAX_METHODS[config.name], config.base_dtype)
    logits = real_logits(jax_setup)
    train_step = make_train_step(jax_setup.graphdef, jax_setup.tx, jax_setup.trainable,
                                 jax_setup.dropout_base, options=jax_setup.options)

    def make_step(seq_len: int):
        batch = jax_setup.device_batch(shape, job.batch, seq_len, job.seed)

        def step():
            jax_setup.state, metrics = train_step(jax_setup.state, batch)
            jax.block_until_ready((jax_setup.state, metrics))
        return step

    counts = param_counts(jax_setup.state.params, jax_setup.mask)
    return Bench(make_step, counts["trainable"], counts["total"],
                 {"framework": "jax", "jax": jax.__version__, "flax": flax.__version__,
                  "dtype": str(jax.tree.leaves(jax_setup.state.params)[0].dtype),
                  "devices": jax_setup.mesh.size, "backend": jax.default_backend(),
                  "prng": jax.config.jax_default_prng_impl,
                  "remat": jax_setup.remat, "method": jax_setup.method,
                  "base_dtype": config.base_dtype, "frozen_kernel_bytes": jax_setup.frozen_bytes,
                  "real_rows_logits": logits,
                  "step": "jax_lora.steps.make_train_step (jit, state donated)"})


if __name__ == "__main__":
    run_worker(build)
