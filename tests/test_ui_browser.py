"""`crs ui` in a real browser: Debian's Chromium driven by Playwright on a small store.

The store is written by crs's own tracking layer (job runs through :class:`crs.tracking.MlflowTracker`,
so names, tags, metric sections and summary tags are what ``crs train`` writes; the parent's description,
grid params and compare artifacts through :mod:`crs.sweep` / :mod:`crs.compare.publish`). The test starts
``crs ui`` on it, opens the printed link and checks what a researcher sees: the training-runs page (not
the GenAI overview), the sweep's parent with its children, the parent's description and the charts of
one child in crs's sections. Screenshots are kept in ``$CRS_SCREENSHOTS`` (default: pytest's tmp dir).

Needs ``apt-get install chromium`` and ``pip install playwright`` (Playwright's own browser download
does not work offline); skips otherwise.

    pytest -m slow tests/test_ui_browser.py
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install -y chromium)"),
    pytest.mark.skipif(
        importlib.util.find_spec("playwright") is None, reason="no playwright (pip install playwright)"
    ),
]


def build_store(root: Path) -> dict:
    """A sweep of grpo × tp_schedule × {constant, linear} × 2 seeds, 12 steps each, as crs logs it."""
    import math
    import random

    from mlflow.tracking import MlflowClient

    from crs.compare.publish import publish
    from crs.naming import SEP, record_skip, sweep_grid
    from crs.sweep import _describe_parent, finalize_sweep
    from crs.tracking import MlflowTracker, ensure_experiment

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp_id = ensure_experiment(client, "crs", uri)
    overrides = ["debug=fast", "method=grpo,tp_schedule", "schedule=constant,linear", "seed=0,1"]
    grid = sweep_grid(overrides)
    parent = client.create_run(
        exp_id,
        run_name="sweep methods_x_schedules: method × schedule × seed",
        tags={"crs.role": "sweep", "sweep_id": "b10c4e57", "swept_keys": "method,schedule,seed"},
    )
    info = {
        "run_id": parent.info.run_id,
        "uri": uri,
        "experiment": "crs",
        "sweep_id": "b10c4e57",
        "swept_keys": ["method", "schedule", "seed"],
        "sweep_dir": str(root / "sweep"),
        "grid": grid,
        "config_name": "methods_x_schedules",
        "overrides": overrides,
        "launcher": "local",
        "n_jobs": 8,
    }
    _describe_parent(client, info)
    job = 0
    for method in ("grpo", "tp_schedule"):
        for schedule in ("constant", "linear"):
            if method == "grpo" and schedule == "linear":  # crs train skips these jobs as duplicates
                for seed in (0, 1):
                    ov = [f"method={method}", f"schedule={schedule}", f"seed={seed}"]
                    record_skip(info["sweep_dir"], f"dup{seed}", ov, "grpo has no knob the schedule drives")
                continue
            for seed in (0, 1):
                knob = method != "grpo"
                tags = {
                    "crs.role": "job",
                    "method": method,
                    "schedule": schedule if knob else "none",
                    "drives": "tp_schedule/withhold" if knob else "none",
                    "loss": "grpo",
                    "seed": seed,
                    "sweep_id": "b10c4e57",
                    "job_num": job,
                    "sweep.method": method,
                    "sweep.schedule": schedule,
                    "sweep.seed": seed,
                }
                name = SEP.join([method, *([schedule] if knob else []), f"s{seed}"])
                tracker = MlflowTracker(uri, "crs")
                tracker.start(run_name=name, parent_run_id=parent.info.run_id, tags=tags)
                rng = random.Random(job)
                speed = 0.25 if method == "tp_schedule" else 0.15
                for step in range(1, 13):
                    acc = min(1.0, 0.3 + speed * math.log1p(step) + rng.uniform(-0.05, 0.05))
                    rho = 1 - step / 12 if schedule == "linear" else 1.0
                    logs = {
                        "reward": acc,
                        "accuracy": acc,
                        "entropy/all": 0.8 - 0.03 * step,
                        "entropy/selected": 0.7,
                        "schedule/rho": rho,
                        "credit/tp_schedule/withhold": 0.8 * rho,
                        "credit/trained_frac": 1 - 0.5 * rho,
                        "adv/mean": 0.0,
                        "loss": 1e-8,
                        "grad_norm": 1.0,
                        "epoch": step / 100,
                        "total_flos": 0.0,
                        "diag/kl": 0.001 * step,
                        "diag/kl_bin_0": 0.0001,
                        "diag/entropy_bin_0": 0.5,
                    }
                    tracker.log_metrics(logs, step)
                    if step in (1, 12):
                        tracker.log_metrics({"eval_accuracy": acc - 0.1, "eval_runtime": 1.0}, step)
                tracker.log_metrics({"final/eval_accuracy_end": acc - 0.1, "final/train_time_s": 12.5}, 12)
                tracker.end("FINISHED")
                job += 1
    counts = finalize_sweep(info)
    publish(info, counts)
    return info


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-store")
    info = build_store(root)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "crs.cli", "ui", "--port", str(port), "--no-browser"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    link = None
    deadline = time.time() + 180
    lines = []
    while time.time() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        lines.append(line)
        if "training runs:" in line:
            link = line.split("training runs:", 1)[1].strip()
            break
    if link is None:
        proc.terminate()
        pytest.fail("crs ui printed no link:\n" + "".join(lines))
    yield {"link": link, "info": info, "base": f"http://127.0.0.1:{port}"}
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
        pg = browser.new_page(viewport={"width": 1600, "height": 1000})
        pg.shots = shots
        yield pg
        browser.close()


def _shot(page, name: str) -> Path:
    path = page.shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _close_assistant(page) -> None:
    """MLflow 3.17 opens an "MLflow Assistant" side panel on first load; it hides a third of the page."""
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()


def test_runs_page_shows_the_sweep_and_its_children(ui, page):
    assert "/runs?workflowType=machine_learning" in ui["link"] and "viewStateShareKey=crs" in ui["link"]
    page.goto(ui["link"])
    page.get_by_text("sweep methods_x_schedules", exact=False).first.wait_for(timeout=90_000)
    _close_assistant(page)
    # the training-runs view in the crs saved view, not MLflow's GenAI overview
    body = page.inner_text("body")
    assert "Detect Issues" not in body and "Evaluation runs" not in body
    for column in ("1 main/eval_accuracy", "method", "schedule", "seed"):
        assert column in body, column
    # unfold the parent: its children carry the comparison in their names
    page.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    for name in ("grpo·s0", "tp_schedule·linear·s1", "tp_schedule·constant·s0"):
        page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
    body = page.inner_text("body")
    assert "grpo·linear" not in body and "grpo·constant" not in body  # grpo drives no knob: one cell
    assert "none" in body  # ... tagged schedule=none
    _shot(page, "ui_runs")


def test_parent_run_has_the_grid_and_the_comparison(ui, page):
    info = ui["info"]
    page.goto(f"{ui['base']}/#/experiments/{_exp(ui)}/runs/{info['run_id']}?workflowType=machine_learning")
    page.get_by_text("crs sweep", exact=False).first.wait_for(timeout=60_000)
    _close_assistant(page)
    body = page.inner_text("body")
    assert "duplicate job(s) skipped" in body and "crs compare --sweep b10c4e57" in body
    assert "eval acc (end)" in body and "percentile bootstrap" in body  # the compare table
    assert "grid.method" in body  # the grid as params
    for child in ("grpo·s0", "tp_schedule·linear·s1"):  # "Child runs" (loaded after the page)
        page.get_by_text(child, exact=False).first.wait_for(timeout=30_000)
    more = page.get_by_text("Show more", exact=True)
    if more.count():  # unfold the description for the screenshot
        more.first.click()
        page.get_by_text("Steps to acc≥0.5", exact=False).first.wait_for(timeout=10_000)
    _shot(page, "ui_parent")


def test_child_charts_are_in_crs_sections(ui, page):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ui["info"]["uri"])
    child = client.search_runs([_exp(ui)], "attributes.run_name = 'tp_schedule·linear·s0'")[0]
    page.goto(
        f"{ui['base']}/#/experiments/{_exp(ui)}/runs/{child.info.run_id}/model-metrics?workflowType=machine_learning"
    )
    page.get_by_text("1 main", exact=False).first.wait_for(timeout=60_000)
    _close_assistant(page)
    page.get_by_text("kl_policy_update", exact=True).first.wait_for(timeout=30_000)
    # the charts have drawn when their legends show
    page.get_by_text("tp_schedule·linear·s0 (1 main/accuracy)", exact=False).first.wait_for(timeout=60_000)
    body = page.inner_text("body")
    for section in ("1 main", "2 schedule", "3 credit", "9 trl"):
        assert section in body, section
    assert body.index("1 main") < body.index("2 schedule") < body.index("3 credit") < body.index("9 trl")
    for chart in ("accuracy", "eval_accuracy", "entropy", "reward"):
        assert f"\n{chart}\n" in body, chart
    assert "final/" not in body and "eval_schedule" not in body  # no one-point charts, no eval copies
    _shot(page, "ui_charts")
    # grpo has no driven knob: no schedule section at all
    grpo = client.search_runs([_exp(ui)], "attributes.run_name = 'grpo·s0'")[0]
    page.goto(
        f"{ui['base']}/#/experiments/{_exp(ui)}/runs/{grpo.info.run_id}/model-metrics?workflowType=machine_learning"
    )
    page.get_by_text("1 main", exact=False).first.wait_for(timeout=60_000)
    assert "2 schedule" not in page.inner_text("body")


def _exp(ui) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(ui["info"]["uri"]).get_run(ui["info"]["run_id"]).info.experiment_id
