"""The README's screenshots of the app on real runs, taken in headless Chromium:

    python scripts/app_screenshot.py RUNS_DIR OUT_DIR [--premise ... --hypothesis ...]
                                     [--run NAME ...]

starts the app over RUNS_DIR (as scripts/app.sh does, on a free localhost port), types the pair
on the Predict page, waits for every run's prediction, saves OUT_DIR/app_predict.png, opens the
Attention page, saves OUT_DIR/app_attention.png, prints the latencies the page measured and
stops the app. Needs chromium and chromedriver (bash scripts/browser.sh installs Debian's).
The browser steps here are also what tests/app/test_browser.py drives.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parent.parent
# Written for the screenshots (not a Watson row): French, as most of Watson's rows are not English.
DEFAULT_PAIR = ("Le musée ouvre à neuf heures et ferme à dix-sept heures en semaine.",
                "Le musée est ouvert le mardi matin.")
WINDOW = (1400, 1000)
# A page that loads a run the first time (weights, compilation) takes about a minute on a busy
# 2-core machine; four times that before calling it stuck.
LOAD_TIMEOUT_S = 240


def missing_browser() -> str | None:
    """Why the browser steps cannot run here (chromium or chromedriver not on PATH), or None."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not found on PATH; bash scripts/browser.sh installs "
                f"Debian's chromium and chromium-driver (CI runs it)")
    return None


# ---------------------------------------------------------------- server and browser

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def serve(runs_dir: Path, log_path: Path, timeout_s: float = 120) -> Iterator[str]:
    """The app over `runs_dir` (scripts/app.sh's command) on a free localhost port, its output
    in `log_path`; yields its URL once healthy and stops it on exit, however that comes."""
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port",
               str(port), "--", str(runs_dir)]  # the rest: .streamlit/config.toml
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://localhost:{port}"
        deadline = time.monotonic() + timeout_s
        while not healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with {server.returncode}" if server.returncode is not None
                       else f"not healthy after {timeout_s:.0f} s")
                raise RuntimeError(f"app server {why}; {log_path} ends:\n"
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
            return answer.read().strip() == b"ok"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def chromium() -> Iterator[WebDriver]:
    """Headless Chromium (the one on PATH, through its chromedriver), closed on exit."""
    options = webdriver.ChromeOptions()
    # --no-sandbox and --disable-dev-shm-usage: containers run as root with a small /dev/shm.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=webdriver.ChromeService(shutil.which("chromedriver")),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------- the app's pages

def wait(driver: WebDriver, timeout_s: float, condition, what: str):
    """WebDriverWait(...).until(condition), failing with what was awaited and the error boxes
    the app shows instead."""
    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.5,
                             ignored_exceptions=(StaleElementReferenceException,)
                             ).until(condition)
    except TimeoutException:
        raise TimeoutException(f"no {what} after {timeout_s:.0f} s; the page shows: "
                               f"{page_problems(driver) or 'no error'}") from None


def page_problems(driver: WebDriver) -> list[str]:
    """Texts of the exception and error boxes on the page."""
    boxes = driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="stException"], [data-testid="stAlertContentError"]')
    return [box.text for box in boxes]


def idle(driver: WebDriver) -> bool:
    """The script has finished its rerun: no running indicator, no greyed (stale) element."""
    return not driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="stStatusWidget"], [data-stale="true"]')


def open_app(driver: WebDriver, url: str, timeout_s: float = 120) -> None:
    driver.get(url)
    wait(driver, timeout_s, lambda d: d.find_elements(By.CSS_SELECTOR, "textarea") and idle(d),
         "Predict page")


def choose_runs(driver: WebDriver, names: list[str]) -> None:
    """Leaves exactly `names` chosen in the Predict page's "Runs" multiselect."""
    for chosen in selected_runs(driver):
        if chosen not in names:
            driver.find_element(By.CSS_SELECTOR, f'button[aria-label="Remove {chosen}"]').click()
            wait(driver, 30, idle, f"rerun after removing {chosen}")
    for name in names:
        if name not in selected_runs(driver):
            box = driver.find_element(By.CSS_SELECTOR, '[data-testid="stMultiSelect"] input')
            box.send_keys(name, Keys.ENTER)
            wait(driver, 30, lambda d: name in selected_runs(d), f"run {name} in the multiselect")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)  # close its menu


def selected_runs(driver: WebDriver) -> list[str]:
    return [tag.get_attribute("aria-label") for tag in driver.find_elements(
        By.CSS_SELECTOR, '[data-testid="stMultiSelect"] [data-tag]')]


def enter_pair(driver: WebDriver, premise: str, hypothesis: str) -> None:
    """Types both texts, each committed with Ctrl+Enter (streamlit sends a text area's value
    on Ctrl+Enter or blur), then leaves the focus so no text area is outlined."""
    for label, text in (("Premise", premise), ("Hypothesis", hypothesis)):
        area = driver.find_element(By.CSS_SELECTOR, f'textarea[aria-label="{label}"]')
        area.send_keys(Keys.CONTROL, "a")
        area.send_keys(Keys.DELETE, text)
        area.send_keys(Keys.CONTROL, Keys.ENTER)
        wait(driver, 30, lambda d: d.find_element(
            By.CSS_SELECTOR, f'textarea[aria-label="{label}"]').get_attribute("value") == text,
            f"{label} text")
    driver.execute_script("document.activeElement.blur()")


def wait_for_predictions(driver: WebDriver, runs: int,
                         timeout_s: float = LOAD_TIMEOUT_S) -> dict[str, str]:
    """{run name: predicted class} from the page's metrics, once the rerun is over with
    `runs` of them shown, or with an error box (a run that cannot load) instead."""
    wait(driver, timeout_s, lambda d: idle(d) and (len(metrics(d)) == runs or page_problems(d)),
         f"{runs} predictions")
    return metrics(driver)


def metrics(driver: WebDriver) -> dict[str, str]:
    shown = {}
    for metric in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMetric"]'):
        label = metric.find_element(By.CSS_SELECTOR, '[data-testid="stMetricLabel"]').text
        shown[label] = metric.find_element(By.CSS_SELECTOR, '[data-testid="stMetricValue"]').text
    return shown


def table_column(driver: WebDriver, column: str) -> dict[str, str]:
    """{first cell: cell of `column`} per row of the page's first st.dataframe. Its grid is
    drawn on a canvas; the cells are read from the accessible table inside that canvas."""
    grid = driver.find_element(By.CSS_SELECTOR, '[data-testid="stDataFrame"] table[role="grid"]')
    headers = [th.get_attribute("textContent") for th in grid.find_elements(By.TAG_NAME, "th")]
    index = headers.index(column)
    rows = {}
    for row in grid.find_elements(By.CSS_SELECTOR, "tbody tr"):
        cells = [td.get_attribute("textContent") for td in row.find_elements(By.TAG_NAME, "td")]
        rows[cells[0]] = cells[index]
    return rows


def go_to(driver: WebDriver, page: str) -> None:
    """Clicks `page` in the sidebar's "Page" radio and waits for that page's header (each page
    has its own); what the page then computes, callers wait for."""
    before = header(driver)
    driver.find_element(By.XPATH, f'//section[@data-testid="stSidebar"]'
                                  f'//label[@data-testid="stRadioOption"][normalize-space()='
                                  f'"{page}"]').click()
    wait(driver, 60, lambda d: header(d) not in (before, ""), f"{page} page")


def header(driver: WebDriver) -> str:
    headers = driver.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"] h2')
    return headers[0].text if headers else ""


def wait_for_heatmap(driver: WebDriver, timeout_s: float = LOAD_TIMEOUT_S) -> WebElement:
    """The Attention page's heat-map (st.pyplot's <img>), once its picture has loaded."""
    selector = '[data-testid="stMain"] [data-testid="stImage"] img'

    def loaded(d) -> WebElement | bool:
        images = d.find_elements(By.CSS_SELECTOR, selector)
        if images and idle(d) and d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth > 0", images[0]):
            return images[0]
        return False

    return wait(driver, timeout_s, loaded, "attention heat-map")


def save_page(driver: WebDriver, path: Path) -> Path:
    """A screenshot of the whole page: streamlit scrolls inside its main block, not the
    window, so the window grows to that block's height (plus the window's own bars)."""
    # The pointer rests on the empty header bar: over the sidebar it shows the sidebar's
    # collapse button, over a heading its link icon.
    ActionChains(driver).move_to_element(
        driver.find_element(By.CSS_SELECTOR, '[data-testid="stHeader"]')).perform()
    height, bars = driver.execute_script(
        "return [document.querySelector('[data-testid=\"stMain\"]').scrollHeight,"
        " window.outerHeight - window.innerHeight]")
    driver.set_window_size(WINDOW[0], max(WINDOW[1], height + bars))
    try:
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(*WINDOW)
    return path


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs_dir", type=Path, help="a folder of run directories")
    parser.add_argument("out_dir", type=Path, help="where app_predict.png and "
                                                   "app_attention.png go")
    parser.add_argument("--premise", default=DEFAULT_PAIR[0])
    parser.add_argument("--hypothesis", default=DEFAULT_PAIR[1])
    parser.add_argument("--run", action="append", dest="runs", metavar="NAME",
                        help="a run to show (repeat; default: the page's own choice)")
    args = parser.parse_args(argv)
    problem = missing_browser()
    if problem:
        sys.exit(f"app_screenshot: {problem}")
    if not args.runs_dir.is_dir():
        sys.exit(f"app_screenshot: {args.runs_dir} is not a folder of run directories")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.out_dir / "app_server.log"
    with serve(args.runs_dir.resolve(), log_path) as url, chromium() as driver:
        open_app(driver, url)
        if args.runs:
            choose_runs(driver, args.runs)
        runs = selected_runs(driver)
        began = time.monotonic()
        enter_pair(driver, args.premise, args.hypothesis)
        predictions = wait_for_predictions(driver, len(runs))
        print(f"predictions after {time.monotonic() - began:.0f} s: {predictions}")
        print("latency ms (one pair, models warm):",
              ", ".join(f"{name} {ms}" for name, ms in table_column(driver,
                                                                   "latency ms").items()))
        print(save_page(driver, args.out_dir / "app_predict.png"))
        problems = page_problems(driver)
        go_to(driver, "Attention")
        wait_for_heatmap(driver)
        print(save_page(driver, args.out_dir / "app_attention.png"))
        problems += page_problems(driver)
    if problems:
        sys.exit(f"app_screenshot: the app showed errors: {problems}; see {log_path}")


if __name__ == "__main__":
    main()
