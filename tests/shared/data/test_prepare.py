"""The prepare command: tfds sources become Watson rows (labels mapped by name, XNLI flattened
per language, bad rows skipped and counted), bad input is one line with exit code 2 and nothing
written, and --watson round-trips Watson's files through the tfds builder.

tfds cannot download here: MultiNLI, XNLI and ANLI are mocked with their real feature specs
(tfds.testing.mock_data, MockPolicy.USE_CODE) and planted examples, which go through the
features' real serialize/decode path; a small builder defined below is prepared for real."""

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds

import shared.data.tfds_watson  # noqa: F401  registers the Watson builder
from shared.data.contamination import check
from shared.data.extra import EXTRA_COLUMNS, load_prepared
from shared.data.prepare import LANGUAGE_NAMES, PrepareError, Source, main, parse_sources
from shared.data.split import SplitSpec, make_split
from shared.data.watson import LABEL_NAMES, SAMPLE_DATA_DIR, load_test, load_train
from tests.tfds_mocks import nli, planted, prepare

REPO = Path(__file__).resolve().parents[3]
XNLI_LANGUAGES = sorted(LANGUAGE_NAMES)
PERMUTED_NAMES = ["contradiction", "Entailment", "neutral"]  # the fake builder's label order
PERMUTED_ROWS = [(f"Premise number {i} about a quiet harbour town.",
                  f"Hypothesis number {i} about boats.", i % 3) for i in range(6)]


class PrepareTestPermutedNli(tfds.core.GeneratorBasedBuilder):
    """Plain-text NLI whose label names are Watson's in another order and case."""

    VERSION = tfds.core.Version("0.1.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                "premise": tfds.features.Text(), "hypothesis": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=PERMUTED_NAMES)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for index, (premise, hypothesis, label) in enumerate(PERMUTED_ROWS):
            yield index, {"premise": premise, "hypothesis": hypothesis, "label": label}


@pytest.fixture(scope="module")
def permuted_data_dir(tmp_path_factory) -> Path:
    """A tfds data folder where the fake builder is prepared (for --tfds-data-dir)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    tfds.builder("prepare_test_permuted_nli", data_dir=str(data_dir)).download_and_prepare()
    return data_dir


@pytest.fixture(scope="module")
def watson_parts(watson_dir) -> dict:
    """The real data's kaggle validation part and test rows."""
    frame = load_train(watson_dir)
    _, validation = make_split(frame, SplitSpec()).parts(frame)
    return {"validation": validation, "test": load_test(watson_dir)}


def xnli(premises: dict, hypotheses: dict, label: int) -> dict:
    """An XNLI example: premise in all 15 languages (filler where not given)."""
    filler = {code: f"Filler premise in {code}." for code in XNLI_LANGUAGES}
    return {"premise": filler | premises, "hypothesis": hypotheses, "label": label}


def with_letter_changed(text: str) -> str:
    """The middle letter of `text` replaced by another one."""
    middle = [i for i, c in enumerate(text) if c.isalpha()]
    at = middle[len(middle) // 2]
    return text[:at] + ("q" if text[at] != "q" else "z") + text[at + 1:]


def prepared_record(out: Path) -> list[dict]:
    return json.loads((out / "extra.json").read_text())["sources"]


def assert_refused(code: int, capsys, out: Path, *fragments: str) -> None:
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("prepare: ") and error.count("\n") == 1, error
    for fragment in fragments:
        assert fragment in error
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}-*"))  # no staging folder left behind


# ---------------------------------------------------------------- specs and builders

def test_specs_parse_names_configs_versions_and_sliced_splits():
    assert parse_sources("multi_nli:train[:20000], glue/mnli:2.0.0:validation_matched,"
                         "xnli:train[:10%]+validation") == [
        Source("multi_nli:train[:20000]", "multi_nli", None, "train[:20000]"),
        Source("glue/mnli:2.0.0:validation_matched", "glue/mnli", "2.0.0",
               "validation_matched"),
        Source("xnli:train[:10%]+validation", "xnli", None, "train[:10%]+validation")]
    assert Source("a:1.2.3:train", "a", "1.2.3", "train").builder_name == "a:1.2.3"


@pytest.mark.parametrize("specs", ["multi_nli", "multi_nli:", ":train", "Multi_NLI:train",
                                   "multi nli:train", "multi_nli:train,,xnli:validation"])
def test_malformed_specs_are_refused(specs):
    with pytest.raises(PrepareError, match=r"not NAME\[:VERSION\]:SPLIT"):
        parse_sources(specs)


def test_a_source_listed_twice_is_refused():
    with pytest.raises(PrepareError, match="xnli:validation: listed twice"):
        parse_sources("xnli:validation,multi_nli:train,xnli:validation")


def test_real_builders_label_names(tmp_path):
    """What the mapping relies on, as tfds 4.9.10 defines it (no download needed)."""
    def names(name):
        return tfds.builder(name, data_dir=str(tmp_path)).info.features["label"].names

    for name in ("multi_nli", "xnli", "glue/mnli"):
        assert names(name) == ["entailment", "neutral", "contradiction"]
    assert names("anli/r1") == ["e", "n", "c"]  # refused: not the three names


def test_language_names_are_watsons():
    frame = load_train(SAMPLE_DATA_DIR)
    pairs = set(zip(frame["lang_abv"], frame["language"]))
    assert len(pairs) == 15 and pairs == set(LANGUAGE_NAMES.items())


# ---------------------------------------------------------------- --extra-train

def test_multi_nli_rows_keep_texts_and_labels(tmp_path, capsys):
    examples = [nli("  A man plays a guitar. ", "NA", 0), nli("A woman reads.", "She sleeps.", 2),
                nli("Kids run outside.", "Children are playing.", 1)]
    out = tmp_path / "extra"
    with planted({"multi_nli": examples}):
        assert prepare("--extra-train", "multi_nli:train[:3]", "--out", out) == 0
    rows = load_prepared(out).rows
    spec = "multi_nli:train[:3]"
    assert rows.columns.tolist() == list(EXTRA_COLUMNS)
    assert rows["id"].tolist() == [f"{spec}:0", f"{spec}:1", f"{spec}:2"]
    assert rows["premise"].tolist() == [e["premise"] for e in examples]
    assert rows["hypothesis"].tolist() == ["NA", "She sleeps.", "Children are playing."]
    assert rows["label"].tolist() == [0, 2, 1]  # the same names in the same order
    assert set(zip(rows["lang_abv"], rows["language"], rows["source"])) == \
        {("en", "English", spec)}
    assert prepared_record(out) == [{
        "spec": spec, "builder": "multi_nli", "config": None, "version": "1.1.0",
        "split": "train[:3]", "rows": 3,
        "skipped": {"control_character": 0, "empty": 0, "too_long": 0},
        "label_names": ["entailment", "neutral", "contradiction"], "languages": ["en"]}]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{spec}: 3 rows (multi_nli 1.1.0, en), skipped none"
    assert printed[1].startswith(f"wrote 3 rows from 1 source(s) to {out.resolve()}")


def test_permuted_label_names_map_by_name(permuted_data_dir, tmp_path):
    """A real prepared builder read with --tfds-data-dir: slicing is tfds's, labels by name."""
    spec = "prepare_test_permuted_nli:0.1.0:train[1:5]"
    out = tmp_path / "extra"
    assert prepare("--extra-train", spec, "--out", out, "--tfds-data-dir", permuted_data_dir,
                   "--language", "fr") == 0
    rows = load_prepared(out).rows
    assert rows["premise"].tolist() == [row[0] for row in PERMUTED_ROWS[1:5]]
    builder_labels = [row[2] for row in PERMUTED_ROWS[1:5]]
    assert builder_labels == [1, 2, 0, 1]
    # builder 0 contradiction -> 2, 1 Entailment -> 0, 2 neutral -> 1
    assert rows["label"].tolist() == [0, 1, 2, 0]
    assert [LABEL_NAMES[label] for label in rows["label"]] == \
        [PERMUTED_NAMES[label].lower() for label in builder_labels]
    assert rows["id"].tolist() == [f"{spec}:{i}" for i in range(4)]
    assert set(zip(rows["lang_abv"], rows["language"])) == {("fr", "French")}
    record = prepared_record(out)[0]
    assert (record["version"], record["label_names"], record["languages"]) == \
        ("0.1.0", PERMUTED_NAMES, ["fr"])


def test_xnli_flattens_to_one_row_per_language(tmp_path):
    examples = [
        xnli({"fr": "Le chat dort.", "en": "The cat sleeps.", "sw": "Paka analala."},
             {"sw": "Paka yuko macho.", "fr": "Le chat est éveillé.", "en": "The cat is awake."},
             2),
        xnli({code: f"Premise {code}." for code in XNLI_LANGUAGES},
             {code: f"Hypothesis {code}." for code in XNLI_LANGUAGES}, 0)]
    out = tmp_path / "extra"
    with planted({"xnli": examples}):
        assert prepare("--extra-train", "xnli:validation", "--out", out) == 0
    rows = load_prepared(out).rows
    assert len(rows) == 3 + 15
    assert rows["id"].tolist()[:4] == ["xnli:validation:0:en", "xnli:validation:0:fr",
                                       "xnli:validation:0:sw", "xnli:validation:1:ar"]
    first = rows.iloc[:3]
    assert first["premise"].tolist() == ["The cat sleeps.", "Le chat dort.", "Paka analala."]
    assert first["hypothesis"].tolist() == ["The cat is awake.", "Le chat est éveillé.",
                                            "Paka yuko macho."]
    assert first["language"].tolist() == ["English", "French", "Swahili"]
    assert rows["label"].tolist() == [2] * 3 + [0] * 15
    second = rows.iloc[3:]
    assert second["lang_abv"].tolist() == XNLI_LANGUAGES
    assert second["language"].tolist() == [LANGUAGE_NAMES[code] for code in XNLI_LANGUAGES]
    assert (second["premise"] == "Premise " + second["lang_abv"] + ".").all()
    record = prepared_record(out)[0]
    assert (record["builder"], record["version"], record["rows"], record["languages"]) == \
        ("xnli", "1.1.0", 18, XNLI_LANGUAGES)


def test_rows_watson_would_refuse_are_skipped_and_counted(tmp_path, capsys):
    examples = [nli("A kept premise.", "A kept hypothesis.", 0), nli("", "Empty premise.", 1),
                nli("Blank hypothesis.", " \t ", 1), nli("A bell \x07 rings.", "Noise.", 2),
                nli("x" * 61, "Too long.", 0), nli("Another kept one.", "Yes.", 2)]
    xnli_examples = [xnli({"de": "Ein Satz."}, {"de": "", "en": "The filler's hypothesis."}, 1)]
    out = tmp_path / "extra"
    with planted({"multi_nli": examples, "xnli": xnli_examples}):
        assert prepare("--extra-train", "multi_nli:train,xnli:test", "--out", out,
                       "--max-text-chars", 60) == 0
    rows = load_prepared(out).rows
    assert rows["id"].tolist() == ["multi_nli:train:0", "multi_nli:train:5", "xnli:test:0:en"]
    records = prepared_record(out)
    assert records[0]["skipped"] == {"control_character": 1, "empty": 2, "too_long": 1}
    assert (records[0]["rows"], records[1]["rows"]) == (2, 1)
    assert records[1]["skipped"] == {"control_character": 0, "empty": 1, "too_long": 0}
    assert "multi_nli:train: 2 rows (multi_nli 1.1.0, en), skipped 1 control_character, " \
           "2 empty, 1 too_long" in capsys.readouterr().out


@pytest.mark.parametrize("case", [
    "unknown_builder", "malformed_spec", "bad_split_slice", "unknown_split", "unknown_version",
    "unknown_config", "unlabeled_row", "wrong_label_names", "not_prepared", "text_cap"])
def test_bad_input_is_one_line_and_writes_nothing(case, permuted_data_dir, tmp_path, capsys):
    unlabeled = [nli("A.", "B.", 0), nli("C.", "D.", 1), nli("E.", "F.", -1)]
    examples = {"multi_nli": unlabeled, "anli": [nli("A.", "B.", 0)],
                "xnli": [xnli({"en": "A."}, {"en": "B."}, 0)]}
    specs, extra_args, fragments = {
        "unknown_builder": ("no_such_nli:train", [], ["no_such_nli:train", "no builder"]),
        "malformed_spec": ("multi_nli", [], ["'multi_nli': not NAME[:VERSION]:SPLIT"]),
        "bad_split_slice": ("multi_nli:train[:abc]", [], ["'train[:abc]' is not a tfds split"]),
        "unknown_split": ("prepare_test_permuted_nli:validation",
                          ["--tfds-data-dir", permuted_data_dir],
                          ["prepare_test_permuted_nli:validation", "(splits: train)"]),
        "unknown_version": ("multi_nli:9.9.9:train", [], ["at version 9.9.9, only: 1.1.0"]),
        "unknown_config": ("glue/no_such_task:train", [], ["BuilderConfig no_such_task"]),
        # a good source first: all or nothing
        "unlabeled_row": ("xnli:validation,multi_nli:test", [],
                          ["multi_nli:test: row 2 has label -1", "choose a labeled split"]),
        "wrong_label_names": ("anli/r1:train", [], ["anli/r1:train: label names are e, n, c"]),
        "not_prepared": ("multi_nli:train", ["--tfds-data-dir", tmp_path / "tfds"],
                         ["multi_nli:train: not prepared in --tfds-data-dir", "tfds build"]),
        "text_cap": ("multi_nli:train", ["--max-text-chars", 20_000], ["1..10000"]),
    }[case]
    out = tmp_path / "extra"
    mocked = case in ("unlabeled_row", "wrong_label_names")
    with planted(examples) if mocked else contextlib.nullcontext():
        code = prepare("--extra-train", specs, "--out", out, *extra_args)
    assert_refused(code, capsys, out, *fragments)


def test_an_existing_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "extra"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with planted({"multi_nli": [nli("A.", "B.", 0)]}):
        code = prepare("--extra-train", "multi_nli:train", "--out", out)
    assert code == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [path.name for path in out.iterdir()] == ["notes.txt"]


def test_planted_watson_pairs_are_flagged_exactly(watson_parts, tmp_path):
    """3 exact copies, 1 copy with case and whitespace changed and 2 with one letter changed,
    planted among unrelated XNLI rows, are what the contamination check drops."""
    validation = watson_parts["validation"]
    picked = validation[validation["premise"].str.len() > 120].iloc[:6]
    premises, hypotheses = picked["premise"].tolist(), picked["hypothesis"].tolist()
    premises[3] = "  " + premises[3].upper().replace(" ", "  ")
    hypotheses[3] = hypotheses[3].lower() + " "
    premises[4], premises[5] = with_letter_changed(premises[4]), with_letter_changed(premises[5])
    rng = np.random.default_rng(0)
    words = "red blue old new small large river town market garden train bridge".split()
    examples = [xnli({"en": f"The {' '.join(rng.choice(words, 6))} story number {i}.",
                      "fr": f"Une histoire numéro {i} sur {' '.join(rng.choice(words, 4))}."},
                     {"en": f"It is about the {rng.choice(words)} {i}.",
                      "fr": f"Il s'agit du {rng.choice(words)} {i}."}, i % 3)
                for i in range(60)]
    planted_at = [5, 12, 20, 33, 41, 58]
    for at, code, premise, hypothesis in zip(planted_at, picked["lang_abv"], premises,
                                             hypotheses):
        examples[at]["premise"][code] = premise
        examples[at]["hypothesis"] = {code: hypothesis}
    out = tmp_path / "extra"
    with planted({"xnli": examples}):
        assert prepare("--extra-train", "xnli:validation", "--out", out) == 0
    rows = load_prepared(out).rows
    planted_ids = [f"xnli:validation:{at}:{code}" for at, code in zip(planted_at,
                                                                     picked["lang_abv"])]
    assert len(rows) == 54 * 2 + 6
    report = check(rows, watson_parts)
    flagged = rows.loc[report.drop_mask, "id"].tolist()
    assert flagged == planted_ids
    assert report.rows.loc[report.drop_mask, "overlap"].tolist() == \
        ["exact"] * 4 + ["near_duplicate"] * 2
    assert report.rows.loc[report.drop_mask, "watson_id"].tolist() == picked["id"].tolist()


# ---------------------------------------------------------------- --watson

def assert_same_files(written: Path, original: Path) -> None:
    train = load_train(written)
    pd.testing.assert_frame_equal(train, load_train(original))
    assert make_split(train, SplitSpec()).fingerprint == \
        make_split(load_train(original), SplitSpec()).fingerprint
    if (original / "test.csv").exists():
        pd.testing.assert_frame_equal(load_test(written), load_test(original))
    else:
        assert not (written / "test.csv").exists()


def test_watson_sample_round_trips(tmp_path, capsys):
    out = tmp_path / "watson"
    assert prepare("--watson", SAMPLE_DATA_DIR, "--out", out) == 0
    assert sorted(path.name for path in out.iterdir()) == ["test.csv", "train.csv"]
    assert_same_files(out, SAMPLE_DATA_DIR)
    fingerprint = make_split(load_train(SAMPLE_DATA_DIR), SplitSpec()).fingerprint
    assert f"kaggle split fingerprint {fingerprint}" in capsys.readouterr().out


def test_watson_real_data_round_trips(watson_dir, tmp_path):
    out = tmp_path / "watson"
    assert prepare("--watson", watson_dir, "--out", out) == 0
    assert_same_files(out, watson_dir)


def test_watson_is_regenerated_when_the_files_change(tmp_path):
    """--tfds-data-dir keeps the builder's data; a changed train.csv is still read afresh."""
    manual_dir, tfds_dir = tmp_path / "manual", tmp_path / "tfds"
    manual_dir.mkdir()
    lines = load_train(SAMPLE_DATA_DIR).head(4).to_csv(index=False).splitlines(keepends=True)
    (manual_dir / "train.csv").write_text("".join(lines[:3]), encoding="utf-8")
    assert prepare("--watson", manual_dir, "--out", tmp_path / "first",
                   "--tfds-data-dir", tfds_dir) == 0
    assert (tfds_dir / "contradictory_my_dear_watson" / "1.0.0").is_dir()
    (manual_dir / "train.csv").write_text("".join(lines), encoding="utf-8")
    assert prepare("--watson", manual_dir, "--out", tmp_path / "second",
                   "--tfds-data-dir", tfds_dir) == 0
    assert len(load_train(tmp_path / "first")) == 2
    assert_same_files(tmp_path / "second", manual_dir)  # 4 rows, no test.csv


@pytest.mark.parametrize("case", ["no_train_csv", "invalid_file", "language_flag"])
def test_watson_bad_input_writes_nothing(case, tmp_path, capsys):
    out = tmp_path / "watson"
    if case == "no_train_csv":
        code = prepare("--watson", tmp_path, "--out", out)
        assert_refused(code, capsys, out, f"--watson {tmp_path}: no train.csv there")
    elif case == "invalid_file":  # the CSV path's validation, through the builder
        manual_dir = tmp_path / "manual"
        manual_dir.mkdir()
        (manual_dir / "train.csv").write_text(
            "id,premise,hypothesis,lang_abv,language,label\n"
            "d000000001,A cat sleeps.,An animal rests.,en,English,0\n"
            "d000000002,A dog \x07 barks.,It is loud.,en,English,1\n", encoding="utf-8")
        code = prepare("--watson", manual_dir, "--out", out)
        assert_refused(code, capsys, out, "train.csv: row 2 (id d000000002), field 'premise': "
                                          "holds control character U+0007")
    else:
        with pytest.raises(SystemExit) as info:
            main(["--watson", str(SAMPLE_DATA_DIR), "--out", str(out), "--language", "fr"])
        assert info.value.code == 2
        assert "apply to --extra-train only" in capsys.readouterr().err
        assert not out.exists()


# ---------------------------------------------------------------- python -m shared.data.prepare

def test_help_imports_no_tensorflow():
    script = ("import sys\nfrom shared.data.prepare import main\ntry:\n    main(['--help'])\n"
              "except SystemExit:\n    pass\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', "
              "'tensorflow_datasets'}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--extra-train SPECS" in done.stdout and "--watson MANUAL_DIR" in done.stdout
    assert done.stdout.splitlines()[-1] == "[]"


def test_command_error_is_one_line_on_stderr(tmp_path):
    out = tmp_path / "extra"
    done = subprocess.run([sys.executable, "-m", "shared.data.prepare", "--extra-train",
                           "no_such_nli:train", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "prepare: no_such_nli:train: tfds has no builder 'no_such_nli'; check the name at "
        "https://www.tensorflow.org/datasets/catalog"]
    assert not out.exists()


# ---------------------------------------------------------------- prepared rows train
def test_mocked_xnli_trains_jax_lora_end_to_end(tiny_hf_preset, tmp_path):
    """prepare (tfds mocked) -> --extra-train: the JAX trainer, in its own process, trains on
    the rows and drops the planted copy of a sample test pair."""
    from shared.data.watson import SAMPLE_DATA_DIR
    from tests.jax_lora.conftest import SUBPROCESS_ENV
    from tests.jax_lora.trainer_process import run_trainer

    copied = load_test(SAMPLE_DATA_DIR).iloc[1]  # an English test pair
    examples = [xnli({"en": copied["premise"]}, {"en": copied["hypothesis"]}, 0)] + [
        xnli({"en": f"A premise number {i} about a river.", "fr": f"Une prémisse {i}."},
             {"en": f"A hypothesis {i}.", "fr": f"Une hypothèse {i}."}, i % 3)
        for i in range(12)]
    out = tmp_path / "extra"
    with planted({"xnli": examples}):
        assert prepare("--extra-train", "xnli:validation", "--out", out) == 0
    run_dir = tmp_path / "run"
    done = run_trainer(tiny_hf_preset, run_dir, "--data-dir", SAMPLE_DATA_DIR, "--limit", "100",
                       "--batch-per-device", "4", "--sequence-length", "32", "--max-steps", "2",
                       "--no-predict-test", "--extra-train", out, env=SUBPROCESS_ENV)
    rows = 1 + 12 * 2  # one row per language with both sides: the copy's en, then en and fr
    assert f"extra rows: {rows} from xnli:validation; 1 exact and 0 near copies" in done.stdout
    extra = json.loads((run_dir / "manifest.json").read_text())["data"]["extra"]
    assert extra["joined"] == rows - 1 and extra["sources"][0]["builder"] == "xnli"
