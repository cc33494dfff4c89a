"""A BERT with a SentencePiece tokenizer and no pooler (the multilingual-e5-small family, issue
#30) in jax_lora, on the tiny folder of tests/e5_fixtures.py: the numbers read from config.json
(exact GELU, its LayerNorm epsilon, its dropout), the tokenizer.json's ids, Hugging Face's
forward in float64 numpy, mean pooling by default, and every method through the CLI."""

import shutil

import numpy as np
import pytest

from jax_lora.adapter import load_adapter, read_adapter_meta
from jax_lora.config import parse_config
from jax_lora.lora import LoraConfig
from jax_lora.peft_format import load_peft, main as peft_main, save_peft
from jax_lora.weights import load_pretrained
from jax_lora.xlmr_tokenizer import XLMRobertaTokenizer
from shared.data.watson import SAMPLE_DATA_DIR, load_test, load_train
from shared.runs.encoder import encoder_numbers
from shared.runs.reuse import read_manifest
from tests.e5_fixtures import reference_pooled, write_tiny_e5_hf
from tests.jax_lora.helpers import assert_reloads_to_its_predictions, tokenizer_json_arrays
from tests.jax_lora.trainer_process import run_trainer
from tests.xlmr_fixtures import train_sentencepiece

PREMISES = ["Le chat dort sur le canapé.", "The cat sleeps on the sofa.", "Кошка спит."]
HYPOTHESES = ["Un animal se repose.", "A dog barks.", "Животное отдыхает."]
CLI = ["--data-dir", str(SAMPLE_DATA_DIR), "--limit", "60", "--batch-per-device", "4",
       "--sequence-length", "32", "--quiet", "--no-predict-test"]


@pytest.fixture(scope="module")
def e5(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_e5")
    return write_tiny_e5_hf(root / "hf", train_sentencepiece(root / "sample.spm"))


@pytest.fixture(scope="module")
def hf_peer():
    """torch, peft and transformers where installed (the benchmark peer), else None."""
    try:
        import peft
        import torch
        import transformers
    except ImportError:
        return None
    import types
    return types.SimpleNamespace(torch=torch, peft=peft,
                                 Bert=transformers.BertForSequenceClassification)


@pytest.fixture(scope="module")
def pairs():
    frames = [load_train(SAMPLE_DATA_DIR), load_test(SAMPLE_DATA_DIR)]
    return {field: [text for frame in frames for text in frame[field]]
            for field in ("premise", "hypothesis")}


def test_the_numbers_come_from_config_json(e5, tmp_path):
    numbers = encoder_numbers(str(e5))
    assert (numbers.architecture, numbers.tokenizer, numbers.activation, numbers.pooler,
            numbers.layer_norm_epsilon, numbers.default_pooling) == (
        "bert", "sentencepiece", "gelu", False, 1e-7, "mean")
    tanh = write_tiny_e5_hf(tmp_path / "tanh", e5 / "sentencepiece.bpe.model",
                            hidden_act="gelu_new", hidden_dropout_prob=0.2)
    config = load_pretrained(str(tanh), LoraConfig(), pooling="mean").config
    assert (config.approximate_gelu, config.dropout, config.pooler) == (True, 0.2, False)
    config = load_pretrained(str(tanh), LoraConfig(), pooling="mean", dropout=0.05).config
    assert config.dropout == 0.05


def test_ids_equal_the_folders_tokenizer_json(e5, pairs):
    tokenizer = load_pretrained(str(e5), LoraConfig(), pooling="mean").tokenizer
    assert isinstance(tokenizer, XLMRobertaTokenizer)
    theirs = tokenizer_json_arrays(e5 / "tokenizer.json", pairs, 512, "<pad>")
    ours = tokenizer(pairs["premise"], pairs["hypothesis"], 512)
    for name in ("token_ids", "segment_ids", "padding_mask"):
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    assert not ours["segment_ids"].any()  # XLM-R's tokenizer: token type 0 throughout


def test_forward_equals_hugging_faces_in_float64(e5, pairs):
    pretrained = load_pretrained(str(e5), LoraConfig(), pooling="mean")
    batch = pretrained.tokenizer(pairs["premise"][:12], pairs["hypothesis"][:12], 48)
    out = pretrained.model.encode(batch["token_ids"], batch["segment_ids"],
                                  batch["padding_mask"])
    expected = reference_pooled(e5, batch)
    np.testing.assert_allclose(np.asarray(out["pooled_output"]), expected, atol=1e-5)
    # A reader that ignored the epsilon (BERT's 1e-12) or the GELU (tanh) would be caught.
    assert np.abs(expected).max() > 0.1
    head = pretrained.model.head
    logits = expected @ np.asarray(head.kernel[...]) + np.asarray(head.bias[...])
    np.testing.assert_allclose(np.asarray(out["logits"]), logits, atol=1e-5)


def test_training_a_pooler_that_mean_pooling_never_reads_fails_in_one_line(e5):
    with pytest.raises(ValueError, match="no pooler.*drop --train-pooler"):
        load_pretrained(str(e5), LoraConfig(train_pooler=True), pooling="mean")


def test_the_default_pooling_follows_the_preset(e5, tiny_hf_preset):
    assert parse_config(["--preset", str(e5)]).with_preset_defaults().pooling == "mean"
    assert parse_config(["--preset", str(tiny_hf_preset)]).with_preset_defaults().pooling == "cls"
    assert parse_config(["--preset", str(e5), "--pooling", "mean", "--dropout", "0"]).dropout == 0
    with pytest.raises(ValueError, match="dropout"):
        parse_config(["--preset", str(e5), "--dropout", "1.5"])


def test_every_method_trains_on_the_tiny_e5_through_the_cli(e5, run_env, tmp_path):
    """lora, dora, full, probe, NF4-LoRA and LP->LoRA (from the probe's run), a few steps each:
    each run finishes with mean pooling recorded, and reloads to its own predictions."""
    runs = {"probe": ["--method", "probe"], "lora": [], "dora": ["--method", "dora"],
            "full": ["--method", "full"], "qlora_nf4": ["--base-dtype", "nf4"],
            "lp_lora": ["--init-from", str(tmp_path / "probe")]}
    for name, flags in runs.items():
        run_trainer(e5, tmp_path / name, *CLI, "--max-steps", "3", *flags, env=run_env)
        manifest = assert_reloads_to_its_predictions(tmp_path / name, 1e-5)
        assert manifest["preprocessing"]["tokenizer"] == "sentencepiece"
        assert manifest["model"]["pooling"] == "mean"
        assert manifest["config"]["pooling"] == "mean"
    assert read_adapter_meta(tmp_path / "lora" / "adapter")["pooling"] == "mean"
    # Resume: the same command on a finished run keeps it.
    done = run_trainer(e5, tmp_path / "lora", *CLI, "--max-steps", "3", env=run_env)
    assert "finished" in done.stdout + done.stderr
    assert read_manifest(tmp_path / "lora")["config"]["dropout"] is None


def test_a_moved_folder_is_the_same_preset(e5, tmp_path):
    """The checksums recorded in manifests cover the SentencePiece and tokenizer files."""
    from shared.runs.presets import describe_preset

    copy = shutil.copytree(e5, tmp_path / "copy")
    assert describe_preset(str(copy))["sha256"] == describe_preset(str(e5))["sha256"]
    assert {"sentencepiece.bpe.model", "tokenizer.json", "tokenizer_config.json"} <= set(
        describe_preset(str(e5))["files"])


def test_cls_pooling_trains_a_fresh_pooler_and_exports_for_peft(e5, run_env, tmp_path, hf_peer):
    """--pooling cls on weights without a pooler adds a fresh one that trains with the head
    (as BertForSequenceClassification starts one at random there), so the adapter has a PEFT
    form: the round trip gives the run's own logits, and, where torch + PEFT are installed,
    BertForSequenceClassification + PeftModel give them too."""
    run_dir = tmp_path / "cls"
    run_trainer(e5, run_dir, *CLI, "--max-steps", "3", "--pooling", "cls", "--lr", "1e-2",
                env=run_env)  # a fast rate: the fresh pooler and head move visibly in 3 steps
    manifest = assert_reloads_to_its_predictions(run_dir, 1e-5)
    assert manifest["config"]["lora"]["train_pooler"] is True
    assert {"pooler.kernel", "pooler.bias"} <= set(read_adapter_meta(run_dir / "adapter")
                                                    ["parameters"])
    out = tmp_path / "peft"
    peft_main(["--run-dir", str(run_dir), "--out", str(out)])
    ours = load_adapter(run_dir / "adapter").model
    batch = load_pretrained(str(e5), LoraConfig(), pooling="mean").tokenizer(
        PREMISES, HYPOTHESES, 48)
    expected = np.asarray(ours(batch["token_ids"], batch["segment_ids"], batch["padding_mask"]))
    back = load_peft(out).model
    np.testing.assert_array_equal(
        np.asarray(back(batch["token_ids"], batch["segment_ids"], batch["padding_mask"])),
        expected)
    if hf_peer is None:
        return
    model = hf_peer.peft.PeftModel.from_pretrained(
        hf_peer.Bert.from_pretrained(str(e5), num_labels=3), str(out)).eval()
    with hf_peer.torch.no_grad():
        theirs = model(input_ids=hf_peer.torch.tensor(batch["token_ids"]).long(),
                       attention_mask=hf_peer.torch.tensor(batch["padding_mask"]).long()
                       ).logits.numpy()
    assert np.abs(theirs - expected).max() <= 1e-5


def test_mean_pooling_refuses_peft_and_keras_hub_exports_in_one_line(e5, tmp_path):
    from jax_lora.export import ExportError, export_preset

    pretrained = load_pretrained(str(e5), LoraConfig(rank=2), pooling="mean")
    with pytest.raises(ValueError, match="train with --pooling cls") as error:
        save_peft(pretrained.model, tmp_path / "peft", base_model_name_or_path=str(e5),
                  method="lora")
    assert "\n" not in str(error.value) and not (tmp_path / "peft").exists()
    cls = load_pretrained(str(e5), LoraConfig(rank=2, train_pooler=True), pooling="cls")
    with pytest.raises(ExportError, match="exact GELU; keras-hub's BertTextClassifier "
                                          "hard-codes tanh"):
        export_preset(cls.model, cls.tokenizer, tmp_path / "keras")
    assert not (tmp_path / "keras").exists()


def test_truncate_longest_first_reaches_the_manifest_and_the_reloaded_run(e5, run_env, tmp_path):
    """--truncate longest_first: recorded, used by the trainer and by a reloaded run, and the
    packed ids equal the folder's tokenizer.json with Hugging Face's truncation on cut rows."""
    run_dir = tmp_path / "hf_cut"
    run_trainer(e5, run_dir, *CLI, "--max-steps", "2", "--truncate", "longest_first",
                "--lr", "1e-2", env=run_env)
    manifest = assert_reloads_to_its_predictions(run_dir, 1e-5)
    assert manifest["preprocessing"]["truncate"] == "longest_first"
    from jax_lora.inference import load_run
    assert load_run(run_dir).tokenizer.truncate == "longest_first"
    frame = load_train(SAMPLE_DATA_DIR)
    pairs = list(zip(frame["premise"], frame["hypothesis"]))
    tokenizer = load_pretrained(str(e5), LoraConfig(), pooling="mean").tokenizer
    tokenizer.truncate = "longest_first"
    ours = tokenizer([p for p, _ in pairs], [h for _, h in pairs], 31)  # odd budget: 31 - 4
    from tokenizers import Tokenizer as HFTokenizer
    hf = HFTokenizer.from_file(str(e5 / "tokenizer.json"))
    hf.enable_truncation(31, strategy="longest_first")
    cut = 0
    for row, (premise, hypothesis) in enumerate(pairs):
        ids = hf.encode(premise, hypothesis).ids
        cut += len(ids) == 31
        assert ours["token_ids"][row, :len(ids)].tolist() == ids, row
    assert cut > 50


@pytest.mark.slow
def test_every_watson_row_gets_tokenizer_jsons_ids_on_multilingual_e5_small(watson_dir):
    """The real folder setup builds: jax_lora's packed ids equal what its tokenizer.json gives
    on all 17,315 Watson pairs (at a length that cuts none), as tf_baseline's do."""
    from shared.runs.presets import PresetError, e5_dir

    try:
        folder = e5_dir()
    except PresetError as err:
        pytest.skip(str(err))
    frames = [load_train(watson_dir), load_test(watson_dir)]
    pairs = {field: [text for frame in frames for text in frame[field]]
             for field in ("premise", "hypothesis")}
    tokenizer = load_pretrained(str(folder), LoraConfig(), pooling="mean").tokenizer
    theirs = tokenizer_json_arrays(folder / "tokenizer.json", pairs, 1024, "<pad>")
    ours = tokenizer(pairs["premise"], pairs["hypothesis"], 1024)
    rows = np.flatnonzero((ours["token_ids"] != theirs["token_ids"]).any(axis=1))
    assert len(pairs["premise"]) == 17315 and not rows.size, f"{rows.size} rows differ"
