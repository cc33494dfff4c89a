"""The app's four pages (app/main.py picks one) and what they share: the runs found, the
models loaded once per process, the premise and hypothesis every page reads."""

from __future__ import annotations

import html
import time
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from app import catalog, views
from shared.data.watson import DEFAULT_MAX_TEXT_CHARS, LABEL_NAMES
from shared.runs.run_dir import PROB_COLUMNS

# Prefilled pairs (written for this app, not Watson rows), label as meant by their author.
EXAMPLES = {
    "English (contradiction)": ("The museum opens at nine and closes at five on weekdays.",
                                "The museum is closed on weekday mornings."),
    "Français (entailment)": ("Le chat dort sur le canapé depuis ce matin.",
                              "Un animal se repose."),
    "Español (contradiction)": ("Los estudiantes terminaron el proyecto antes de la fecha límite.",
                                "El proyecto fue entregado tarde."),
    "Deutsch (neutral)": ("Der Zug nach Berlin hatte zwanzig Minuten Verspätung.",
                          "Viele Fahrgäste verpassten ihren Anschluss."),
    "中文 (entailment)": ("他每天早上都去公园跑步。", "他经常锻炼。"),
    "العربية (contradiction)": ("ذهبت العائلة إلى الشاطئ يوم السبت.",
                                "بقيت العائلة في المنزل طوال عطلة نهاية الأسبوع."),
    "Русский (neutral)": ("Она выучила три иностранных языка в университете.",
                          "Она говорит по-японски."),
}
MAX_RUNS = 4  # side by side at once; more crowd the page and each costs a model in memory


# ---------------------------------------------------------------- shared state

@st.cache_data(show_spinner=False, ttl=10)
def find_runs(root: str) -> list[catalog.RunEntry]:
    return catalog.find_runs(Path(root))


@st.cache_resource(show_spinner=False, max_entries=8)
def load_model(run_dir: str):
    """The run in the Flax model, compiled and warmed on one pair so latencies are steady."""
    from jax_lora import inference  # JAX loads on first use, not to list runs
    loaded = inference.load_run(run_dir)
    inference.predict(loaded, ["warm-up"], ["warm-up"])
    return loaded


def models(entries: list[catalog.RunEntry]) -> dict[str, object]:
    """{run name: loaded run} for the runs given; a run that cannot load says why, once."""
    loaded = {}
    for entry in entries:
        try:
            with st.spinner(f"Loading {entry.name} (first time: weights and compilation)"):
                loaded[entry.name] = load_model(str(entry.run_dir))
        except (ValueError, OSError) as err:
            st.error(f"{entry.name}: cannot load its weights: {err}")
    return loaded


@st.cache_data(show_spinner=False, max_entries=16)
def validation_table(run_dirs: tuple[str, ...], _entries) -> tuple[pd.DataFrame, str]:
    return catalog.validation_table(_entries)


def table_for(entries: list[catalog.RunEntry]) -> tuple[pd.DataFrame, str]:
    return validation_table(tuple(str(e.run_dir) for e in entries), entries)


def sidebar_runs(entries: list[catalog.RunEntry]) -> None:
    usable = [e for e in entries if e.run is not None]
    st.sidebar.caption(f"{len(usable)} finished run(s) under this folder")
    for entry in entries:
        if entry.problem:
            st.sidebar.warning(f"{entry.name}: {entry.problem}")
    for kind, text in views.training_notes({e.name: e.manifest for e in usable}):
        getattr(st.sidebar, kind)(text)


def usable(entries: list[catalog.RunEntry]) -> list[catalog.RunEntry]:
    return [e for e in entries if e.run is not None]


def pair() -> tuple[str, str]:
    return st.session_state.get("premise", ""), st.session_state.get("hypothesis", "")


def set_pair(premise: str, hypothesis: str, row: dict | None = None) -> None:
    """Callback: the texts every page reads, and the validation row they came from (if any)."""
    st.session_state.premise, st.session_state.hypothesis = premise, hypothesis
    st.session_state.row = row


def text_problem(premise: str, hypothesis: str) -> str | None:
    if not premise.strip() or not hypothesis.strip():
        return "Enter a premise and a hypothesis (both are needed)."
    for name, text in (("premise", premise), ("hypothesis", hypothesis)):
        if len(text) > DEFAULT_MAX_TEXT_CHARS:
            return (f"The {name} has {len(text):,} characters; the data loader's limit is "
                    f"{DEFAULT_MAX_TEXT_CHARS:,}. Shorten it.")
    return None


def current_row_for(entry: catalog.RunEntry) -> dict | None:
    """The loaded validation row when `entry` was evaluated on that row's split and the texts
    are still the row's."""
    row = st.session_state.get("row")
    if not row or (row["premise"], row["hypothesis"]) != pair() or entry.split != row["split"]:
        return None
    return row


def recorded_probabilities(entry: catalog.RunEntry) -> np.ndarray | None:
    row = current_row_for(entry)
    if row is None:
        return None
    saved = entry.run.predictions.set_index("id")
    return saved.loc[row["id"], list(PROB_COLUMNS)].to_numpy(float) if row["id"] in saved.index \
        else None


# ---------------------------------------------------------------- Predict

def random_row(entries: list[catalog.RunEntry]) -> None:
    """Callback: a random validation row of the largest split, with its gold label."""
    split, members = next(iter(catalog.splits(entries).items()))
    table, note = table_for(members)
    if not table["premise"].str.len().any():
        st.session_state.row_note = f"No texts for the validation rows: {note}"
        return
    picked = table.iloc[int(np.random.default_rng().integers(len(table)))]
    set_pair(picked["premise"], picked["hypothesis"],
             {"id": picked["id"], "gold": picked["gold"], "language": picked["language"],
              "split": split, "premise": picked["premise"], "hypothesis": picked["hypothesis"]})
    st.session_state.row_note = None


def predict_page(entries: list[catalog.RunEntry]) -> None:
    st.header("Predict")
    runs = usable(entries)
    if not runs:
        st.error("No finished run to predict with; finish a run (or rerun its command to "
                 "resume it) and reload.")
        return
    names = [e.name for e in runs]
    # The choice kept from earlier (app/main.py KEPT), less runs gone from the folder.
    st.session_state.predict_runs = [n for n in st.session_state.get("predict_runs",
                                                                     names[:MAX_RUNS])
                                     if n in names]
    chosen = st.multiselect("Runs", names, max_selections=MAX_RUNS, key="predict_runs")
    left, right = st.columns(2)
    example = left.selectbox("Example", list(EXAMPLES), index=None, placeholder="Pick an example")
    if example and st.session_state.get("example") != example:
        set_pair(*EXAMPLES[example])
    st.session_state.example = example
    right.button("Random validation row", on_click=random_row, args=(entries,))
    if st.session_state.get("row_note"):
        st.warning(st.session_state.row_note)
    st.text_area("Premise", key="premise", height=90)
    st.text_area("Hypothesis", key="hypothesis", height=70)
    premise, hypothesis = pair()
    problem = text_problem(premise, hypothesis)
    if problem:
        st.warning(problem)
        return
    row = st.session_state.get("row")
    if row and (row["premise"], row["hypothesis"]) == (premise, hypothesis):
        st.markdown(f"Validation row **{row['id']}** ({row['language']}), gold label "
                    f"**{row['gold']}**")
    selected = [e for e in runs if e.name in chosen]
    loaded = models(selected)
    probabilities, latency, recorded = {}, {}, {}
    from jax_lora import inference
    for entry in selected:
        if entry.name not in loaded:
            continue
        began = time.perf_counter()
        out = inference.predict(loaded[entry.name], [premise], [hypothesis])
        latency[entry.name] = 1000 * (time.perf_counter() - began)
        probabilities[entry.name] = out["probabilities"][0]
        recorded[entry.name] = recorded_probabilities(entry)
        truncation_note(entry.name, loaded[entry.name], premise, hypothesis)
    if not probabilities:
        return
    for column, (name, p) in zip(st.columns(len(probabilities)), probabilities.items()):
        column.metric(name, LABEL_NAMES[int(np.argmax(p))])
        column.caption(f"probability {float(np.max(p)):.1%} · {latency[name]:.0f} ms")
    st.altair_chart(views.probability_chart(probabilities))
    st.dataframe(views.prediction_rows(probabilities, latency, recorded), hide_index=True)


def truncation_note(name: str, loaded, premise: str, hypothesis: str) -> None:
    tokens = views.pair_length(loaded.tokenizer, premise, hypothesis)
    if tokens > loaded.sequence_length:
        st.caption(f"{name}: the pair has {tokens} tokens; this run reads "
                   f"{loaded.sequence_length} (the longer text is cut first, as in training).")


# ---------------------------------------------------------------- Attention

def attention_page(entries: list[catalog.RunEntry]) -> None:
    st.header("Attention")
    runs = usable(entries)
    if not runs:
        st.error("No finished run to look into.")
        return
    names = [e.name for e in runs]
    shown = [n for n in st.session_state.get("predict_runs", []) if n in names]
    name = st.selectbox("Run", names, index=names.index(shown[0]) if shown else 0,
                        key="attention_run")
    premise, hypothesis = pair()
    problem = text_problem(premise, hypothesis)
    if problem:
        st.warning(problem + " (on the Predict page)")
        return
    entry = runs[names.index(name)]
    loaded = models([entry]).get(name)
    if loaded is None:
        return
    from jax_lora import inference
    truncation_note(name, loaded, premise, hypothesis)
    out = inference.predict(loaded, [premise], [hypothesis], attention_maps=True)
    maps = np.asarray(out["attention_maps"])[:, 0]  # [layers, heads, T, T]
    length = int(out["padding_mask"][0].sum())
    tokenizer = loaded.tokenizer
    ids = out["token_ids"][0][:length]
    tokens = [tokenizer.vocabulary[i] for i in ids]
    # XLM-R gives no segment ids: the hypothesis is found after the special tokens instead.
    segments = views.hypothesis_segments(ids, out["segment_ids"][0][:length],
                                         views.pair_specials(tokenizer))
    unknown = views.unknown_token(tokenizer)
    left, right = st.columns(2)
    layer = left.selectbox("Layer", range(1, maps.shape[0] + 1), index=maps.shape[0] - 1,
                           key="attention_layer")
    head = right.selectbox("Head", [views.MEAN_OVER_HEADS, *range(maps.shape[1])],
                           key="attention_head")
    matrix = views.attention_matrix(maps, layer - 1, head, length)
    # Escaped: markdown would take XLM-R's <s> and <unk> for HTML tags.
    st.markdown(f"**{length} tokens**, {tokens.count(unknown)} of them {html.escape(unknown)} "
                f"(boxed in red: words the vocabulary cannot spell). {html.escape(tokens[0])} "
                f"attention, layer {layer}, "
                f"{head if head == views.MEAN_OVER_HEADS else f'head {head}'}:")
    st.html(views.cls_shading_html(tokens, matrix[0], segments, unknown))
    st.pyplot(views.heatmap_figure(matrix, tokens, f"{name}: layer {layer}, "
                                   f"{head if head == views.MEAN_OVER_HEADS else f'head {head}'}",
                                   unknown))
    probabilities = out["probabilities"][0]
    saved = recorded_probabilities(entry)
    st.dataframe(views.prediction_rows({name: probabilities}, {name: float("nan")},
                                       {name: saved}).drop(columns="latency ms"),
                 hide_index=True)
    if saved is not None:
        st.caption(f"Recorded: what {entry.manifest['trainer']} wrote in predictions.csv for "
                   f"this validation row; computed: the Flax model in this app.")


# ---------------------------------------------------------------- Errors

def errors_page(entries: list[catalog.RunEntry]) -> None:
    st.header("Explore errors")
    groups = catalog.splits(entries)
    if not groups:
        st.error("No finished run with validation predictions.")
        return
    labels = {f"split {split[:12]}… ({len(members)} run(s): "
              f"{', '.join(e.name for e in members)})": split
              for split, members in groups.items()}
    if len(groups) > 1:
        st.warning("These runs were evaluated on different validation splits; each table "
                   "holds the runs of one split.")
    split = labels[st.selectbox("Split", list(labels), key="errors_split")]
    members = groups[split]
    table, note = table_for(members)
    if note:
        st.warning(f"Texts unavailable: {note}")
    names = [e.name for e in members]
    a, b, c, d = st.columns(4)
    languages = a.multiselect("Language", sorted(table["language"].unique()))
    gold = b.multiselect("Gold label", list(LABEL_NAMES))
    disagree = c.checkbox("Only where runs disagree", disabled=len(names) < 2)
    wrong_for = d.selectbox("Only errors of", [None, *names],
                            format_func=lambda n: "any run" if n is None else n)
    shown = catalog.filter_rows(table, languages=languages, gold=gold, disagree_only=disagree,
                                wrong_for=wrong_for)
    st.markdown(f"**{len(shown):,} of {len(table):,} rows**")
    st.dataframe(shown, hide_index=True)
    if len(shown) and shown["premise"].str.len().any():
        row_id = st.selectbox("Row to open in Predict", shown["id"].head(1000), key="errors_row")
        picked = shown.set_index("id").loc[row_id]
        st.button("Open in Predict", on_click=open_in_predict, args=(row_id, picked, split))
    st.subheader("Confusion matrix per language")
    run = st.selectbox("Run", names, key="confusion_run")
    matrices = catalog.confusion_by_language(table, run)
    language = st.selectbox("Language", list(matrices), key="confusion_language")
    st.dataframe(matrices[language])


def open_in_predict(row_id: str, picked: pd.Series, split: str) -> None:
    set_pair(picked["premise"], picked["hypothesis"],
             {"id": row_id, "gold": picked["gold"], "language": picked["language"],
              "split": split, "premise": picked["premise"], "hypothesis": picked["hypothesis"]})
    st.session_state.page = "Predict"


# ---------------------------------------------------------------- Gallery

def gallery_page(entries: list[catalog.RunEntry]) -> None:
    st.header("Insights gallery")
    root = Path(st.session_state.root)
    reports = catalog.find_reports(root)
    if not reports:
        st.info(f"No report.json under {root}; the evaluator writes one: "
                f"python -m shared.evaluation RUN_DIR ... --out {root}/report")
        return
    names = [str(r.relative_to(root)) if r != root else r.name for r in reports]
    chosen = reports[names.index(st.selectbox("Report", names, key="gallery_report"))]
    items = views.gallery(chosen, catalog.read_report(chosen))
    if not items:
        st.info(f"{chosen}: its report drew no figure.")
    for title, path, caption in items:
        st.subheader(title)
        st.image(str(path))
        st.caption(caption)
