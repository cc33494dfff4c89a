"""Every page of the app driven through streamlit's AppTest over the main job's runs on a tiny
random BERT: what a person types and clicks, and the values the pages render."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app import catalog, pages, views
from jax_lora import inference

APP = Path(__file__).resolve().parents[2] / "app" / "main.py"
RUNS = ["jax_lora", "jax_probe", "tf_full"]
PREMISE, HYPOTHESIS = "the cat sat on the mat", "a cat is sitting"


def start(root, **state) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=300)
    at.session_state["root"] = str(root)
    for key, value in state.items():
        at.session_state[key] = value
    return at.run()


def go(at: AppTest, page: str) -> AppTest:
    return at.sidebar.radio(key="page").set_value(page).run()


def by_label(elements, label: str):
    return next(element for element in elements if element.label == label)


def probabilities_now(root: Path, name: str, premise: str, hypothesis: str) -> np.ndarray:
    return inference.predict(inference.load_run(root / name), [premise], [hypothesis])[
        "probabilities"][0]


def test_predict_shows_each_run_side_by_side_with_the_models_probabilities(compare_runs):
    at = start(compare_runs)
    assert not at.exception
    assert "Enter a premise and a hypothesis" in at.warning[0].value  # nothing typed yet
    at.text_area(key="premise").input(PREMISE)
    at.text_area(key="hypothesis").input(HYPOTHESIS).run()
    assert not at.exception and not at.error
    assert [metric.label for metric in at.metric] == RUNS
    table = at.dataframe[0].value.set_index("run")
    for name in RUNS:
        expected = probabilities_now(compare_runs, name, PREMISE, HYPOTHESIS)
        shown = table.loc[name, ["p_entailment", "p_neutral", "p_contradiction"]]
        np.testing.assert_allclose(shown.to_numpy(float), expected, atol=1e-6)
        assert table.loc[name, "prediction"] == ["entailment", "neutral",
                                                 "contradiction"][int(expected.argmax())]
        assert table.loc[name, "latency ms"] > 0
        assert by_label(at.metric, name).value == table.loc[name, "prediction"]


def test_a_validation_row_shows_its_gold_label_and_tf_and_jax_agree_on_it(compare_runs):
    at = start(compare_runs)
    by_label(at.button, "Random validation row").click().run()
    assert not at.exception
    row = at.session_state["row"]
    assert at.text_area(key="premise").value == row["premise"] and row["premise"]
    assert f"gold label **{row['gold']}**" in " ".join(m.value for m in at.markdown)
    table = at.dataframe[0].value.set_index("run")
    # Each run's recorded probabilities (its own framework, at training time) against the
    # Flax model now: the TF run's too.
    assert table["max |p - recorded p|"].max() <= 1e-5, table
    assert (table["prediction"] == table["recorded prediction"]).all()


def test_examples_fill_the_texts_and_bad_text_gets_a_message(compare_runs):
    at = start(compare_runs)
    by_label(at.selectbox, "Example").set_value("Français (entailment)").run()
    assert at.text_area(key="premise").value == pages.EXAMPLES["Français (entailment)"][0]
    assert len(at.metric) == 3
    at.text_area(key="hypothesis").input("x" * 10_001).run()
    assert not at.exception and not at.metric
    assert "10,001 characters" in at.warning[0].value


def test_attention_page_follows_run_layer_and_head(compare_runs):
    at = start(compare_runs, premise=PREMISE, hypothesis=HYPOTHESIS)
    go(at, "Attention")
    at.selectbox(key="attention_run").set_value("tf_full").run()
    assert not at.exception and not at.error
    out = inference.predict(inference.load_run(compare_runs / "tf_full"), [PREMISE],
                            [HYPOTHESIS], attention_maps=True)
    length = int(out["padding_mask"][0].sum())
    assert f"**{length} tokens**" in at.markdown[0].value
    assert at.selectbox(key="attention_layer").value == 2  # the last of 2 layers by default
    at.selectbox(key="attention_layer").set_value(1)
    at.selectbox(key="attention_head").set_value(1).run()
    assert not at.exception
    assert "layer 1, head 1" in at.markdown[0].value
    assert len(at.image) == 1  # the heat-map


def test_typed_texts_and_chosen_runs_survive_a_visit_to_another_page(compare_runs):
    at = start(compare_runs)
    at.multiselect(key="predict_runs").set_value(["tf_full", "jax_probe"])
    at.text_area(key="premise").input(PREMISE)
    at.text_area(key="hypothesis").input(HYPOTHESIS).run()
    go(at, "Attention")
    assert at.selectbox(key="attention_run").value == "tf_full"  # Predict's first run
    at.selectbox(key="attention_head").set_value(0).run()   # a second run of the page
    assert not at.warning and "head 0" in at.markdown[0].value
    go(at, "Predict")
    assert at.text_area(key="premise").value == PREMISE
    assert [metric.label for metric in at.metric] == ["jax_probe", "tf_full"]  # folder order


def test_errors_page_filters_and_sends_a_row_to_predict(compare_runs):
    at = go(start(compare_runs), "Errors")
    assert not at.exception and not at.error
    entries = catalog.find_runs(compare_runs)
    table, _ = catalog.validation_table(entries)
    assert f"**{len(table):,} of {len(table):,} rows**" in [m.value for m in at.markdown]
    language = sorted(table["language"].unique())[0]
    by_label(at.multiselect, "Language").set_value([language])
    by_label(at.selectbox, "Only errors of").set_value("tf_full").run()
    expected = catalog.filter_rows(table, languages=[language], wrong_for="tf_full")
    assert f"**{len(expected):,} of {len(table):,} rows**" in [m.value for m in at.markdown]
    assert list(at.dataframe[0].value["id"]) == list(expected["id"])
    by_label(at.selectbox, "Language").set_value("all")  # the confusion matrix's selector
    at.selectbox(key="confusion_run").set_value("jax_lora").run()
    matrix = at.dataframe[1].value
    assert matrix.to_numpy().sum() == len(table)
    if len(expected):
        row_id = expected["id"].iloc[0]
        at.selectbox(key="errors_row").set_value(row_id)
        by_label(at.button, "Open in Predict").click().run()
        assert at.sidebar.radio(key="page").value == "Predict"
        assert at.text_area(key="premise").value == expected.set_index("id").loc[row_id,
                                                                                   "premise"]
        assert f"Validation row **{row_id}**" in " ".join(m.value for m in at.markdown)


def test_gallery_shows_the_reports_figures_with_captions(compare_runs):
    at = go(start(compare_runs), "Gallery")
    assert not at.exception
    report = json.loads((compare_runs / "report" / "report.json").read_text())
    items = views.gallery(compare_runs / "report", report)
    assert [s.value for s in at.subheader] == [title for title, _, _ in items]
    assert [c.value for c in at.caption if c.value in {c for _, _, c in items}]
    assert {"Accuracy per language", "Confusion matrices"} <= {s.value for s in at.subheader}


@pytest.mark.parametrize("problem", ["missing folder", "no runs"])
def test_a_folder_without_runs_says_what_to_pass(tmp_path, problem):
    root = tmp_path / "nowhere" if problem == "missing folder" else tmp_path
    at = start(root)
    assert not at.exception
    assert ("not a folder" if problem == "missing folder" else "no run directory") in \
        at.error[0].value


def test_missing_weights_and_another_split_are_said_in_the_page(compare_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(compare_runs, root)
    shutil.rmtree(root / "jax_lora" / "adapter")
    other = root / "other_split"
    shutil.copytree(root / "jax_probe", other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["split"]["fingerprint"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    at = start(root, premise=PREMISE, hypothesis=HYPOTHESIS)
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("jax_lora: cannot load its weights") and "adapter" in e
               for e in errors), errors
    assert {m.label for m in at.metric} == {"jax_probe", "other_split", "tf_full"}
    at = go(at, "Errors")
    assert "different validation splits" in at.warning[0].value
    assert len(at.selectbox(key="errors_split").options) == 2


def test_the_sidebar_says_what_each_run_trained_on_when_they_differ(compare_runs, tmp_path):
    root = tmp_path / "runs"
    shutil.copytree(compare_runs, root, ignore=shutil.ignore_patterns("report"))
    at = start(root)
    assert not at.exception and not at.sidebar.warning
    assert not any("trained on different rows" in c.value for c in at.sidebar.caption)
    root = shutil.copytree(root, tmp_path / "with_extra")  # another folder: find_runs caches
    manifest = json.loads((root / "jax_probe" / "manifest.json").read_text())
    manifest["data"]["extra"] = {"sources": [{"spec": "xnli:validation"}], "joined": 40,
                                 "contaminated": True, "fingerprint_joined": "f",
                                 "overlap": {"exact": 2, "near_duplicate": 0}}
    (root / "jax_probe" / "manifest.json").write_text(json.dumps(manifest))
    at = start(root)
    assert not at.exception
    assert [w.value for w in at.sidebar.warning] == [
        "jax_probe: Watson training part + 40 extra rows (xnli:validation) CONTAMINATED: 2 of "
        "them repeat validation/test pairs; its accuracy is inflated"]
    note = next(c.value for c in at.sidebar.caption if "trained on different rows" in c.value)
    assert "jax_lora: Watson training part" in note and "jax_probe: Watson training part + 40" \
        in note
