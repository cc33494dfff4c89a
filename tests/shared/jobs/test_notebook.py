"""The Kaggle notebook's commands stay on tested code paths: it cannot run here (no GPU, TPU or
model hub), so each `!python -m ...` line it holds is parsed by the command it calls, and the
compare lines are expanded into both trainers' configs."""

import json
import re
import shlex
from pathlib import Path

import pytest

from jax_lora.config import parse_config as jax_config
from shared.data.prepare import parse_sources
from shared.jobs import compare
from shared.jobs.compare import parse_args, trainer_commands
from tf_baseline.config import parse_config as tf_config

NOTEBOOK = Path(__file__).resolve().parents[3] / "kaggle" / "watson_compare.ipynb"
# What the notebook's Python variables hold on Kaggle (preset folders attached or not).
VARIABLES = {"PRESET": "bert_base_multi", "XLMR_PRESET": "xlm_roberta_base_multi",
             "EXTRA": "multi_nli:train[:20000],xnli:validation",
             "EXTRA_FLAGS": "--extra-train {extra}"}


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
