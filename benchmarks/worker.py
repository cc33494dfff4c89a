"""What every benchmark worker shares: its job, the fixed batch, the timed loop, its JSON line.

A worker (`python -m benchmarks.bench_<framework> --json-args '{...}'`) measures one
configuration on one shape in a process of its own, so that peak RSS, compile caches and
thread pools belong to that configuration alone. It prints exactly one JSON line on stdout,
last; run.py reads that line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from benchmarks.spec import CONFIG_BY_NAME, Config, Shape, get_shape


@dataclass(frozen=True)
class Job:
    config: str  # a name in spec.CONFIGS
    shape: str  # a name accepted by spec.get_shape
    batch: int  # examples per step
    seq_len: int  # tokens per example for the main measurement
    steps: int  # timed steps per length (the median is reported)
    warmup: int  # untimed steps first: compilation, allocator and cache warm-up
    preset: str  # Hugging Face BERT folder: the real MiniLM one, or one from random_preset.py
    extra_seq_lens: tuple[int, ...] = field(default=())  # more lengths to time (epoch estimate)
    seed: int = 0  # random weights and the fixed batch

    @classmethod
    def from_json(cls, text: str) -> "Job":
        values = json.loads(text)
        values["extra_seq_lens"] = tuple(values.get("extra_seq_lens", ()))
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass
class Bench:
    """What a framework worker builds; the shared loop does the timing."""
    make_step: Callable[[int], Callable[[], None]]  # seq_len -> one synchronous training step
    trainable_params: int
    total_params: int
    info: dict  # framework versions, dtype, threads and how the step is run


def fake_batch(shape: Shape, batch: int, seq_len: int, seed: int) -> dict[str, np.ndarray]:
    """A full-length batch of random token ids (no padding): the shapes of a real batch, with
    tokenization done before the timed loop as a real input pipeline does it."""
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(5, shape.vocab_size, size=(batch, seq_len), dtype=np.int32)
    segment_ids = np.zeros((batch, seq_len), np.int32)
    segment_ids[:, seq_len // 2:] = 1
    return {"token_ids": token_ids, "segment_ids": segment_ids,
            "padding_mask": np.ones((batch, seq_len), np.int32),
            "labels": rng.integers(0, 3, size=(batch,), dtype=np.int32)}


def time_steps(step: Callable[[], None], warmup: int,
               steps: int) -> tuple[list[float], list[float]]:
    """(warm-up step times, timed step times); the first warm-up step includes compilation."""
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times[:warmup], times[warmup:]


def peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run_worker(build: Callable[[Job, Config, Shape], Bench]) -> None:
    """Entry point of every bench_<framework> module."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--json-args", required=True, help="a worker Job as JSON")
    job = Job.from_json(parser.parse_args().json_args)
    config, shape = CONFIG_BY_NAME[job.config], get_shape(job.shape)
    started = time.perf_counter()
    bench = build(job, config, shape)
    setup_s = time.perf_counter() - started
    warmup_times, times = time_steps(bench.make_step(job.seq_len), job.warmup, job.steps)
    # Read before the extra lengths, whose larger activations would raise the peak.
    rss = peak_rss_bytes()
    extra = {}
    for seq_len in job.extra_seq_lens:
        extra_warmup, extra_times = time_steps(bench.make_step(seq_len), job.warmup, job.steps)
        extra[str(seq_len)] = {"median_step_s": statistics.median(extra_times),
                               "step_times_s": extra_times, "warmup_times_s": extra_warmup}
    result = {
        "job": asdict(job),
        "status": "ok",
        "median_step_s": statistics.median(times),
        "step_times_s": times,
        "warmup_times_s": warmup_times,
        "peak_rss_bytes": rss,
        "trainable_params": bench.trainable_params,
        "total_params": bench.total_params,
        "setup_s": setup_s,
        "extra_seq_lens": extra,
        "info": {"python": platform.python_version(), "numpy": np.__version__,
                 "cpu_count": os.cpu_count(), **bench.info},
    }
    print(json.dumps(result), flush=True)
