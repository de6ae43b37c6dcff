"""A CPU rehearsal of the prepared GPU pass (``scripts/gpu_check.sh``): its parts must not rot between
the sessions that are lent a GPU (15 minutes of device time each: a script that breaks on an argument
it was never run with here spends them). Each part runs here as the script calls it, shrunk:

* ``python -m crs.perf`` (the side-by-side plain TRL / crs / crs static benchmark) end to end on the
  tiny model, writing the JSON the note quotes;
* ``scripts/gpu_long_run.py`` (a default run under a finiteness watch) for a few steps, with both rollout
  engines, down to its ``RESULT`` line;
* the script itself parses (``bash -n``) and names every override the long runs use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(args, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def test_bench_runs_end_to_end_and_writes_its_json(tmp_path):
    out = tmp_path / "bench.json"
    p = _run(
        [sys.executable, "-m", "crs.perf", "--device", "cpu", "--model", "tiny", "--steps", "3", "--warmup", "1",
         "--batch", "8", "--tokens", "8", "--rounds", "2", "--variants", "trl,grpo+static", "--json", str(out)]
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads(out.read_text())
    summary = rep["summary"]
    assert summary["baseline"] == "trl" and rep["rounds_done"] == 2 == summary["rounds"]
    for name in ("trl", "grpo+static"):
        v = summary["variants"][name]
        assert len(v["s_per_step_rounds"]) == 2 and v["s_per_step_median"] > 0
        assert v["ratio_min"] <= v["ratio_median"] <= v["ratio_max"]
        assert set(v["phases_s"]) >= {"generation", "reward", "credit", "fwd_bwd", "diagnostics"}
        assert v["peak_mem_mb"] > 0 and v["tokens_per_s"] > 0
    assert summary["variants"]["trl"]["ratio_median"] == 1.0
    assert "baseline_round_spread" in summary
    assert "× trl" in p.stdout  # the table the note quotes


def test_bench_keeps_its_complete_rounds_when_its_budget_runs_out(tmp_path):
    out = tmp_path / "bench.json"
    p = _run(
        [sys.executable, "-m", "crs.perf", "--device", "cpu", "--model", "tiny", "--steps", "2", "--warmup", "1",
         "--batch", "8", "--tokens", "8", "--rounds", "5", "--variants", "trl,grpo", "--budget-s", "0.001",
         "--json", str(out)]
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    assert "stopping after 1 of 5 rounds" in p.stderr
    rep = json.loads(out.read_text())
    assert rep["rounds_done"] == 1 and rep["summary"]["rounds"] == 1
    assert all(len(v) == 1 for v in rep["runs"].values())
    assert "1 interleaved rounds" in p.stdout.replace("\n", " ")


def test_long_run_watches_side_by_side_reach_their_result_lines():
    """Two watched runs at once, one per rollout engine, as gpu_check.sh starts them (side by side: a
    shared run folder made all but one fail on its lock — found by running the script here)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "scripts/gpu_long_run.py",
                "tracking=none",
                "debug=fast",
                "trainer.max_steps=3",
                f"trainer.generation={generation}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )  # fmt: skip
        for generation in ("hf", "static")
    ]
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, (stdout + stderr)[-3000:]
        result = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        assert result and result[-1].startswith("RESULT FINISHED"), stdout[-2000:]
        assert json.loads(result[-1].split(" ", 2)[2])["steps"] == 3
        watch = [ln for ln in stdout.splitlines() if ln.startswith("FIRST_NONFINITE")]
        assert watch and watch[-1].startswith("FIRST_NONFINITE null"), stdout[-2000:]


def test_gpu_check_script_parses_and_its_overrides_compose():
    script = REPO / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    from crs.cli import compose

    # every LONG_* default the script passes to crs train composes (STEPS substituted)
    overrides = [
        ln.split(":-", 1)[1].split('"', 2)[1].replace("$STEPS", "30")
        for ln in text.splitlines()
        if ln.startswith("LONG_") and ":-" in ln
    ]
    assert len(overrides) >= 3, overrides
    for ov in overrides:
        cfg = compose(["tracking=none", *ov.split()])
        assert cfg.trainer.max_steps == 30
