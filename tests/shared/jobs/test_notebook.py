"""The Kaggle notebook: executed top to bottom in a kernel, every cell as a user runs it, with
stand-ins for what only Kaggle has (the repository as a Dataset, the model folders, pip); and
each `!python -m ...` line it holds parsed by the command it calls with Kaggle's values (the
models hub and the competition data are not here), the compare lines expanded into both
trainers' configs."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from jax_lora.config import parse_config as jax_config
from shared.data.prepare import parse_sources
from shared.jobs import compare
from shared.jobs.compare import parse_args, trainer_commands
from shared.runs.run_dir import read_run
from tests.xlmr_fixtures import train_sentencepiece, write_tiny_xlmr_hf
from tf_baseline.config import parse_config as tf_config

REPO = Path(__file__).resolve().parents[3]
NOTEBOOK = REPO / "kaggle" / "watson_compare.ipynb"
# What the notebook's Python variables hold on Kaggle (preset folders attached or not).
VARIABLES = {"PRESET": "bert_base_multi", "XLMR_PRESET": "xlm_roberta_base_multi",
             "EXTRA": "multi_nli:train[:20000],xnli:validation",
             "EXTRA_FLAGS": "--extra-train {extra}", "QUICK": ""}
# The run's smallest settings: 120 sample rows (84 train, 36 validation), one epoch, 32 tokens.
QUICK = "--limit 120 --epochs 1 --sequence-length 32 --quiet"
# pip, standing in: records how the notebook calls it and from where, installs nothing (the
# test must not touch the environment it runs in).
PIP_STAND_IN = """#!/bin/sh
echo "$(pwd): $*" >> "$PIP_LOG"
"""


def notebook_commands() -> list[str]:
    """Every shell line (`!python -m ...`, continuation lines joined) of the code cells."""
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    source = source.replace("\\\n", " ")
    return [line.strip()[1:] for line in source.splitlines()
            if line.strip().startswith("!python -m ")]


def expand(command: str, extra: Path) -> list[str]:
    values = {name: value.format(extra=extra) for name, value in VARIABLES.items()}
    return shlex.split(re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], command))


def test_the_notebook_runs_compare_prepare_and_contamination():
    modules = [command.split()[2] for command in notebook_commands()]
    assert modules.count("shared.jobs.compare") == 2  # bert_base_multi, then XLM-R
    assert {"shared.data.prepare", "shared.contamination"} <= set(modules)


@pytest.mark.parametrize("index", [0, 1])
def test_each_compare_line_gives_both_trainers_valid_configs(index, extra_train, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(compare, "KAGGLE_DATA_DIR", tmp_path)  # compare's Kaggle defaults
    compares = [c for c in notebook_commands() if "shared.jobs.compare" in c]
    argv = expand(compares[index], extra_train)[3:]
    commands = trainer_commands(parse_args(argv))
    jax = jax_config(commands["jax_lora"][2:])
    tf = tf_config(commands["tf_full"][2:])
    assert jax.data == tf.data and jax.data.extra_train == extra_train
    if index == 1:  # the XLM-R recipe: as the notebook's markdown states it
        assert tf.preset == jax.preset == "xlm_roberta_base_multi"
        assert tf.sequence_length == jax.sequence_length == 256
        assert (jax.method, jax.lora.rank, jax.lora.targets, jax.lr) == (
            "lora", 16, ("query", "value"), 5e-4)
        assert jax.data.dev_fraction == 0.1 and jax.patience == 5
        assert tf.batch_per_replica == 16 and jax.batch_per_device == 16
        assert tf.epochs == jax.epochs == 3  # the trainers' own default on Kaggle


def test_the_prepare_line_parses(tmp_path):
    line = next(c for c in notebook_commands() if "shared.data.prepare" in c)
    argv = expand(line, tmp_path)
    sources = parse_sources(argv[argv.index("--extra-train") + 1])
    assert [s.spec for s in sources] == VARIABLES["EXTRA"].split(",")


def repository_copy(destination: Path) -> None:
    """This checkout's files as a Dataset of it holds them: tracked and new ones, not what git
    ignores (runs, venvs) nor .git."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the work tree is gone
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)


def test_the_notebook_runs_top_to_bottom(tiny_hf_preset, tmp_path, monkeypatch):
    """/kaggle/input stands in as a copy of this repository and the tiny random BERT and XLM-R
    at the model paths the notebook globs; without the competition folder the trainers read the
    embedded sample. Only the parameters cell's values are the test's (QUICK: the smallest
    runs); a shell line's failure shows in the files it did not write."""
    inputs, working = tmp_path / "input", tmp_path / "working"
    repository_copy(inputs / "watson-peft")
    shutil.copytree(tiny_hf_preset, inputs / "bert/keras/bert_base_multi/1")
    write_tiny_xlmr_hf(inputs / "xlm_roberta/keras/xlm_roberta_base_multi/1",
                       train_sentencepiece(tmp_path / "sample.spm"))
    working.mkdir()
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pip").write_text(PIP_STAND_IN)
    (tmp_path / "bin" / "pip").chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tmp_path / "bin"),
                                                str(Path(sys.executable).parent),
                                                os.environ["PATH"]]))
    monkeypatch.setenv("PIP_LOG", str(tmp_path / "pip.log"))
    # Trainers compile with LLVM optimisations off: much faster here, as in compare_runs.
    monkeypatch.setenv("XLA_FLAGS", (os.environ.get("XLA_FLAGS", "")
                                     + " --xla_backend_optimization_level=0").strip())
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, cell in enumerate(notebook.cells)
              if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(at + 1, nbformat.v4.new_code_cell(
        f"INPUT = {str(inputs)!r}\nWORKING = {str(working)!r}\nQUICK = {QUICK!r}"))
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    repo = working / "watson-peft"
    assert (tmp_path / "pip.log").read_text().splitlines() == [
        f"{repo}: install -q -r requirements-tf.txt -r requirements-jax.txt",
        f"{repo}: install -q --no-deps -e ."]
    expected = {"kaggle": {"tf_full", "jax_lora", "jax_probe"},
                "kaggle_xlmr": {"tf_full", "jax_lora"}}
    for out, trainers in expected.items():
        runs = {p.parent.name for p in (repo / "runs" / out).glob("*/manifest.json")}
        assert runs == trainers, out
        for name in trainers:
            assert read_run(repo / "runs" / out / name).manifest["status"] == "finished"
    shown = [output["data"]["text/markdown"] for cell in notebook.cells
             for output in cell.get("outputs", []) if "text/markdown" in output.get("data", {})]
    assert shown == [(repo / "runs" / out / "report" / "report.md").read_text()
                     for out in expected]
    submission = pd.read_csv(working / "submission.csv")
    assert list(submission.columns) == ["id", "prediction"] and len(submission) == 87
