"""Acceptance (issue 9): SIGKILL a training process at a random step, rerun the same command, and get
one MLflow run holding every metric step exactly once up to the final step, with the same ρ (and, on
CPU with restored RNG and data position, the same rollouts) as an uninterrupted run.

    pytest tests/test_resume.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from crs.metric_layout import ui_key

STEPS = 8
OVERRIDES = [
    "debug=fast",
    "method=tp_schedule",  # a driven knob, so ρ is logged (crs/metric_layout.py)
    f"trainer.max_steps={STEPS}",
    "runs.checkpoint_every=2",
    "runs.keep_on_finish=true",
    "trainer.num_threads=1",
    "diagnostics.every=0",
]


def _history(client, run_id, key):
    """(step, value) pairs of a trainer metric, under the MLflow key the UI layout gives it."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, ui_key(key)))


def _crs(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crs.cli", "train", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_sigkill_then_resume_auto_continues_the_same_run(compose_cfg, tmp_path):
    from crs.train import train

    # the uninterrupted reference (same config, its own store)
    ref_summary = train(compose_cfg(*OVERRIDES, "resume=never"))
    ref = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    ref_id = ref_summary["mlflow_run_id"]
    ref_rho = dict(_history(ref, ref_id, "schedule/rho"))
    ref_reward = dict(_history(ref, ref_id, "reward"))
    assert sorted(ref_rho) == list(range(1, STEPS + 1))

    work = tmp_path / "work"
    work.mkdir()
    uri = f"sqlite:///{work / 'mlflow.db'}"
    args = [*OVERRIDES, f"tracking.uri={uri}"]
    # after the first checkpoint (step 2) exists, and early enough that the run is still going when the
    # kill lands (on an idle machine a few more steps finish between the poll and the signal)
    kill_at = random.Random().randint(3, STEPS - 3)
    proc = _crs(work, *args)
    client = MlflowClient(uri)
    deadline, run_id = time.time() + 400, None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if not (work / "mlflow.db").exists():
            continue
        exp = client.get_experiment_by_name("crs")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        published = list(work.glob("outputs/runs/*/*/checkpoints/checkpoint-*/crs_checkpoint.json"))
        if (
            runs
            and published
            and len(client.get_metric_history(runs[0].info.run_id, ui_key("loss"))) >= kill_at
        ):
            run_id = runs[0].info.run_id
            proc.send_signal(signal.SIGKILL)
            break
    out = proc.communicate(timeout=60)[0]
    assert run_id is not None, f"never reached step {kill_at}:\n{out[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert client.get_run(run_id).info.status == "RUNNING"  # a ghost until someone resumes or cleans it
    # the steps the killed process really finished (the poll above is not instantaneous)
    done = max(m.step for m in client.get_metric_history(run_id, ui_key("loss")))
    if done >= STEPS:
        pytest.skip(f"the first process finished all {STEPS} steps before the kill landed")
    # the checkpoints published when the process died (it is dead: the folder no longer changes); the
    # resume must take the newest of them
    published = sorted(
        int(p.parent.name[len("checkpoint-") :])
        for p in work.glob("outputs/runs/*/*/checkpoints/checkpoint-*/crs_checkpoint.json")
    )
    assert published and published[-1] <= done, (published, done)

    again = _crs(work, *args)
    out = again.communicate(timeout=400)[0]
    assert again.returncode == 0, out[-3000:]
    assert "resuming run" in out, out[-3000:]

    exp = client.get_experiment_by_name("crs")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, f"killed at step {kill_at}: {len(runs)} runs"
    run = runs[0]
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert run.data.tags["crs.resumed"] == "1"
    resumed_from = int(run.data.tags["crs.resumed_from_step"])
    assert 2 <= resumed_from <= done and resumed_from % 2 == 0, (resumed_from, done, kill_at)
    assert resumed_from == published[-1], (resumed_from, published, done, kill_at)
    # every per-step metric: each step exactly once, the final step reached
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        dup = [s for s, n in Counter(steps).items() if n > 1]
        assert not dup, f"{key}: steps logged twice {dup} (killed at {kill_at})"
    assert [s for s, _ in _history(client, run_id, "loss")] == list(range(1, STEPS + 1))
    # (MLflow holds values rounded to 6 significant digits: crs/metric_layout.py)
    # ρ where the resumed process took over equals the schedule's value (= the uninterrupted run's)
    rho = dict(_history(client, run_id, "schedule/rho"))
    assert rho == pytest.approx(ref_rho, abs=1e-9), (kill_at, rho, ref_rho)
    home = Path(run.data.tags["crs.home"])
    final_state = json.loads(
        (home / "checkpoints" / f"checkpoint-{STEPS}" / "trainer_state.json").read_text()
    )
    recomputed = {h["step"]: h for h in final_state["log_history"] if "schedule/rho" in h}
    assert recomputed[resumed_from + 1]["schedule/rho"] == pytest.approx(ref_rho[resumed_from + 1], abs=1e-5)
    # same data position and RNG: the rollouts after the resume point score as in the uninterrupted run
    for step in range(resumed_from + 1, STEPS + 1):
        assert recomputed[step]["reward"] == pytest.approx(ref_reward[step], abs=1e-5), (step, kill_at)
    # the second process trained only the steps after its checkpoint (not a fresh start that happens to
    # reproduce the same numbers on a deterministic CPU)
    marker = json.loads((home / "checkpoints" / f"checkpoint-{STEPS}" / "crs_checkpoint.json").read_text())
    assert marker["steps_this_attempt"] == STEPS - resumed_from, (marker["steps_this_attempt"], resumed_from)
    summary = json.loads((home / "summary.json").read_text())
    assert summary["steps"] == STEPS and summary["resumed"] == 1


def test_latest_checkpoint_is_the_newest_complete_one(tmp_path):
    """Numeric order of the step (10 after 4, not before as in string order); a folder without the marker
    (a save cut short), a name that is not a step and a plain file do not count."""
    from crs.runs.checkpoint import MARKER, checkpoints_dir, complete_checkpoints, latest_checkpoint

    assert latest_checkpoint(tmp_path) is None  # no checkpoints folder at all
    root = checkpoints_dir(tmp_path)
    root.mkdir()
    assert latest_checkpoint(tmp_path) is None
    for step in (4, 2, 10, 6):
        (root / f"checkpoint-{step}").mkdir()
        (root / f"checkpoint-{step}" / MARKER).write_text(json.dumps({"step": step}))
    (root / "checkpoint-12").mkdir()  # incomplete: newer, but no marker
    (root / "checkpoint-best").mkdir()
    (root / "checkpoint-best" / MARKER).write_text("{}")
    (root / "checkpoint-20").write_text("not a folder")
    assert [p.name for p in complete_checkpoints(tmp_path)] == [f"checkpoint-{s}" for s in (2, 4, 6, 10)]
    assert latest_checkpoint(tmp_path) == root / "checkpoint-10"
    # once the newer save completes, it is the latest
    (root / "checkpoint-12" / MARKER).write_text(json.dumps({"step": 12}))
    assert latest_checkpoint(tmp_path) == root / "checkpoint-12"
    # a single complete checkpoint
    only = tmp_path / "only"
    (checkpoints_dir(only) / "checkpoint-3").mkdir(parents=True)
    (checkpoints_dir(only) / "checkpoint-3" / MARKER).write_text("{}")
    assert latest_checkpoint(only) == checkpoints_dir(only) / "checkpoint-3"


def test_resume_from_a_run_folder_takes_its_latest_checkpoint(tmp_path):
    """``resume=<run folder>``: the plan continues from the newest complete checkpoint there."""
    from omegaconf import OmegaConf

    from crs.runs.checkpoint import MARKER, checkpoints_dir, plan_resume

    home = tmp_path / "run"
    for step in (2, 4, 8):
        folder = checkpoints_dir(home) / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / MARKER).write_text(json.dumps({"step": step, "home": str(home), "run_id": None}))

    class _NoTracker:
        run_id = None

        def exists(self, run_id):
            return False

    cfg = OmegaConf.create({"resume": str(home)})
    plan = plan_resume(cfg, _NoTracker(), tmp_path / "new", key="k", multirun=False)
    assert plan.checkpoint == checkpoints_dir(home) / "checkpoint-8"
    assert plan.marker["step"] == 8 and plan.home == home and plan.resuming
