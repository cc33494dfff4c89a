"""Padding of jax_lora's training batches under several bucket rules, on the real Watson
training part, for each model's own tokenizer: what the bucket lengths cost in computed tokens,
and how many shapes (one compiled program each) they make.

    python -m benchmarks.padding                       # both models, at 128 and 512 tokens
    python -m benchmarks.padding --presets multilingual-e5-small --lengths 128

Batches are the recipe's (16 rows, length-grouped as jax_lora groups them, epoch 0's order);
"longest row" pads each batch to exactly its longest row, as PyTorch's DataCollatorWithPadding
does (one shape per distinct length: nothing a compiled step could use). Prints a Markdown
table; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.epoch import WATSON_DIR  # noqa: E402

RULES = {  # name -> bucket lengths (None: each batch's longest row)
    "powers of two (before)": (32, 64, 128, 256, 512),
    "every 16 to 128 (jax_lora)": None,  # filled from jax_lora.input_pipeline.BUCKETS
    "every 8 to 128": (*range(8, 129, 8), 192, 256, 384, 512),
    "longest row (PyTorch's collator)": (),
}


def lengths_of(preset: str, data_dir: Path, sequence_length: int, data=None) -> np.ndarray:
    """Real tokens of each training row (of `data`, a shared.data Data; default: the whole
    split of `data_dir`) under the preset's own tokenizer, as jax_lora encodes them."""
    from jax_lora.input_pipeline import encode
    from jax_lora.weights import TOKENIZERS, preset_dir
    from shared.data.spec import DataSpec, load
    from shared.runs.encoder import encoder_numbers

    directory, kind = preset_dir(preset)
    tokenizer = TOKENIZERS[encoder_numbers(str(directory)).tokenizer].from_preset_dir(directory,
                                                                                      kind)
    data = data if data is not None else load(DataSpec(data_dir=data_dir))
    return encode(tokenizer, data.train, sequence_length).lengths


def padding(lengths: np.ndarray, sequence_length: int, buckets) -> dict:
    from jax_lora.config import TrainConfig
    from jax_lora.input_pipeline import bucket_length, epoch_batches

    recipe = TrainConfig()
    batches = epoch_batches(lengths, recipe.batch_per_device, seed=recipe.seed, epoch=0,
                            group_by_length=recipe.group_by_length)
    longest = [int(lengths[rows].max()) for rows in batches]
    padded = [most if not buckets else bucket_length(most, sequence_length, buckets)
              for most in longest]
    real = int(sum(lengths[rows].sum() for rows in batches))
    computed = sum(width * len(rows) for width, rows in zip(padded, batches))
    return {"padding": 1 - real / computed, "tokens": computed, "shapes": len(set(padded))}


def main(argv=None) -> int:
    from jax_lora.input_pipeline import BUCKETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="all-minilm-l6-v2,multilingual-e5-small",
                        help="comma-separated presets or aliases [default: both models]")
    parser.add_argument("--lengths", default="128,512",
                        help="comma-separated --sequence-length values [default: 128,512]")
    parser.add_argument("--data-dir", type=Path, default=WATSON_DIR,
                        help=f"the real Watson CSV folder [default: {WATSON_DIR}]")
    args = parser.parse_args(argv)
    if not (args.data_dir / "train.csv").is_file():
        parser.error(f"--data-dir {args.data_dir}: no train.csv; pass the Watson CSV folder")
    try:
        lengths_wanted = [int(value) for value in args.lengths.split(",")]
    except ValueError:
        parser.error(f"--lengths {args.lengths}: give comma-separated integers, e.g. 128,512")
    if not all(8 <= value <= 512 for value in lengths_wanted):
        parser.error(f"--lengths {args.lengths}: each must lie in [8, 512]")
    from shared.runs.presets import PresetError, preset_kind
    for preset in args.presets.split(","):
        try:
            preset_kind(preset)
        except PresetError as error:
            parser.error(str(error))
    rules = {name: (BUCKETS if buckets is None else buckets) for name, buckets in RULES.items()}
    lines = ["| model | sequence length | bucket rule | padding | tokens computed | × longest "
             "row's | shapes |", "|---|---:|---|---:|---:|---:|---:|"]
    for preset in args.presets.split(","):
        for sequence_length in lengths_wanted:
            lengths = lengths_of(preset, args.data_dir, sequence_length)
            results = {name: padding(lengths, sequence_length, buckets)
                       for name, buckets in rules.items()}
            exact = results["longest row (PyTorch's collator)"]["tokens"]
            for name, result in results.items():
                lines.append(f"| {preset} | {sequence_length} | {name} | "
                             f"{100 * result['padding']:.1f} % | {result['tokens']:,} | "
                             f"{result['tokens'] / exact:.3f} | {result['shapes']} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
