"""tf_baseline on XLM-RoBERTa (issue #20): keras-hub's XLMRobertaTextClassifier from a Hugging
Face xlm-roberta folder (keras-hub's converter) and from the run's saved keras-hub preset."""

import json

import numpy as np
import pytest

from shared.data.spec import DataSpec, load
from shared.runs.run_dir import PROB_COLUMNS, read_run
from tests.xlmr_fixtures import train_sentencepiece, write_tiny_xlmr_hf
from tf_baseline.train import main, predict

FLAGS = ["--epochs", "2", "--batch-per-replica", "8", "--limit", "160", "--lr-per-replica",
         "1e-3", "--sequence-length", "32", "--quiet"]


@pytest.fixture(scope="module")
def xlmr_hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("xlmr")
    return write_tiny_xlmr_hf(root / "hf", train_sentencepiece(root / "sample.spm"))


@pytest.fixture(scope="module")
def xlmr_run(xlmr_hf, run_train, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("xlmr_run") / "run"
    run_train(["--preset", xlmr_hf, "--cpu-replicas", "2", *FLAGS, "--run-dir", run_dir])
    return run_dir


def test_an_xlmr_folder_trains_with_keras_hubs_classifier(xlmr_run, xlmr_hf):
    run = read_run(xlmr_run)
    manifest = run.manifest
    assert manifest["status"] == "finished" and manifest["weights"]["kind"] == "hf"
    assert manifest["preprocessing"]["tokenizer"] == "XLMRobertaTokenizer"
    assert manifest["preprocessing"]["lowercase"] is None
    assert manifest["preprocessing"]["text_normalizer"] is None  # SentencePiece's own rules
    assert manifest["devices"]["replicas"] == 2
    hidden = json.loads((xlmr_hf / "config.json").read_text())["hidden_size"]
    # XLM-R's head: dense(H, tanh) then the logits, on top of the backbone; no pooler
    assert manifest["params"]["trainable"] == manifest["params"]["total"]
    assert run.embeddings.shape == (48, hidden)
    assert run.history["train_loss"].iloc[1] < run.history["train_loss"].iloc[0]
    assert run.predictions["id"].tolist() == load(DataSpec(limit=160)).val["id"].tolist()


def test_the_saved_preset_predicts_what_the_run_recorded(xlmr_run):
    # preset/ is a keras-hub XLM-R preset now: the keras_dir path, the trained head included.
    saved = read_run(xlmr_run).predictions
    probs = predict(xlmr_run, load(DataSpec(limit=160)).val)
    np.testing.assert_allclose(probs, saved[list(PROB_COLUMNS)].to_numpy(), rtol=0, atol=1e-6)
    config = json.loads((xlmr_run / "preset" / "config.json").read_text())
    assert config["class_name"] == "XLMRobertaBackbone"


def test_an_unsupported_architecture_is_one_line(xlmr_hf, tmp_path, capsys):
    folder = tmp_path / "gpt"
    folder.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (folder / name).write_bytes((xlmr_hf / name).read_bytes())
    config = json.loads((xlmr_hf / "config.json").read_text()) | {"model_type": "gpt2"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", str(folder), "--run-dir", str(tmp_path / "run"), *FLAGS])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1
    assert "names 'gpt2'; supported: bert, xlm-roberta" in err[0]
    assert not (tmp_path / "run").exists()
