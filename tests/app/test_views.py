"""What the app's pages draw, as data (AppTest cannot read charts or images)."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from app import views

P = {"a": np.array([0.7, 0.2, 0.1]), "b": np.array([0.1, 0.3, 0.6])}


def test_probability_bars_are_the_probabilities_per_class_and_run():
    frame = views.probability_frame(P)
    assert list(frame.index) == ["entailment", "neutral", "contradiction"]
    assert list(frame.columns) == ["a", "b"]
    np.testing.assert_array_equal(frame["b"].to_numpy(), P["b"])


def test_probability_chart_draws_every_probability_in_label_order():
    chart = views.probability_chart(P)
    data = chart.data.set_index(["run", "class"])["probability"]
    assert data[("b", "contradiction")] == 0.6 and len(data) == 6
    spec = chart.to_dict()
    assert spec["encoding"]["x"]["sort"] == ["entailment", "neutral", "contradiction"]
    assert spec["encoding"]["y"]["scale"]["domain"] == [0, 1]


def test_prediction_rows_name_the_argmax_and_the_gap_to_the_recorded_probabilities():
    rows = views.prediction_rows(P, {"a": 12.34, "b": 5.0},
                                 {"a": np.array([0.69, 0.21, 0.1]), "b": None})
    a, b = rows.set_index("run").loc["a"], rows.set_index("run").loc["b"]
    assert a["prediction"] == "entailment" and b["prediction"] == "contradiction"
    assert a["latency ms"] == 12.3 and a["p_neutral"] == pytest.approx(0.2)
    assert a["recorded prediction"] == "entailment"
    assert a["max |p - recorded p|"] == pytest.approx(0.01)
    assert np.isnan(b["max |p - recorded p|"])  # no recorded row for b


def test_attention_matrix_is_one_head_or_their_mean_over_the_real_tokens():
    maps = np.random.default_rng(0).random((2, 3, 6, 6))  # layers, heads, T, T
    np.testing.assert_array_equal(views.attention_matrix(maps, 1, 2, 4), maps[1, 2, :4, :4])
    np.testing.assert_allclose(views.attention_matrix(maps, 0, views.MEAN_OVER_HEADS, 5),
                               maps[0].mean(axis=0)[:5, :5])


def test_heatmap_draws_the_matrix_with_unk_labels_in_red():
    tokens = ["[CLS]", "le", "[UNK]", "[SEP]"]
    matrix = np.eye(4) * 0.5 + 0.125
    fig = views.heatmap_figure(matrix, tokens, "t")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), matrix)
    colors = {label.get_text(): label.get_color() for label in ax.get_xticklabels()}
    assert colors["[UNK]"] == "red" and colors["le"] != "red"
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())
    assert pixels.std() > 10  # drawn, not blank


def test_cls_shading_scales_to_the_largest_weight_and_marks_unk_and_the_hypothesis():
    tokens = ["[CLS]", "a<b", "[SEP]", "[UNK]", "[SEP]"]
    weights = np.array([0.1, 0.4, 0.2, 0.2, 0.1])
    html = views.cls_shading_html(tokens, weights, np.array([0, 0, 0, 1, 1]))
    assert "a&lt;b" in html and "a<b" not in html            # escaped
    assert "rgba(255,140,0,1.00)" in html                     # the largest weight is full
    assert "rgba(255,140,0,0.25)" in html                     # 0.1 / 0.4
    assert html.count("<br>") == 1                            # before the hypothesis
    assert html.count("border:2px solid red") == 1            # the one [UNK]


def report(figures):
    run = {"name": "lora", "metrics": {"accuracy": 0.5,
                                       "confusion_matrix": [[5, 1, 7], [0, 5, 2], [1, 0, 5]]},
           "per_language": [{"language": "French", "accuracy": 0.8, "n": 5},
                            {"language": "Thai", "accuracy": 0.2, "n": 5}],
           "resources": {"trainable_pct": 0.123, "peak_host_rss_mb": 1234.0},
           "recipe": {"epochs_run": 2}}
    return {"runs": [run], "n_val": 10, "figures": figures}


def test_captions_come_from_the_report_numbers_and_skip_undrawn_figures(tmp_path):
    figures = {"per_language_accuracy": {"file": "per_language_accuracy.png"},
               "confusion_matrices": {"file": "confusion_matrices.png"},
               "resources": {"file": "resources.png"},
               "tsne": {"skipped": "no run saved cls_embeddings.npy"}}
    captions = views.figure_captions(report(figures))
    assert set(captions) == {"per_language_accuracy", "confusion_matrices", "resources"}
    assert captions["per_language_accuracy"] == (
        "Accuracy per language", "lora 0.500 overall, best French 0.800, worst Thai 0.200")
    assert captions["confusion_matrices"][1] == (
        "lora: commonest error entailment → contradiction (7 rows)")
    assert captions["resources"][1] == "lora: 0.123% trainable, peak RSS 1,234 MB"
    (tmp_path / "resources.png").write_bytes(b"png")
    # Only figures whose file exists reach the gallery.
    assert [title for title, _, _ in views.gallery(tmp_path, report(figures))] == ["Resources"]


def test_training_notes_say_when_runs_trained_on_other_rows_and_warn_of_contamination():
    plain = {"data": {}}
    extra = {"data": {"extra": {"sources": [{"spec": "xnli:validation"}], "joined": 120,
                                "dropped": 2, "fingerprint_joined": "e1"}}}
    dirty = {"data": {"extra": {"sources": [{"spec": "multi_nli:train[:50]"}], "joined": 50,
                                "contaminated": True, "overlap": {"exact": 3, "near_duplicate": 1},
                                "fingerprint_joined": "e2"}}}
    assert views.training_notes({"a": plain, "b": plain}) == []
    notes = views.training_notes({"a": plain, "x": extra})
    assert notes == [("caption", "The runs trained on different rows: a: Watson training part; "
                      "x: Watson training part + 120 extra rows (xnli:validation) (2 "
                      "overlapping validation/test pairs dropped)")]
    kinds = [kind for kind, _ in views.training_notes({"a": plain, "d": dirty})]
    assert kinds == ["warning", "caption"]
    warning = views.training_notes({"d": dirty})
    assert warning == [("warning", "d: Watson training part + 50 extra rows "
                        "(multi_nli:train[:50]) CONTAMINATED: 4 of them repeat validation/test "
                        "pairs; its accuracy is inflated")]
