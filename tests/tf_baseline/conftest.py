"""A tiny random BERT preset built once per session, and two-replica runs of train.py on it.

TensorFlow fixes its logical devices when it first initialises them, so the runs under
MirroredStrategy over two logical CPUs (`--cpu-replicas 2`) are subprocesses; everything
else runs in this process, on one device.
"""

import collections
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pandas as pd
import pytest

from shared.data.watson import SAMPLE_DATA_DIR
from tests.helpers import trainer_command

REPO = Path(__file__).resolve().parents[2]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TINY_BACKBONE = dict(num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                     max_sequence_length=64)
TINY_SEQUENCE_LENGTH = 32
# 160 sample rows: 112 train (7 steps of 16) / 48 validation, all 87 test rows. A high learning
# rate so two epochs visibly move the tiny model.
TINY_FLAGS = ["--epochs", "2", "--batch-per-replica", "8", "--limit", "160",
              "--lr-per-replica", "1e-3", "--quiet"]


def write_vocabulary(path: Path) -> None:
    """WordPiece vocabulary of the sample: frequent words, then every character as a piece,
    so no text maps to [UNK] wholesale."""
    frame = pd.read_csv(SAMPLE_DATA_DIR / "train.csv", dtype=str, keep_default_na=False)
    text = " ".join(frame["premise"].str.lower()) + " " + " ".join(frame["hypothesis"].str.lower())
    words = [word for word, _ in collections.Counter(re.findall(r"\w+", text)).most_common(300)]
    chars = sorted(set(text) - set(" "))
    vocabulary = list(dict.fromkeys(SPECIAL_TOKENS + words + chars + ["##" + c for c in chars]))
    path.write_text("\n".join(vocabulary) + "\n", encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory) -> Path:
    """A keras-hub BERT backbone + preprocessor preset with random weights."""
    import keras
    import keras_hub

    root = tmp_path_factory.mktemp("tiny")
    write_vocabulary(root / "vocab.txt")
    keras.utils.set_random_seed(1)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=str(root / "vocab.txt"), lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=TINY_SEQUENCE_LENGTH)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=tokenizer.vocabulary_size(),
                                             **TINY_BACKBONE)
    backbone.save_to_preset(str(root / "preset"))
    preprocessor.save_to_preset(str(root / "preset"))
    return root / "preset"


# Runs train.py's `train` with a callback that SIGKILLs the process in epoch 2, batch 4.
KILL_IN_EPOCH_2 = textwrap.dedent("""
    import os, signal, sys
    import keras
    from tf_baseline.config import parse_config
    from tf_baseline.train import train

    class KillInEpoch2(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == 1 and batch == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    train(parse_config(sys.argv[1:]), callbacks=[KillInEpoch2()])
""")


def _start(args, log: Path, script=None) -> subprocess.Popen:
    """`python tf_baseline/train.py ARGS` (or `python -c SCRIPT ARGS`) from the repo root."""
    command = ([sys.executable, "-c", script, *map(str, args)] if script
               else trainer_command("tf_baseline", *args))
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen(command, cwd=REPO, stdout=out, stderr=err, text=True)


def _finish(process: subprocess.Popen, log: Path, check=True) -> subprocess.CompletedProcess:
    process.wait(timeout=900)
    result = subprocess.CompletedProcess(process.args, process.returncode,
                                         log.with_suffix(".out").read_text(),
                                         log.with_suffix(".err").read_text())
    if check and result.returncode != 0:
        raise AssertionError(f"train.py exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def run_train(tmp_path_factory):
    """Runs train.py in a subprocess and waits for it."""
    logs = tmp_path_factory.mktemp("logs")

    def run(args, *, check=True) -> subprocess.CompletedProcess:
        log = logs / f"run{len(list(logs.glob('*.out')))}"
        return _finish(_start(args, log), log, check)
    return run


@pytest.fixture(scope="session")
def mirrored_runs(tiny_preset, tmp_path_factory) -> types.SimpleNamespace:
    """Two two-replica runs of the tiny preset on the first 160 sample rows, side by side (most
    of a tiny run is single-threaded tracing): one finished, one SIGKILLed in epoch 2."""
    root = tmp_path_factory.mktemp("mirrored")
    flags = ["--preset", tiny_preset, "--cpu-replicas", "2", *TINY_FLAGS]
    clean = _start(flags + ["--run-dir", root / "clean"], root / "clean")
    killed = _start(flags + ["--run-dir", root / "killed"], root / "killed", KILL_IN_EPOCH_2)
    _finish(clean, root / "clean")
    return types.SimpleNamespace(flags=flags, clean=root / "clean", killed=root / "killed",
                                 killed_result=_finish(killed, root / "killed", check=False))


@pytest.fixture(scope="session")
def mirrored_run(mirrored_runs) -> Path:
    """The finished two-replica run."""
    return mirrored_runs.clean
