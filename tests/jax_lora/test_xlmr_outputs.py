"""Every jax_lora output for XLM-RoBERTa (issue #20) on the tiny XLM-R of the `xlmr_reference`
fixture: the merged keras-hub preset (jax_lora.export) loaded back by keras-hub in TensorFlow,
the PEFT-format adapter for XLMRobertaForSequenceClassification and back, and a tf_baseline
XLM-R run loaded by jax_lora.inference. TensorFlow only ever runs in subprocesses."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from jax_lora.adapter import ADAPTER, adapter_filter, load_adapter, save_adapter
from jax_lora.checkpoint import flat_arrays, replace_arrays
from jax_lora.export import ExportError, export_preset
from jax_lora.inference import load_run
from jax_lora.lora import LORA_TARGETS, LoraConfig
from jax_lora.peft_format import load_peft, save_peft
from jax_lora.peft_format import main as peft_main
from jax_lora.peft_names import HFClassifier
from jax_lora.weights import load_head, load_pretrained
from jax_lora.xlmr_tokenizer import XLMRobertaTokenizer
from shared.data.watson import SAMPLE_DATA_DIR, load_train
from shared.runs.run_dir import read_run
from tests.helpers import trainer_command
from tests.jax_lora.helpers import recorded_gap

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5  # |logit| differences between Flax and keras-hub, as the other parity tests
P = "base_model.model."
# Hugging Face's name of each of our targets inside roberta.encoder.layer.<i>, written out here
# independently of the code (XLMRobertaLayer names its modules as BertLayer).
HF_PARTS = {"query": "attention.self.query", "key": "attention.self.key",
            "value": "attention.self.value", "attention_output": "attention.output.dense",
            "ffn_in": "intermediate.dense", "ffn_out": "output.dense"}
NUM_LAYERS, HIDDEN = 2, 32  # tests/xlmr_fixtures.py TINY_XLMR_CONFIG


def _logits(model, batch) -> np.ndarray:
    return np.asarray(nnx.jit(lambda m: m(batch["token_ids"], batch["segment_ids"],
                                          batch["padding_mask"]))(model))


# ---------------------------------------------------------------- keras-hub preset export

# name: (method, which preset of xlmr_reference it starts from). The HF folder's tokenizer is
# its tokenizer.json: the export must find the sentencepiece.bpe.model beside it.
EXPORTS = {"lora": ("lora", "keras"), "dora": ("dora", "hf"), "full": ("full", "keras"),
           "probe": ("probe", "keras")}


@pytest.fixture(scope="module")
def exports(xlmr_reference, tmp_path_factory) -> Path:
    """keras_reference.py xlmr_export for every EXPORTS entry, in one TensorFlow process."""
    root = tmp_path_factory.mktemp("xlmr_export")
    setups = [f"{name}={method}={xlmr_reference[preset]}"
              for name, (method, preset) in EXPORTS.items()]
    done = subprocess.run([sys.executable, str(REPO / "tests" / "jax_lora" / "keras_reference.py"),
                           "xlmr_export", str(root), *setups], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return root


@pytest.mark.parametrize("name", list(EXPORTS))
def test_exported_xlmr_preset_gives_the_flax_logits_in_keras_hub(exports, xlmr_reference, name):
    method, preset = EXPORTS[name]
    folder, result = exports / name, dict(np.load(exports / f"{name}.npz"))
    assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5", "tokenizer.json",
            "preprocessor.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "config.json").read_text())["class_name"] == "XLMRobertaBackbone"
    assert json.loads((folder / "task.json").read_text())["class_name"] == \
        "XLMRobertaTextClassifier"
    spm = xlmr_reference["spm"].read_bytes()  # the SentencePiece model both folders hold
    assert (folder / "assets" / "tokenizer" / "vocabulary.spm").read_bytes() == spm
    flax_logits, mask = result["flax_logits"], result["padding_mask"]
    lengths = mask.sum(axis=1)
    assert (lengths < mask.shape[1]).sum() >= 3 and (lengths == mask.shape[1]).sum() >= 3
    from_ids = float(np.abs(result["tf_logits_from_ids"] - flax_logits).max())
    # From raw text through the exported preprocessor: the same ids, so the same logits.
    from_text = float(np.abs(result["tf_logits_from_text"] - flax_logits).max())
    print(f"{name}: max |keras-hub - Flax| logits: ids {from_ids:.2e}, text {from_text:.2e}")
    np.testing.assert_array_equal(result["tf_token_ids_from_text"], result["token_ids"])
    assert np.abs(flax_logits).max() > 0.1
    assert from_ids <= TOLERANCE and from_text <= TOLERANCE
    # What the export carries is the trained model: its logits are not those of the same
    # model before its trainable leaves moved (same preset, same seed).
    lora = LoraConfig(rank=4, alpha=8.0, targets=LORA_TARGETS if method in ("lora", "dora")
                      else (), dora=method == "dora")
    batch = {**{k: result[k] for k in ("token_ids", "padding_mask")},
             "segment_ids": np.zeros_like(result["token_ids"])}
    untrained = load_pretrained(str(xlmr_reference[preset]), lora, seed=3).model
    assert np.abs(_logits(untrained, batch) - flax_logits).max() > 1e-2
    # The folder is a valid XLM-R --preset for jax_lora too (head from task.weights.h5).
    reloaded = load_pretrained(str(folder), LoraConfig(targets=()))
    assert isinstance(reloaded.tokenizer, XLMRobertaTokenizer)
    load_head(reloaded.model, str(folder))
    assert np.abs(_logits(reloaded.model, batch) - flax_logits).max() <= TOLERANCE


def test_export_refuses_mean_pooling_and_a_tokenizer_without_its_sentencepiece_model(
        xlmr_reference, tmp_path, tensorflow_blocked):
    """Refused before keras-hub is imported (importing it fails here)."""
    mean = load_pretrained(str(xlmr_reference["keras"]), LoraConfig(targets=()), pooling="mean")
    with pytest.raises(ExportError, match="XLMRobertaTextClassifier classifies from <s>"):
        export_preset(mean.model, mean.tokenizer, tmp_path / "mean")
    json_only = shutil.copytree(xlmr_reference["hf"], tmp_path / "json_only")
    (json_only / "sentencepiece.bpe.model").unlink()
    pretrained = load_pretrained(str(json_only), LoraConfig(targets=()))
    with pytest.raises(ExportError, match="sentencepiece.bpe.model: not found") as error:
        export_preset(pretrained.model, pretrained.tokenizer, tmp_path / "json")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "mean").exists() and not (tmp_path / "json").exists()


# ---------------------------------------------------------------- PEFT format

def _expected_keys(lora: LoraConfig) -> set[str]:
    """PEFT's tensor names for `lora` on the tiny XLMRobertaForSequenceClassification: the
    adapters under roberta., the head (modules_to_save `classifier`) as its two layers."""
    keys = {f"{P}classifier.{layer}.{leaf}" for layer in ("dense", "out_proj")
            for leaf in ("weight", "bias")}
    leaves = ["lora_A.weight", "lora_B.weight"] + ["lora_magnitude_vector"] * lora.dora
    return keys | {f"{P}roberta.encoder.layer.{i}.{HF_PARTS[t]}.{leaf}"
                   for i in range(NUM_LAYERS) for t in lora.targets for leaf in leaves}


PEFT_SETUPS = {  # name: (LoraConfig, --method, target_modules expected in adapter_config.json)
    "lora": (LoraConfig(rank=4, alpha=8.0, targets=("query", "value")), "lora",
             ["query", "value"]),
    "dora": (LoraConfig(rank=2, alpha=3.0, targets=LORA_TARGETS, rslora=True, dora=True,
                        dropout=0.1), "dora",
             sorted(["query", "key", "value", "attention.output.dense", "intermediate.dense",
                     "output.dense"])),
}


@pytest.fixture(scope="module")
def peft_batch(xlmr_reference):
    frame = load_train(SAMPLE_DATA_DIR).head(6)
    tokenizer = load_pretrained(str(xlmr_reference["hf"]), LoraConfig(targets=())).tokenizer
    return tokenizer(list(frame["premise"]), list(frame["hypothesis"]), 48)


@pytest.fixture(scope="module", params=list(PEFT_SETUPS))
def peft_export(request, xlmr_reference, peft_batch, tmp_path_factory):
    """PEFT_SETUPS[name] on the tiny XLM-R folder, every adapter leaf and the head moved off
    its initial value, written with save_peft."""
    lora, method, targets = PEFT_SETUPS[request.param]
    model = load_pretrained(str(xlmr_reference["hf"]), lora).model
    state = nnx.state(model, adapter_filter(lora))
    rng = np.random.default_rng(0)
    arrays = {name: (np.asarray(v) * (1 + 0.2 * rng.standard_normal(v.shape))
                     + 0.2 * rng.standard_normal(v.shape)).astype(np.float32)
              for name, v in flat_arrays(state).items()}
    nnx.update(model, replace_arrays(state, arrays, "randomize"))
    out = tmp_path_factory.mktemp("peft") / request.param
    save_peft(model, out, base_model_name_or_path=str(xlmr_reference["hf"]), method=method)
    return types.SimpleNamespace(lora=lora, targets=targets, model=model, out=out,
                                 logits=_logits(model, peft_batch))


def test_peft_export_names_the_xlmr_classifiers_modules(peft_export, xlmr_reference):
    lora, out = peft_export.lora, peft_export.out
    with safe_open(str(out / "adapter_model.safetensors"), framework="numpy") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    assert set(tensors) == _expected_keys(lora) and metadata == {"format": "pt"}
    ours = flat_arrays(nnx.state(peft_export.model, adapter_filter(lora)))
    layer = f"{P}roberta.encoder.layer.1.attention.self.value"
    assert tensors[f"{layer}.lora_A.weight"].shape == (lora.rank, HIDDEN)
    np.testing.assert_array_equal(tensors[f"{layer}.lora_B.weight"],
                                  np.asarray(ours["layers.1.attention.value.lora_b"]).T)
    for layer, shape in (("dense", (HIDDEN, HIDDEN)), ("out_proj", (3, HIDDEN))):
        weight = tensors[f"{P}classifier.{layer}.weight"]  # torch's [out, in]
        assert weight.shape == shape
        np.testing.assert_array_equal(weight, np.asarray(ours[f"head.{layer}.kernel"]).T)
        np.testing.assert_array_equal(tensors[f"{P}classifier.{layer}.bias"],
                                      np.asarray(ours[f"head.{layer}.bias"]))
    if lora.dora:
        np.testing.assert_array_equal(
            tensors[f"{P}roberta.encoder.layer.0.output.dense.lora_magnitude_vector"],
            np.asarray(ours["layers.0.ffn_out.lora_magnitude"]))
    config = json.loads((out / "adapter_config.json").read_text())
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "use_dora",
                                   "use_rslora", "target_modules", "modules_to_save",
                                   "base_model_name_or_path")} == {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": lora.rank, "lora_alpha": lora.alpha,
        "use_dora": lora.dora, "use_rslora": lora.rslora, "target_modules": peft_export.targets,
        "modules_to_save": ["classifier", "score"],  # no pooler: XLM-R's head reads <s>
        "base_model_name_or_path": str(xlmr_reference["hf"])}
    readme = (out / "README.md").read_text()
    assert "XLMRobertaForSequenceClassification.from_pretrained(" in readme
    assert "Bert" not in readme and "hidden_act" not in readme  # erf GELU on both sides


def test_peft_round_trip_gives_identical_logits(peft_export, xlmr_reference, peft_batch):
    back = load_peft(peft_export.out)  # the base from base_model_name_or_path
    assert back.model.lora == peft_export.lora and back.config.architecture == "xlm_roberta"
    assert np.abs(peft_export.logits).max() > 0.1
    np.testing.assert_array_equal(_logits(back.model, peft_batch), peft_export.logits)


def test_peft_rules_on_xlmr_module_names(xlmr_reference, tiny_hf_preset, tmp_path):
    """`dense` adapts the three dense projections of each layer, not classifier.dense (inside
    the saved classifier); mean pooling is refused; a BERT adapter does not load on XLM-R."""
    hf = HFClassifier("xlm_roberta", NUM_LAYERS)
    assert hf.selected({"target_modules": ["dense"]}) == {
        f"roberta.encoder.layer.{i}.{part}" for i in range(NUM_LAYERS)
        for part in ("attention.output.dense", "intermediate.dense", "output.dense")}
    mean = load_pretrained(str(xlmr_reference["hf"]), LoraConfig(rank=2), pooling="mean").model
    with pytest.raises(ValueError, match="XLMRobertaForSequenceClassification classifies from "
                                         "<s>") as error:
        save_peft(mean, tmp_path / "mean", base_model_name_or_path="b", method="lora")
    assert "\n" not in str(error.value) and not (tmp_path / "mean").exists()
    bert = load_pretrained(str(tiny_hf_preset), LoraConfig(rank=2)).model
    save_peft(bert, tmp_path / "bert", base_model_name_or_path=str(tiny_hf_preset),
              method="lora")
    with pytest.raises(ValueError, match=r"no tensor base_model\.model\.classifier\.out_proj\."
                                         r"weight; .*XLMRobertaForSequenceClassification"):
        load_peft(tmp_path / "bert", str(xlmr_reference["hf"]))


def test_the_cli_exports_an_xlmr_run_and_refuses_its_mean_pooling(xlmr_reference, peft_batch,
                                                                   tmp_path, capsys):
    """python -m jax_lora.peft_format on run adapters (adapter.json names the architecture)."""
    base = str(xlmr_reference["hf"])
    for run, pooling in (("cls", "cls"), ("mean", "mean")):
        pretrained = load_pretrained(base, LoraConfig(rank=2), pooling=pooling)
        save_adapter(tmp_path / run / ADAPTER, pretrained.model, pretrained.source,
                     method="lora")
    peft_main(["--run-dir", str(tmp_path / "cls"), "--out", str(tmp_path / "cls_peft")])
    back = load_peft(tmp_path / "cls_peft")
    expected = _logits(load_adapter(tmp_path / "cls" / ADAPTER).model, peft_batch)
    np.testing.assert_array_equal(_logits(back.model, peft_batch), expected)
    with pytest.raises(SystemExit):
        peft_main(["--run-dir", str(tmp_path / "mean"), "--out", str(tmp_path / "mean_peft")])
    err = capsys.readouterr().err.strip()
    assert "XLMRobertaForSequenceClassification classifies from <s>" in err and "\n" not in err




def test_peft_writes_our_names_and_loads_our_folder_to_our_logits(hf, peft_export,
                                                                  xlmr_reference, peft_batch,
                                                                  tmp_path):
    """With torch + PEFT installed: PEFT's own folder for the same setup has our tensor names
    and shapes, and our folder on XLMRobertaForSequenceClassification gives our logits."""
    lora, base = peft_export.lora, str(xlmr_reference["hf"])
    config = hf.peft.LoraConfig(task_type="SEQ_CLS", r=lora.rank, lora_alpha=lora.alpha,
                                lora_dropout=lora.dropout, target_modules=peft_export.targets,
                                use_rslora=lora.rslora, use_dora=lora.dora)
    hf.peft.get_peft_model(hf.XLMR.from_pretrained(base, num_labels=3),
                           config).save_pretrained(str(tmp_path))
    with safe_open(str(tmp_path / "adapter_model.safetensors"), framework="numpy") as f:
        theirs = {k: f.get_slice(k).get_shape() for k in f.keys()}
    with safe_open(str(peft_export.out / "adapter_model.safetensors"), framework="numpy") as f:
        assert theirs == {k: f.get_slice(k).get_shape() for k in f.keys()}
    model = hf.peft.PeftModel.from_pretrained(hf.XLMR.from_pretrained(base, num_labels=3),
                                              str(peft_export.out)).eval()
    with hf.torch.no_grad():
        torch_logits = model(input_ids=hf.torch.tensor(peft_batch["token_ids"]).long(),
                             attention_mask=hf.torch.tensor(peft_batch["padding_mask"]).long()
                             ).logits.numpy()
    assert np.abs(torch_logits - peft_export.logits).max() <= TOLERANCE


# ---------------------------------------------------------------- a tf_baseline XLM-R run

@pytest.fixture(scope="module")
def tf_xlmr_run(xlmr_reference, tmp_path_factory) -> Path:
    """tf_baseline trained on the tiny XLM-R folder, as a user runs it (a TF subprocess)."""
    run_dir = tmp_path_factory.mktemp("tf_xlmr") / "tf_xlmr"
    done = subprocess.run(trainer_command("tf_baseline", "--preset", xlmr_reference["hf"],
                                          "--limit", "160", "--epochs", "1",
                                          "--batch-per-replica", "8", "--sequence-length", "32",
                                          "--quiet", "--run-dir", run_dir),
                          cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_a_tf_xlmr_run_loads_and_reproduces_its_predictions(tf_xlmr_run, tensorflow_blocked):
    """Flax alone: importing TensorFlow fails in here."""
    run = read_run(tf_xlmr_run)
    loaded = load_run(tf_xlmr_run)
    assert isinstance(loaded.tokenizer, XLMRobertaTokenizer) and loaded.sequence_length == 32
    assert loaded.model.config.architecture == "xlm_roberta"
    reproduced = recorded_gap(loaded, run)
    print(f"tf_baseline XLM-R run in Flax: max |dp| vs predictions.csv {reproduced.gap:.1e}")
    assert reproduced.gap <= TOLERANCE
    assert np.ptp(reproduced.expected, axis=0).max() > 1e-3  # the check can fail


def test_the_apps_attention_page_reads_an_xlmr_run(tf_xlmr_run):
    """app/pages.py on an XLM-R run (streamlit's AppTest): the truncation note counts XLM-R's
    four special tokens, the page names <s> and <unk> (escaped for markdown), one heat-map."""
    from streamlit.testing.v1 import AppTest

    from app import views

    premise = " ".join(load_train(SAMPLE_DATA_DIR)["premise"].iloc[:2])  # cut at 32 tokens
    hypothesis = "It is a house ☃"  # ☃: not in the tiny SentencePiece model
    tokens = views.pair_length(load_run(tf_xlmr_run).tokenizer, premise, hypothesis)
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=300)
    at.session_state["root"] = str(tf_xlmr_run.parent)
    at.session_state["premise"], at.session_state["hypothesis"] = premise, hypothesis
    at.run()
    at.sidebar.radio(key="page").set_value("Attention").run()
    assert not at.exception and not at.error
    assert f"the pair has {tokens} tokens; this run reads 32" in at.caption[0].value
    markdown = at.markdown[0].value
    assert "**32 tokens**, 1 of them &lt;unk&gt;" in markdown
    assert "&lt;s&gt; attention, layer 2" in markdown
    assert len(at.image) == 1
