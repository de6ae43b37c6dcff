"""The command line as a user meets it: help, config printing, one-line errors, schedules.

pytest tests/test_cli.py
"""

import os
import subprocess
import sys
from pathlib import Path

from conftest import run_crs


def crs(*args, cwd=None, timeout=120):
    return run_crs(*args, cwd=cwd, timeout=timeout)


def test_help():
    r = crs("--help")
    assert r.returncode == 0 and "crs train" in r.stdout and "crs compare" in r.stdout
    r = crs("train", "--help")
    assert r.returncode == 0 and "method" in r.stdout and "schedule" in r.stdout


def test_cfg_job_prints_the_composed_config():
    r = crs("train", "--cfg", "job", "method=tp_schedule", "schedule=linear")
    assert r.returncode == 0, r.stderr
    assert "name: tp_schedule" in r.stdout and "withhold: 1.0" in r.stdout and "name: linear" in r.stdout


def test_invalid_value_is_one_line_before_any_model_loads(tmp_path):
    cache = tmp_path / "cache"
    env_cwd = tmp_path
    for args, needle in [
        (["trainer.lr=-1"], "trainer.lr must be > 0"),
        (["trainer.lrr=1"], "lrr"),
        (["trainer.max_steps=abc"], "max_steps"),
        (
            ["schedule=nope"],
            "schedule=nope is not an option; choose one of: constant, cosine, gamma, linear, sigmoid",
        ),
        (["method=tp_schedule", "method.credit.tp_schedule.reward_on=middle"], "reward_on"),
    ]:
        r = subprocess.run(
            [sys.executable, "-m", "crs.cli", "train", *args],
            cwd=env_cwd,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "CRS_CACHE_DIR": str(cache), "PYTHONWARNINGS": "ignore"},
        )
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("crs: error:") and needle in lines[0], (args, r.stderr)
    # nothing was built, no run folder or store was created
    assert (
        not cache.exists() and not (tmp_path / "outputs").exists() and not (tmp_path / "mlflow.db").exists()
    )


def test_schedule_prints_paper_values(tmp_path):
    r = crs("schedule", "linear", "--plot", str(tmp_path / "rho.png"))
    assert r.returncode == 0, r.stderr
    rows = {}
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
        if len(cells) == 2:
            try:
                rows[float(cells[0])] = float(cells[1])
            except ValueError:
                pass
    expected = {0.0: 0.99, 0.2: 0.7425, 0.4: 0.495, 0.6: 0.2475, 0.8: 0.0, 0.9: 0.0, 1.0: 0.0}
    for p, v in expected.items():
        assert abs(rows[p] - v) < 1e-4, (p, rows.get(p))
    assert (tmp_path / "rho.png").stat().st_size > 1000


def test_schedule_shows_driven_knob():
    r = crs("schedule", "linear", "--steps", "5", "method=forking_tokens")
    assert r.returncode == 0, r.stderr
    assert "forking_tokens/keep_fraction" in r.stdout
    # keep_fraction = 1 − ρ: at step 0, ρ = 0.99 → 0.01
    assert "0.01" in r.stdout


def test_unknown_verb():
    r = crs("frobnicate")
    assert r.returncode == 2 and "unknown command" in r.stderr


def test_sweep_lists_grids():
    r = crs("sweep")
    assert r.returncode == 2 and "table1" in r.stderr and "methods_x_schedules" in r.stderr
    assert Path(__file__).resolve().parents[1].joinpath("sweeps", "table1.yaml").exists()
