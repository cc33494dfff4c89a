"""A study's evidence, to commit: study.json, the report, and each finished run's manifest,
dev curve, history and validation predictions — what the report is rebuilt from
(`python -m shared.evaluation.study_report DEST`), without checkpoints, adapters, embeddings or
logs (run directories are large and stay out of git).

    python -m shared.jobs.study_export runs/study_minilm results/study_minilm
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from shared.cli import exit_on_bad_input
from shared.runs.run_dir import EVALS, HISTORY, MANIFEST, PREDICTIONS

STUDY_JSON, REPORT = "study.json", "report"
RUN_FILES = (MANIFEST, EVALS, HISTORY, PREDICTIONS)
SKIPPED_DIRS = ("checkpoints", "best", "adapter", "logs")


def finished(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("status") == "finished"
    except (OSError, ValueError):
        return False


def ignored(folder: str, names: list[str]) -> set[str]:
    """shutil.copytree's filter: a run directory keeps RUN_FILES if it finished, nothing if
    not; the study folder keeps study.json and the report."""
    folder = Path(folder)
    if Path(folder).name == REPORT:
        return set()
    if MANIFEST in names:
        keep = set(RUN_FILES) if finished(folder) else set()
        return set(names) - keep
    return {name for name in names if name in SKIPPED_DIRS
            or ((folder / name).is_file() and name != STUDY_JSON)}


def export(study_dir: Path, dest: Path) -> None:
    if not (study_dir / STUDY_JSON).is_file():
        raise FileNotFoundError(f"{study_dir / STUDY_JSON}: missing; point at the --out folder "
                                f"of python -m shared.jobs.study")
    if dest.exists() and not dest.is_dir():
        raise ValueError(f"{dest}: is a file; pass a folder to copy the evidence into")
    shutil.copytree(study_dir, dest, ignore=ignored, dirs_exist_ok=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.jobs.study_export",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path, help="the study's --out folder")
    parser.add_argument("dest", type=Path, help="where to copy the evidence (e.g. results/...)")
    args = parser.parse_args(argv)
    with exit_on_bad_input():
        export(args.study_dir, args.dest)
    print(f"{args.dest}: study.json, the report and the finished runs' files")


if __name__ == "__main__":
    main()
