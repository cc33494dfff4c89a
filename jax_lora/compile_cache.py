"""JAX's persistent compilation cache, on by default: a repeated or resumed run loads its
compiled steps instead of compiling them again.

    JAX_COMPILATION_CACHE_DIR=/some/dir   use that folder (JAX's own setting, read by JAX)
    JAX_COMPILATION_CACHE_DIR=            (empty) or `none`: no persistent cache

By default the cache lives in $XDG_CACHE_HOME/watson-peft/jax-compile/<machine> (~/.cache when
XDG_CACHE_HOME is unset), one folder per CPU feature set and jax version: XLA:CPU compiles for
the host's instruction set, and the VMs this project runs on change between AMD (AVX2) and Intel
(AVX-512), so an entry is only ever read on the kind of machine that wrote it. Entries are
written whatever their compile time (JAX's default keeps only those above one second, which
would drop the evaluation steps). Where the time went is measured by steps.compile_clock: a
cache hit costs the tracing and the read, a small share of a compile
(benchmarks/BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import jax

ENV = "JAX_COMPILATION_CACHE_DIR"
OFF = ("", "none")


def machine_key() -> str:
    """A short digest of what an executable compiled here depends on: the CPU's feature flags
    (Linux's /proc/cpuinfo; the processor's name elsewhere), the machine type and jax's version."""
    try:
        flags = next((line.split(":", 1)[1] for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = platform.processor()
    features = " ".join(sorted(flags.split()))
    text = f"{platform.machine()}|{features}|jax {jax.__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def default_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "watson-peft" / "jax-compile" / machine_key()


def enable() -> Path | None:
    """Turn the persistent cache on (see the module's docstring); returns its folder, or None
    when the environment turned it off. Call before the first compilation."""
    chosen = os.environ.get(ENV)
    if chosen is not None and chosen.strip().lower() in OFF:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    directory = Path(chosen) if chosen else default_dir()
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


HIT, MISS = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"
# Where a program's seconds go before it runs (JAX's monitoring durations, summed).
SECONDS = {"tracing": "/jax/core/compile/jaxpr_trace_duration",
           "lowering": "/jax/core/compile/jaxpr_to_mlir_module_duration",
           "compiling_or_loading": "/jax/core/compile/backend_compile_duration",
           "of_which_loading": "/jax/compilation_cache/cache_retrieval_time_sec"}


class Programs:
    """Counts, from creation to close(), the programs JAX compiled and those it read from the
    persistent cache, and the seconds spent tracing, lowering and compiling or loading them
    (JAX's monitoring events), for the manifest's `compilation` entry."""

    def __init__(self):
        self.counts = {"compiled": 0, "loaded": 0}
        self.seconds = dict.fromkeys(SECONDS, 0.0)
        jax.monitoring.register_event_listener(self._count)
        jax.monitoring.register_event_duration_secs_listener(self._time)

    def _count(self, event, **_):
        if event in (HIT, MISS):
            self.counts["loaded" if event == HIT else "compiled"] += 1

    def _time(self, event, duration, **_):
        for name, watched in SECONDS.items():
            if event == watched:
                self.seconds[name] += duration

    def close(self) -> dict:
        jax.monitoring.unregister_event_listener(self._count)
        jax.monitoring.unregister_event_duration_listener(self._time)
        return {**self.counts, "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}
