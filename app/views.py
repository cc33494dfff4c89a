"""What the pages draw, as data: probability bars, attention heat-maps, the [CLS] row as shading
over the tokens, and the gallery's captions. Plain functions of model outputs, of a run's
tokenizer (BERT's WordPiece or XLM-R's SentencePiece, asked what it does rather than assumed)
and of report.json, tested directly (streamlit's AppTest cannot read charts or images)."""

from __future__ import annotations

import html
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from shared.data.watson import LABEL_NAMES
from shared.evaluation.evaluate import training_data
from shared.evaluation.report import FIGURE_TITLES
from shared.evaluation.study_figures import FIGURE_TITLES as STUDY_FIGURE_TITLES

MEAN_OVER_HEADS = "mean over heads"
UNK = "[UNK]"  # BERT's unknown token; pass unknown_token(tokenizer) for another model's


def training_notes(manifests: dict[str, dict]) -> list[tuple[str, str]]:
    """(kind, text) lines for the sidebar about what the runs trained on, from their manifests
    (the evaluator's words): a "warning" for each run that kept extra rows repeating
    validation or test pairs, and, when the runs did not all train on the same rows, a
    "caption" saying so with each run's training data. Nothing when they did."""
    data = {name: training_data(manifest) for name, manifest in manifests.items()}
    notes = [("warning", f"{name}: {d['words']}; its accuracy is inflated")
             for name, d in data.items() if d["contaminated"]]
    if len({d["key"] for d in data.values()}) > 1:
        notes.append(("caption", "The runs trained on different rows: "
                      + "; ".join(f"{name}: {d['words']}" for name, d in data.items())))
    return notes


def probability_frame(probabilities: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per class, one column per run: what st.bar_chart draws as grouped bars."""
    return pd.DataFrame({name: np.asarray(p, float) for name, p in probabilities.items()},
                        index=pd.Index(LABEL_NAMES, name="class"))


def probability_chart(probabilities: dict[str, np.ndarray]) -> alt.Chart:
    """Grouped bars: per class (in label order), one bar per run, on a 0-1 axis."""
    long = (probability_frame(probabilities).reset_index()
            .melt(id_vars="class", var_name="run", value_name="probability"))
    return alt.Chart(long).mark_bar().encode(
        x=alt.X("class:N", sort=list(LABEL_NAMES), title=None, axis=alt.Axis(labelAngle=0)),
        xOffset=alt.XOffset("run:N", sort=list(probabilities)),
        y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("run:N", sort=list(probabilities), legend=alt.Legend(orient="top")),
        tooltip=["run", "class", alt.Tooltip("probability:Q", format=".3f")])


def prediction_rows(probabilities: dict[str, np.ndarray], latency_ms: dict[str, float],
                    recorded: dict[str, np.ndarray | None] | None = None) -> pd.DataFrame:
    """Per run: the predicted class, its probabilities, the latency and, for a validation row,
    the probabilities the run recorded in its predictions.csv and the largest difference."""
    rows = []
    for name, p in probabilities.items():
        row = {"run": name, "prediction": LABEL_NAMES[int(np.argmax(p))],
               **{f"p_{label}": float(v) for label, v in zip(LABEL_NAMES, p)},
               "latency ms": round(latency_ms[name], 1)}
        saved = (recorded or {}).get(name)
        if saved is not None:
            row["recorded prediction"] = LABEL_NAMES[int(np.argmax(saved))]
            row["max |p - recorded p|"] = float(np.abs(np.asarray(saved) - p).max())
        rows.append(row)
    return pd.DataFrame(rows)


def attention_matrix(maps: np.ndarray, layer: int, head: int | str, length: int) -> np.ndarray:
    """[length, length]: one example's attention (maps: [layers, heads, T, T] of one row) at
    `layer`, one head or the mean over heads, over its `length` real tokens."""
    chosen = maps[layer]
    matrix = chosen.mean(axis=0) if head == MEAN_OVER_HEADS else chosen[int(head)]
    return np.asarray(matrix[:length, :length], float)


def heatmap_figure(matrix: np.ndarray, tokens: list[str], title: str,
                   unknown: str = UNK) -> Figure:
    """Token x token heat-map: query rows, key columns, the `unknown` token's labels in red.
    Labels are the tokens as the vocabulary spells them (WordPiece's ##piece, SentencePiece's
    ▁piece)."""
    size = min(14.0, 3.0 + 0.22 * len(tokens))
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for label in labels:
            if label.get_text() == unknown:
                label.set_color("red")
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def cls_shading_html(tokens: list[str], weights: np.ndarray, segments: np.ndarray,
                     unknown: str = UNK) -> str:
    """The [CLS] (<s>) query row as shading over the tokens (darker = more attention, scaled
    to the largest weight), the hypothesis (segment 1) after a line break, `unknown` tokens
    boxed in red."""
    weights = np.asarray(weights, float)
    top = weights.max() if weights.size and weights.max() > 0 else 1.0
    spans, previous = [], 0
    for token, weight, segment in zip(tokens, weights, segments):
        if segment != previous:
            spans.append("<br>")
            previous = segment
        border = "border:2px solid red;" if token == unknown else ""
        spans.append(f'<span title="{weight:.3f}" style="background:rgba(255,140,0,'
                     f'{weight / top:.2f});{border}padding:1px 3px;margin:1px;'
                     f'border-radius:3px;display:inline-block">{html.escape(token)}</span>')
    return '<div style="line-height:2">' + "".join(spans) + "</div>"


# ---------------------------------------------------------------- what the tokenizer does

# Any length above the special tokens: what pair_specials packs an empty pair to.
SPECIALS_PROBE_LENGTH = 16


def pair_specials(tokenizer) -> list[int]:
    """The ids of the special tokens `tokenizer` packs around every pair, read from its own
    packing of an empty pair: [CLS] [SEP] [SEP] for BERT, <s> </s> </s> </s> for XLM-R."""
    packed = tokenizer([""], [""], SPECIALS_PROBE_LENGTH)
    return packed["token_ids"][0][packed["padding_mask"][0].astype(bool)].tolist()


def pair_length(tokenizer, premise: str, hypothesis: str) -> int:
    """The tokens of the packed pair before truncation: both texts and the special tokens."""
    return (len(tokenizer.encode(premise)) + len(tokenizer.encode(hypothesis))
            + len(pair_specials(tokenizer)))


def unknown_token(tokenizer) -> str:
    """The token for what the vocabulary cannot spell: BERT's oov token ([UNK]), XLM-R's
    <unk> (fairseq's id 3, which its tokenizer exposes as a module constant)."""
    oov_id = getattr(tokenizer, "oov_id", None)
    if oov_id is None:
        from jax_lora.xlmr_tokenizer import UNK as oov_id
    return tokenizer.vocabulary[oov_id]


def hypothesis_segments(token_ids: np.ndarray, segment_ids: np.ndarray,
                        special_ids: list[int]) -> np.ndarray:
    """1 from the hypothesis's first token on, 0 before: the tokenizer's segment ids when it
    gives them (BERT), else (XLM-R's are all 0) everything after the first run of special
    tokens that follows a premise token (<s> premise </s></s> | hypothesis </s>)."""
    if np.any(segment_ids):
        return np.asarray(segment_ids)
    special = np.isin(token_ids, special_ids)
    text_before = np.cumsum(~special) > 0
    starts = np.flatnonzero(~special[1:] & special[:-1] & text_before[:-1])
    segments = np.zeros(len(token_ids), np.int32)
    if starts.size:
        segments[starts[0] + 1:] = 1
    return segments


def figure_captions(report: dict) -> dict[str, tuple[str, str]]:
    """{figure name: (title, one-line caption)} for the figures a report.json lists as drawn
    (the evaluator's or the study's), the caption built from the report's own numbers."""
    titles = {**FIGURE_TITLES, **STUDY_FIGURE_TITLES}
    captions = {}
    for name, figure in (report.get("figures") or {}).items():
        if "file" in figure:
            captions[name] = (titles.get(name, name), _caption(name, report))
    return captions


def _caption(name: str, report: dict) -> str:
    runs = report.get("runs") or []
    if name == "per_language_accuracy" and runs:
        return " · ".join(_language_extremes(run) for run in runs)
    if name == "confusion_matrices" and runs:
        return " · ".join(_commonest_error(run) for run in runs)
    if name == "resources" and runs:
        return " · ".join(f"{run['name']}: {_fmt(run['resources'].get('trainable_pct'), '.3g')}"
                          f"% trainable, peak RSS "
                          f"{_fmt(run['resources'].get('peak_host_rss_mb'), ',.0f')} MB"
                          for run in runs)
    if name == "training_curves" and runs:
        return " · ".join(f"{run['name']}: {run['recipe'].get('epochs_run')} epoch(s), "
                          f"validation accuracy {run['metrics']['accuracy']:.3f}" for run in runs)
    if name == "tsne" and runs:
        return (f"validation [CLS] vectors of {len(runs)} run(s), coloured by gold label "
                f"({report.get('n_val')} rows)")
    methods = report.get("methods") or []
    if methods:
        return " · ".join(f"{m['method']}: validation accuracy "
                          f"{_fmt((m.get('accuracy') or {}).get('mean'), '.3f')} over "
                          f"{len(m.get('seeds') or [])} seed(s)" for m in methods)
    return ""


def _language_extremes(run: dict) -> str:
    rows = sorted(run["per_language"], key=lambda row: row["accuracy"])
    return (f"{run['name']} {run['metrics']['accuracy']:.3f} overall, best "
            f"{rows[-1]['language']} {rows[-1]['accuracy']:.3f}, worst {rows[0]['language']} "
            f"{rows[0]['accuracy']:.3f}")


def _commonest_error(run: dict) -> str:
    matrix = np.array(run["metrics"]["confusion_matrix"])
    np.fill_diagonal(matrix, -1)
    gold, pred = np.unravel_index(matrix.argmax(), matrix.shape)
    return (f"{run['name']}: commonest error {LABEL_NAMES[gold]} → {LABEL_NAMES[pred]} "
            f"({matrix[gold, pred]} rows)")


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def gallery(report_dir: Path, report: dict) -> list[tuple[str, Path, str]]:
    """(title, image path, caption) of every drawn figure whose file exists."""
    items = []
    for name, (title, caption) in figure_captions(report).items():
        path = Path(report_dir) / report["figures"][name]["file"]
        if path.is_file():
            items.append((title, path, caption))
    return items
