"""The app over a folder of run directories: predictions side by side, attention heat-maps, an
error explorer and the evaluator's figures.

    bash scripts/app.sh [RUNS_DIR]          # streamlit run app/main.py -- RUNS_DIR

RUNS_DIR defaults to runs/compare (what `bash scripts/demo.sh` writes); every run directory
under it is found. Models run in JAX (jax_lora.inference): a tf_baseline run's saved keras-hub
preset loads into the Flax model, so this process never imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `streamlit run app/main.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

from app import catalog, pages

DEFAULT_ROOT = "runs/compare"
# Widget values every page reads. Streamlit forgets a widget's value after a run of a page that
# does not draw the widget; writing the value back at the top of each run keeps it.
KEPT = ("premise", "hypothesis", "predict_runs")
PAGES = {"Predict": pages.predict_page, "Attention": pages.attention_page,
         "Errors": pages.errors_page, "Gallery": pages.gallery_page}


def default_root() -> str:
    """RUNS_DIR from `streamlit run app/main.py -- RUNS_DIR`, else $WATSON_APP_RUNS, else the
    demo's folder."""
    return sys.argv[1] if len(sys.argv) > 1 else os.environ.get("WATSON_APP_RUNS", DEFAULT_ROOT)


def main() -> None:
    st.set_page_config(page_title="Watson fine-tuning runs", layout="wide")
    for key in KEPT:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    st.session_state.setdefault("root", default_root())
    st.sidebar.title("Watson runs")
    st.sidebar.text_input("Runs folder", key="root",
                          help="a folder of run directories (searched recursively)")
    page = st.sidebar.radio("Page", list(PAGES), key="page")
    try:
        entries = pages.find_runs(st.session_state.root)
    except catalog.CatalogError as err:
        st.error(str(err))
        return
    pages.sidebar_runs(entries)
    try:
        PAGES[page](entries)
    except Exception as err:  # noqa: BLE001 -- the page says what failed, never a traceback
        st.error(f"{page} failed: {type(err).__name__}: {err}")


main()
