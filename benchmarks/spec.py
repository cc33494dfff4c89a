"""What is benchmarked: model shapes, the seven configurations, and each step's FLOPs.

No framework is imported here: run.py computes FLOPs for every worker from the same formulas,
so every configuration is measured against one definition (written out in BENCHMARKS.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

NUM_CLASSES = 3
# Every LoRA configuration: r=16, alpha=16 on query and value (the seed's PEFT config).
LORA_RANK = 16
LORA_TARGETS = ("query", "value")


@dataclass(frozen=True)
class Shape:
    name: str  # key in SHAPES, on the command line and in the results
    vocab_size: int  # rows of the token embedding
    num_layers: int  # transformer layers
    hidden_dim: int  # H
    num_heads: int  # attention heads
    intermediate_dim: int  # FFN inner width
    pretrained: bool  # True: the real all-MiniLM-L6-v2 weights; False: random weights

    def to_dict(self) -> dict:
        return asdict(self)


# mBERT-base (bert_base_multi / bert-base-multilingual-cased) with random weights: the
# pretrained files are not reachable here, and step time does not depend on weight values.
MBERT = Shape("mbert", 119_547, 12, 768, 12, 3072, pretrained=False)
# Tiny random shape for the harness test only: seconds per configuration.
TINY = Shape("tiny", 512, 2, 32, 2, 64, pretrained=False)


def minilm_shape() -> Shape:
    """all-MiniLM-L6-v2, read from the config.json of the folder the weights come from."""
    from shared.runs.presets import minilm_dir

    config = json.loads((minilm_dir() / "config.json").read_text())
    return Shape("minilm", config["vocab_size"], config["num_hidden_layers"],
                 config["hidden_size"], config["num_attention_heads"],
                 config["intermediate_size"], pretrained=True)


def get_shape(name: str) -> Shape:
    if name == "minilm":
        return minilm_shape()
    shapes = {shape.name: shape for shape in (MBERT, TINY)}
    if name not in shapes:
        raise ValueError(f"--shapes {name}: unknown shape; choose among mbert, minilm, tiny")
    return shapes[name]


@dataclass(frozen=True)
class Config:
    name: str  # key on the command line and in the results
    number: int  # 1-5: the numbering; 6, 7: jax_lora's further methods; 8-10: base dtypes
    framework: str  # worker module benchmarks/bench_<framework>.py
    # The FLOPs model (step_flops): "full", "lora_adapter" (x·A·B beside x·W), "lora_merged"
    # (x·(W + A·B)), "dora" (lora_adapter + DoRA's norm) or "probe" (the head alone trains).
    method: str
    label: str  # one line for the tables
    cls_only: bool = False  # the last layer runs for the [CLS] row only (jax_lora's model)
    base_dtype: str = "float32"  # jax_lora --base-dtype: how the frozen kernels are stored


CONFIGS = (
    Config("tf_full", 1, "tf", "full", "TF keras-hub full fine-tune (tf_baseline)"),
    Config("tf_lora", 2, "tf", "lora_merged", "TF keras-hub enable_lora(16)"),
    Config("jax_lora", 3, "jax", "lora_adapter", "JAX LoRA (jax_lora)", cls_only=True),
    Config("jax_full", 4, "jax", "full", "JAX full fine-tune (same Flax model)", cls_only=True),
    Config("torch_peft", 5, "torch", "lora_adapter", "PyTorch + transformers + PEFT LoRA"),
    Config("jax_dora", 6, "jax", "dora", "JAX DoRA (jax_lora --method dora)", cls_only=True),
    Config("jax_probe", 7, "jax", "probe", "JAX linear probe (jax_lora --method probe)",
           cls_only=True),
    # jax_lora's LoRA on a frozen base stored in fewer bits (--base-dtype); 3 is its float32.
    Config("jax_lora_bf16", 8, "jax", "lora_adapter", "JAX LoRA, base bfloat16",
           cls_only=True, base_dtype="bfloat16"),
    Config("jax_lora_int8", 9, "jax", "lora_adapter", "JAX LoRA, base int8",
           cls_only=True, base_dtype="int8"),
    Config("jax_qlora_nf4", 10, "jax", "lora_adapter", "JAX QLoRA-style, base NF4",
           cls_only=True, base_dtype="nf4"),
)
CONFIG_BY_NAME = {config.name: config for config in CONFIGS}
# What run.py measures without --configs: the five. The others (jax_dora, jax_probe,
# the base dtypes) are asked for by name (--configs ...), so the suites keep their length and
# their committed results.
DEFAULT_CONFIGS = ("tf_full", "tf_lora", "jax_lora", "jax_full", "torch_peft")
METHODS = ("full", "lora_adapter", "lora_merged", "dora", "probe")  # step_flops' methods


def query_rows(shape: Shape, batch: int, seq_len: int, cls_only: bool) -> int:
    """Rows that go through the query and output projections and the FFN, over all layers:
    every token, except in the last layer when only the [CLS] row is computed there (the one
    row the pooler reads; keys and values still cover every token)."""
    tokens = batch * seq_len
    return tokens * (shape.num_layers - 1) + (batch if cls_only else tokens)


def forward_flops(shape: Shape, batch: int, seq_len: int,
                  cls_only: bool = False) -> dict[str, int]:
    """Multiply-adds x2 of one forward pass, by part. Embedding lookups, softmax, LayerNorm,
    GELU and the optimizer are not matmuls and are left out, as in the usual 6·N·tokens count.
    cls_only: the last layer computes the [CLS] row only (see query_rows)."""
    tokens = batch * seq_len
    hidden, layers = shape.hidden_dim, shape.num_layers
    rows = query_rows(shape, batch, seq_len, cls_only)
    return {
        # key and value on every token; query and output on the query rows
        "projections": 2 * hidden * hidden * (2 * tokens * layers + 2 * rows),
        "ffn": 2 * rows * 2 * hidden * shape.intermediate_dim,
        "attention": 4 * rows * seq_len * hidden,  # Q·Kᵀ and P·V: each query row meets T keys
        # Pooler and head see the [CLS] token only.
        "pooler": 2 * batch * hidden * hidden,
        "head": 2 * batch * hidden * NUM_CLASSES,
    }


def step_flops(shape: Shape, batch: int, seq_len: int, method: str,
               cls_only: bool = False) -> int:
    """FLOPs one training step needs with this method: forward + the backward it requires.

    A trained matmul costs 3x its forward (forward, input gradient, weight gradient). A frozen
    matmul on the gradient path costs 2x (no weight gradient); with adapters, the first
    layer's query/key/value projections are off it (their input comes from the frozen
    embeddings), 1x, and so is its key gradient. Attention matmuls multiply two activations,
    so both gradients are needed: 3x. LoRA-adapted projections:
    - lora_adapter (PEFT, jax_lora): x·W frozen (2x) plus x·A·B trained (3x its
      2·rows·r·2H);
    - lora_merged (Keras enable_lora): x·(W + s·A·B) needs the weight gradient of the merged
      kernel to reach A and B, so 3x, plus the merge A·B itself (3x its 2·H²·r) each step;
    - dora (jax_lora --method dora, as PEFT): y = x·W + b + (m/n − 1)·x·W + (m/n)·s·x·A·B
      with n = ‖W + s·A·B‖ per output column. Its matmuls are lora_adapter's (x·W frozen, 2x;
      x·A·B trained, 3x; the same first-layer savings) plus the product A·B that n needs,
      2·H·r·H per adapted projection, once per step and 1x only: n is a constant in the
      backward pass (stop_gradient), so nothing flows back through A·B. Left out as not
      matmuls: the column norm itself (H² squares summed, 1/r of the A·B product), W + s·A·B
      (H² adds), the (m/n − 1) and m/n scalings (rows·H multiplies each), and m's gradient
      (a per-column sum over rows of g·(x·W + s·x·A·B)/n: 2·rows·H, 1/H of x·W).
    - probe (jax_lora --method probe): only the head trains, and nothing below it does, so
      the backward pass is the head's weight gradient alone (2·B·H·C, 1x): no input gradient
      for the head, none for pooler, encoder or attention. Forward (every matmul, 1x) + that.
    cls_only: the last layer computes the [CLS] row only (see query_rows).
    """
    fwd = forward_flops(shape, batch, seq_len, cls_only)
    if method == "full":
        return 3 * sum(fwd.values())
    if method == "probe":
        return sum(fwd.values()) + fwd["head"]
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {', '.join(METHODS)}")
    hidden, layers, tokens = shape.hidden_dim, shape.num_layers, batch * seq_len
    adapted = len(LORA_TARGETS) * layers  # projections with adapters
    # value adapters see every token, query adapters the query rows
    adapter_rows = tokens * layers + query_rows(shape, batch, seq_len, cls_only)
    frozen = (2 * (fwd["projections"] + fwd["ffn"] + fwd["pooler"])
              + 3 * (fwd["attention"] + fwd["head"]))
    # Below the first layer only frozen embeddings: no gradient w.r.t. its input is needed, so
    # its query, key and value projections (and adapters) skip their input gradients, and its
    # keys (no adapter) need no gradient at all, which saves the Q·Kᵀ product's key gradient.
    frozen -= 3 * 2 * tokens * hidden * hidden + 2 * batch * seq_len * seq_len * hidden
    if method == "lora_merged":
        return (frozen + 2 * adapter_rows * hidden * hidden
                + 3 * adapted * 2 * hidden * hidden * LORA_RANK)
    lora = (frozen + 3 * 2 * adapter_rows * LORA_RANK * 2 * hidden
            - len(LORA_TARGETS) * 2 * tokens * LORA_RANK * hidden)
    if method == "lora_adapter":
        return lora
    # dora: + A·B for the norm, forward only, on every adapted projection
    return lora + adapted * 2 * hidden * LORA_RANK * hidden
