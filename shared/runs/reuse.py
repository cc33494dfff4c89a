"""When a run directory may be resumed or reused, one rule for both trainers and the jobs.

A run directory is new, unfinished (a killed run) or finished. Its manifest records the config,
the weights' and data files' checksums and the code's commit. Rerunning a trainer with the same
inputs resumes an unfinished run and keeps a finished one (nothing is recomputed); with other
inputs it stops with a one-line error that names what differs, except that a finished run may
be extended: a config that asks only for more epochs or steps (GROWABLE), and says it
`extends` the recorded one, resumes it. `--restart` discards the run
directory's contents and trains from scratch. "The same inputs" means equal configs minus
RESULT_NEUTRAL, equal weights checksums and equal data-file checksums; a field an older
manifest lacks counts as different.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from typing import NamedTuple

from shared.data.spec import Data, load
from shared.runs.presets import describe_preset
from shared.runs.run_dir import LOCK, MANIFEST

# Config fields that change how a run is watched, stored or scheduled, never what it computes
# (each trainer has some of them): runs may differ in these and still be the same run.
RESULT_NEUTRAL = ("run_dir", "quiet", "restart", "check", "checkpoint_every",
                  "keep_checkpoints", "remat", "predict_test")
REPO = Path(__file__).resolve().parents[2]
# Config fields a finished run may be extended in (the trainer's config decides when).
GROWABLE = ("epochs", "max_steps")

NEW, RESUME, FINISHED = "new", "resume", "finished"
SAYS = {NEW: "would train from scratch", RESUME: "would resume the run",
        FINISHED: "holds this run, finished; kept (pass --restart to train it again)"}


class RunPlan(NamedTuple):
    data: Data      # loaded and split as config.data says
    weights: dict   # shared.runs.presets.describe_preset
    state: str      # NEW or RESUME


def plan_run(trainer: str, config) -> RunPlan | None:
    """The start of both trainers: load the data, checksum the weights, decide what the run
    directory means for this config. None when nothing is left to do (a --check, or this very
    run found finished); RunStateError / DataError on bad input. Writes nothing. `config` has
    data, preset, run_dir, restart, check and to_dict(), as both TrainConfigs do."""
    data = load(config.data)
    weights = describe_preset(config.preset)
    state = run_dir_state(config.run_dir, trainer=trainer, config=config.to_dict(),
                          weights=weights, data_sha256=data.describe()["sha256"],
                          restart=config.restart, extends=getattr(config, "extends", None))
    if report_state(trainer, config.run_dir, state, config.check):
        return None
    return RunPlan(data, weights, state)


def report_state(trainer: str, run_dir: Path, state: str, check: bool) -> bool:
    """Print what the run directory means for this request; True when nothing is left to do
    (a --check, or a finished run kept)."""
    if check or state == FINISHED:
        prefix = "check passed: " if check else ""
        print(f"{trainer}: {prefix}{run_dir} {SAYS[state]}", flush=True)
        return True
    return False


class RunStateError(ValueError):
    """A run directory that cannot be used with the requested inputs; says what to do."""


def flatten(config: dict, prefix: str = "") -> dict:
    """{'lora.rank': 16, ...}: nested config sections as dotted keys."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_fields(recorded: dict, requested: dict) -> list[str]:
    """Dotted names of the result-relevant fields that differ."""
    before, after = flatten(recorded), flatten(requested)
    missing = object()
    return [key for key in sorted(set(before) | set(after))
            if key.rpartition(".")[2] not in RESULT_NEUTRAL
            and before.get(key, missing) != after.get(key, missing)]


def config_differences(recorded: dict, requested: dict) -> list[str]:
    """'field recorded -> requested' for every result-relevant field that differs."""
    before, after = flatten(recorded), flatten(requested)
    changed = []
    for key in changed_fields(recorded, requested):
        shown = repr(before[key]) if key in before else "(not recorded)"
        changed.append(f"{key} {shown} -> {repr(after[key]) if key in after else '(none)'}")
    return changed


def input_differences(manifest: dict, *, config: dict, weights: dict,
                      data_sha256: dict) -> list[str]:
    """Everything that makes `manifest`'s run another run than the one requested."""
    changed = config_differences(manifest.get("config") or {}, config)
    if (manifest.get("weights") or {}).get("sha256") != weights.get("sha256"):
        changed.append(f"weights checksum {str((manifest.get('weights') or {}).get('sha256'))[:12]}"
                       f" -> {str(weights.get('sha256'))[:12]} (other files at the preset)")
    if (manifest.get("data") or {}).get("sha256") != data_sha256:
        changed.append("data files' checksums (train.csv, test.csv or the extra rows changed)")
    return changed


def read_manifest(run_dir: Path) -> dict | None:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunStateError(f"{path}: not valid JSON ({err}); pass --restart to start the run "
                            f"over, or a new --run-dir") from None


def run_dir_state(run_dir: Path, *, trainer: str, config: dict, weights: dict,
                  data_sha256: dict, restart: bool, extends=None) -> str:
    """NEW, RESUME or FINISHED for this request, or RunStateError; writes nothing.

    With `restart`, any run directory of this trainer counts as NEW (clear_run_dir empties it
    once every other check has passed). `extends(recorded_config) -> bool` (the trainer
    config's) lets a finished run that differs only in GROWABLE fields resume."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunStateError(f"--run-dir {run_dir}: is a file; pass a folder")
    if not (run_dir / MANIFEST).is_file():
        # A trainer's lock and empty folders (a new run killed before its manifest) are not
        # files of a run.
        if run_dir.is_dir() and any(path.is_file() and path != run_dir / LOCK
                                    for path in run_dir.rglob("*")):
            raise RunStateError(f"--run-dir {run_dir}: folder holds files but no run; pass a "
                                f"new or empty folder")
        return NEW
    try:
        manifest = read_manifest(run_dir)
    except RunStateError:
        if restart:  # a damaged run of unknown kind: --restart may clear it
            return NEW
        raise
    if manifest.get("trainer") != trainer:
        raise RunStateError(f"--run-dir {run_dir}: holds a {manifest.get('trainer')} run; pass "
                            f"a new folder")
    if restart:
        return NEW
    changed = input_differences(manifest, config=config, weights=weights,
                                data_sha256=data_sha256)
    finished = manifest.get("status") == "finished"
    recorded = manifest.get("config") or {}
    if (changed and finished and extends is not None and extends(recorded)
            and set(changed_fields(recorded, config)) <= set(GROWABLE)
            and len(changed) == len(changed_fields(recorded, config))):  # same weights and data
        return RESUME  # extended: trains on from its last checkpoint
    if changed:
        what = "a finished run" if finished else "an unfinished run"
        raise RunStateError(f"--run-dir {run_dir}: holds {what} with other inputs "
                            f"({'; '.join(changed)}); pass --restart to train it again from "
                            f"scratch, or a new --run-dir")
    return FINISHED if finished else RESUME


def clear_run_dir(run_dir: Path) -> None:
    """Empty a run directory for --restart: no stale checkpoint, backup or output survives
    (the lock of the run that clears it stays)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def code_version() -> dict:
    """The project's git commit (and whether the work tree had changes) for the manifest."""
    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True,
                                    text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
