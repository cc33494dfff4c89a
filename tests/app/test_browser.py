"""The app end to end in a real browser: the server started as scripts/app.sh starts it, headless
Chromium typing a pair, the predictions the page shows against the models' own, and an attention
heat-map that is really drawn (AppTest sees neither pictures nor the browser's widgets). The
browser steps are scripts/app_screenshot.py's. Skips, saying why, without chromium and
chromedriver; with APP_SCREENSHOT_DIR set, the page screenshots are copied there."""

import importlib.util
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By

from jax_lora import inference
from shared.data.watson import LABEL_NAMES

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "app_screenshot.py"
RUNS = ["jax_lora", "jax_probe", "tf_full"]  # compare_runs, in the order the page lists them
PREMISE, HYPOTHESIS = "the cat sat on the mat", "a cat is sitting"


def load_script():
    """scripts/app_screenshot.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("app_screenshot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


browser = load_script()
MISSING_BROWSER = browser.missing_browser()
# A mark, not a skip in the fixture: without a browser, compare_runs is not built for nothing.
pytestmark = pytest.mark.skipif(MISSING_BROWSER is not None, reason=str(MISSING_BROWSER))


@pytest.fixture
def page(compare_runs, tmp_path):
    """Headless Chromium on the app's Predict page over compare_runs; browser and server stop
    afterwards, whatever the test did."""
    with browser.serve(compare_runs, tmp_path / "server.log") as url, \
            browser.chromium() as driver:
        browser.open_app(driver, url)
        yield driver


def keep(path: Path) -> None:
    """Copies a screenshot to $APP_SCREENSHOT_DIR, when set, to look at after the run."""
    if os.environ.get("APP_SCREENSHOT_DIR"):
        out = Path(os.environ["APP_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / path.name)


def test_a_typed_pair_gets_each_runs_prediction_and_a_drawn_attention_map(
        page, compare_runs, tmp_path):
    browser.enter_pair(page, PREMISE, HYPOTHESIS)
    shown = browser.wait_for_predictions(page, len(RUNS))
    keep(browser.save_page(page, tmp_path / "predict.png"))
    assert not browser.page_problems(page)
    loaded = {name: inference.load_run(compare_runs / name) for name in RUNS}
    expected = {name: LABEL_NAMES[int(np.argmax(inference.predict(
        loaded[name], [PREMISE], [HYPOTHESIS])["probabilities"][0]))] for name in RUNS}
    assert list(shown) == RUNS
    assert shown == expected
    latencies = browser.table_column(page, "latency ms")
    assert list(latencies) == RUNS and all(float(ms) > 0 for ms in latencies.values())

    browser.go_to(page, "Attention")
    heatmap = browser.wait_for_heatmap(page)
    keep(browser.save_page(page, tmp_path / "attention.png"))
    assert not browser.page_problems(page)
    # Drawn, not blank: viridis cells are coloured where axes, labels and background are grey.
    rgb = np.asarray(Image.open(io.BytesIO(heatmap.screenshot_as_png)).convert("RGB"), int)
    coloured = rgb[rgb.max(axis=-1) - rgb.min(axis=-1) > 40]
    assert len(coloured) > 0.2 * rgb.shape[0] * rgb.shape[1], rgb.shape
    assert len(np.unique(coloured, axis=0)) > 20
    # The [CLS] shading: one span per token of the page's default run (the first), titled with
    # its attention weight; a softmax row over the real tokens, so the weights sum to 1.
    out = inference.predict(loaded[RUNS[0]], [PREMISE], [HYPOTHESIS], attention_maps=True)
    ids = out["token_ids"][0][:int(out["padding_mask"][0].sum())]
    spans = page.find_elements(By.CSS_SELECTOR,
                               '[data-testid="stMain"] [data-testid="stHtml"] span[title]')
    assert [span.text for span in spans] == [loaded[RUNS[0]].tokenizer.vocabulary[i]
                                             for i in ids]
    assert sum(float(span.get_attribute("title")) for span in spans) == pytest.approx(1, abs=0.02)
