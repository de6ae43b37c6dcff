"""No ghost after a restart: a SIGKILLed run with no checkpoint is closed KILLED (with the reason and a
pointer to the run that replaced it) when the same command starts again (issue 22)."""

from __future__ import annotations

import signal
import time

import pytest
from mlflow.tracking import MlflowClient
from test_resume import _crs  # the real `crs train` in a subprocess, as test_resume launches it

OVERRIDES = [
    "debug=fast",
    "trainer.max_steps=40",
    "runs.checkpoint_every=0",  # no checkpoint: the restart cannot resume, it must start a new run
    "trainer.num_threads=1",
    "diagnostics.every=0",
    "trainer.eval_steps=0",
]


@pytest.mark.timeout(900)
def test_killed_run_without_checkpoint_is_closed_killed_on_restart(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*OVERRIDES, f"tracking.uri={uri}"]
    proc = _crs(tmp_path, *args)
    client = MlflowClient(uri)
    deadline, first = time.time() + 400, None
    while time.time() < deadline and proc.poll() is None:  # wait until it has trained a few steps
        time.sleep(0.3)
        if not (tmp_path / "mlflow.db").exists():
            continue
        exp = client.get_experiment_by_name("crs")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, "5 optimizer/loss")[2:]:
            first = runs[0].info.run_id
            break
    assert first is not None and proc.poll() is None, "the first run did not get going"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert client.get_run(first).info.status == "RUNNING"  # the ghost a kill -9 leaves
    again = _crs(tmp_path, *args)
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out[-3000:]
    assert "closed KILLED" in out
    exp = client.get_experiment_by_name("crs")
    runs = {r.info.run_id: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "KILLED"]
    ghost = runs[first]
    new = next(r for r in runs.values() if r.info.run_id != first)
    assert ghost.data.tags["crs.replaced_by"] == new.info.run_id
    assert "no checkpoint" in ghost.data.tags["error"]


@pytest.mark.parametrize(
    "max_steps,every,expected", [(60, -1, 6), (300, -1, 30), (3, -1, 1), (300, 25, 25), (300, 0, 0)]
)
def test_default_checkpoint_cadence_loses_at_most_a_tenth(compose_cfg, max_steps, every, expected):
    """runs.checkpoint_every=-1 (the default): every ceil(max_steps/10) steps (the killed-at-39-of-60 case
    of the issue resumes from step 36)."""
    from crs.assemble import _checkpoint_steps

    cfg = compose_cfg(f"trainer.max_steps={max_steps}", f"runs.checkpoint_every={every}")
    assert _checkpoint_steps(cfg) == expected
    assert compose_cfg().runs.checkpoint_every == -1
