"""The README's MLflow UI recipe, click by click, in a real browser on a real sweep.

A tiny real sweep (``crs train -m debug=fast method=grpo,tp_schedule seed=0,1``, 6 steps per job: TRL's
trainer, crs's tracking, a sqlite MLflow store in a temporary folder) is opened with ``crs ui``;
Debian's Chromium, driven by Playwright, then does exactly the steps of the README's block between
``<!-- ui-recipe:start -->`` and ``<!-- ui-recipe:end -->`` (each step below names the README step it
follows) and checks what a researcher sees on the way: the training-runs page grouped by method, the
chart view, the ``1 main/reward`` chart with one mean line and one min–max band per method, a job's
Model metrics in crs's sections, and the sweep's parent run with the comparison table.

Screenshots ``ui-1-runs.png`` … ``ui-5-parent.png`` go to ``$CRS_SCREENSHOTS`` (default: pytest's tmp
dir); the README's images are refreshed with ``CRS_SCREENSHOTS=docs/img``. ``CRS_UI_STORE=<folder>``
reuses a folder that already holds such a sweep's ``mlflow.db`` (the sweep takes ~40 s on 2 cores).

Needs ``apt-get install chromium`` and ``pip install playwright`` (Playwright's own browser download
does not work offline); skips otherwise.

    CRS_SCREENSHOTS=docs/img pytest -m slow tests/test_ui_browser.py
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# the sweep: two methods × two seeds at debug size (README "Comparing methods in the MLflow UI")
SWEEP = ["debug=fast", "method=grpo,tp_schedule", "seed=0,1", "trainer.max_steps=6", "hydra/launcher=local"]
METHODS = ("tp_schedule", "grpo")
JOB = "tp_schedule·linear·s0"  # tp_schedule's own default schedule is linear; grpo drives no knob
CHART_TOGGLE = "label:has(input[name='runs-view-mode'][value='CHART'])"
CARD = "[data-testid='experiment-view-compare-runs-card']:has(h4[title='{title}'])"
ASSISTANT_CLOSE = "button[data-component-id='mlflow.assistant.chat_panel.close']"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="no playwright (pip install playwright)"
    ),
]


def recipe() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("<!-- ui-recipe:start -->", 1)[1].split("<!-- ui-recipe:end -->", 1)[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A folder whose ``mlflow.db`` holds the sweep, as ``crs train -m`` wrote it."""
    if os.environ.get("CRS_UI_STORE"):
        return Path(os.environ["CRS_UI_STORE"])
    root = tmp_path_factory.mktemp("ui-sweep")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "crs.cli", "train", "-m", *SWEEP, "hydra.launcher.n_jobs=2"]
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 finished, 0 failed" in out.stdout, out.stdout[-2000:]
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(store):
    """``crs ui`` started in the sweep's folder, as the README says; its printed links."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crs.cli", "ui", "--port", str(port), "--no-browser"],
        cwd=store,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    links: dict[str, str] = {}
    lines = []
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None and len(links) < 2:
        line = proc.stdout.readline()
        lines.append(line)
        m = re.match(r"\s+(training runs|last sweep \(parent run\)): (\S+)", line)
        if m:
            links[m.group(1)] = m.group(2)
    if len(links) < 2:
        proc.terminate()
        pytest.fail("crs ui printed no links:\n" + "".join(lines))
    yield links
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def page(ui, tmp_path_factory):
    from playwright import sync_api

    shots = Path(os.environ.get("CRS_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})  # a fresh profile: a first visit
        pg.shots = shots
        yield pg
        browser.close()


def _shot(page, name: str, locator=None) -> Path:
    path = page.shots / f"{name}.png"
    (locator or page).screenshot(path=str(path))  # the viewport (or one chart), as a user sees it
    return path


def _visible(page, text: str) -> bool:
    loc = page.get_by_text(text, exact=True)
    return any(loc.nth(i).is_visible() for i in range(loc.count()))


def _paths(card, selector: str, at_least: int, timeout: float = 30) -> list[str]:
    """The drawn (non-empty) SVG paths of a chart, once plotly has drawn at least ``at_least``."""
    drawn: list[str] = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        ds = card.locator(selector).evaluate_all("ps => ps.map(p => p.getAttribute('d') || '')")
        drawn = [d for d in ds if len(d) > 20]  # "M0,0Z" is an empty trace
        if len(drawn) >= at_least:
            break
        time.sleep(0.5)
    return drawn


def test_readme_ui_recipe_click_by_click(ui, page):
    steps = recipe()
    # the recipe names what the test clicks; a renamed step fails here before the browser does
    for words in (
        "training runs",
        "Group: tp_schedule",
        "Assistant",
        "Chart",
        "1 main/reward",
        "Model metrics",
    ):
        assert words in steps, words
    # step 1 — open the "training runs" link: the runs page in Model training mode, the crs view,
    # the last sweep's jobs grouped by method (two seeds each), its parent under "Additional runs"
    runs = ui["training runs"]
    assert "/runs?workflowType=machine_learning" in runs and "viewStateShareKey=crs" in runs
    page.goto(runs)
    page.get_by_text("Group: tp_schedule", exact=False).first.wait_for(timeout=90_000)
    body = page.inner_text("body")
    assert "Detect Issues" not in body and "Evaluation runs" not in body  # not the GenAI overview
    assert re.search(r"Group: tp_schedule\s+2\b", body) and re.search(r"Group: grpo\s+2\b", body), body[:2000]
    assert re.search(r"Additional runs\s+1\b", body)
    assert "Group by: method" in body and "5 matching runs" in body
    search = page.locator("input[placeholder*='metrics.rmse']").input_value()
    assert search.startswith("tags.sweep_id = '") and "crs.role" in search, search  # only the last sweep
    for column in ("1 main/eval_accuracy", "method", "schedule", "seed"):
        assert column in body, column
    # step 2 — MLflow 3.17 opens its Assistant panel once per browser; close it with its ×
    close = page.locator(ASSISTANT_CLOSE)
    if close.count():
        close.first.click()
        close.first.wait_for(state="detached", timeout=10_000)
    assert page.locator(ASSISTANT_CLOSE).count() == 0
    _shot(page, "ui-1-runs")
    # step 3 — the Chart toggle above the table: section "1 main", its reward chart a mean line and a
    # min–max band per method
    page.locator(CHART_TOGGLE).click()
    for method in METHODS:
        page.get_by_text(f"{method} (1 main/reward)", exact=True).first.wait_for(timeout=60_000)
    page.get_by_text("1 main", exact=False).first.wait_for()
    card = page.locator(CARD.format(title="1 main/reward"))
    assert card.count() == 1
    card.scroll_into_view_if_needed()
    for method in METHODS:
        assert card.get_by_text(f"{method} (1 main/reward)", exact=True).is_visible(), method
    bands = _paths(card, "path.js-fill", len(METHODS))  # the parent's empty series draws none
    assert len(bands) == len(METHODS), bands
    lines = _paths(card, "path.js-line", len(METHODS))
    assert len(lines) >= len(METHODS), lines  # a mean line per method (legend swatches are short)
    _shot(page, "ui-2-charts")
    _shot(page, "ui-3-reward", card)
    # step 4 — click a job's name in the list → its run page → Model metrics: crs's sections in order
    page.get_by_role("link", name=JOB, exact=True).first.click()
    page.get_by_role("tab", name="Model metrics").click()
    page.get_by_text(f"{JOB} (1 main/reward)", exact=True).first.wait_for(timeout=60_000)
    page.get_by_text("kl_policy_update", exact=True).first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    for section in ("1 main", "2 schedule", "3 credit", "9 trl"):
        assert section in body, section
    assert body.index("1 main") < body.index("2 schedule") < body.index("3 credit") < body.index("9 trl")
    assert "final/" not in body  # no one-point charts
    _shot(page, "ui-4-job-metrics")
    # step 5 — the printed "last sweep (parent run)" link: the grid, the command, the compare table
    page.goto(ui["last sweep (parent run)"])
    page.get_by_text("Show more", exact=True).first.click(timeout=60_000)  # unfold the description
    page.get_by_text("crs compare --sweep", exact=False).first.wait_for(state="visible", timeout=30_000)
    body = page.inner_text("body")
    assert "sweep: method=grpo,tp_schedule × seed=0,1" in body
    assert "percentile bootstrap" in body and "tp_schedule" in body  # the compare table
    assert "grid.method" in body  # the grid as params
    for child in ("grpo·s0", JOB):  # "Child runs", loaded after the page
        page.get_by_text(child, exact=False).first.wait_for(timeout=30_000)
    _shot(page, "ui-5-parent")
