"""Grids through real launchers: parallel local jobs (joblib) and a real SLURM job array.

Each job must produce its own MLflow child run under the sweep's parent run, a failing job must end
FAILED without stopping the others, and `crs compare` must see the right cells.

    pytest tests/test_sweeps.py            # the slurm test needs `make slurm-up` (skips otherwise)
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import run_crs
from mlflow.tracking import MlflowClient


def _crs(args, cwd, timeout):
    return run_crs(*args, cwd=cwd, timeout=timeout)


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("crs")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("crs.role") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("crs.role") == "job"]
    return client, parents, jobs


def _grid(tmp_path, launcher, extra=()):
    return [
        "train",
        "-m",
        "debug=fast",
        "trainer.max_steps=2",
        "diagnostics.every=0",
        "method=grpo,tp_schedule",
        "schedule=constant,linear",
        *extra,
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]


def _check_grid(tmp_path, n_jobs):
    client, parents, jobs = _runs(tmp_path)
    assert len(parents) == 1
    parent = parents[0]
    assert len(jobs) == n_jobs
    assert {j.data.tags["mlflow.parentRunId"] for j in jobs} == {parent.info.run_id}
    assert {j.data.tags["sweep_id"] for j in jobs} == {parent.data.tags["sweep_id"]}
    # grpo has no knob the schedule drives: grpo × linear would repeat grpo × constant and is skipped
    cells = {(j.data.tags["method"], j.data.tags["schedule"]) for j in jobs}
    assert cells == {("grpo", "none"), ("tp_schedule", "constant"), ("tp_schedule", "linear")}
    assert {j.data.tags["mlflow.runName"].rsplit("·", 1)[0] for j in jobs} == {
        "grpo",
        "tp_schedule·constant",
        "tp_schedule·linear",
    }
    note = client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    assert "duplicate job(s) skipped" in note and "`method` | `grpo`, `tp_schedule`" in note
    assert json.loads((tmp_path / "sweep" / "crs_sweep.json").read_text())["run_id"] == parent.info.run_id
    return client, parent, jobs


def test_local_grid_with_a_failing_job(tmp_path):
    """2 methods × 2 schedules × 2 seeds, joblib launcher (grpo's two schedules collapse into one cell)."""
    r = _crs(_grid(tmp_path, "local", ["seed=0,1", "inject_failure_at_step=null"]), tmp_path, 1200)
    assert r.returncode == 0, r.stderr[-3000:]
    client, parent, jobs = _check_grid(tmp_path, 6)
    assert all(j.info.status == "FINISHED" for j in jobs)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    # the comparison is attached to the parent when the sweep ends
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert {"compare/table.md", "compare/curve_accuracy.png"} <= arts
    assert "### crs compare" in client.get_run(parent.info.run_id).data.tags["mlflow.note.content"]
    # a second sweep (own store: MLflow caches sqlite connections per URI in this process) where one
    # job raises mid-training: the other job finishes and the failure is recorded
    other = tmp_path / "failing"
    other.mkdir()
    args = ["train", "-m", "debug=fast", "trainer.max_steps=2", "diagnostics.every=0", "method=grpo"]
    args += ["schedule=linear", "inject_failure_at_step=null,1", "hydra/launcher=local"]
    args += [f"hydra.sweep.dir={other / 'sweep'}", f"tracking.uri=sqlite:///{other / 'mlflow.db'}"]
    r = _crs(args, other, 900)
    assert r.returncode != 0  # Hydra re-raises the job's exception after the batch
    client, parents, jobs = _runs(other)
    assert sorted(j.info.status for j in jobs) == ["FAILED", "FINISHED"]
    failed = next(j for j in jobs if j.info.status == "FAILED")
    assert "injected failure" in failed.data.tags["error"]
    p = client.get_run(parents[0].info.run_id)
    assert (
        p.info.status == "FAILED"
        and p.data.tags["jobs.failed"] == "1"
        and p.data.tags["jobs.finished"] == "1"
    )
    uri = f"sqlite:///{other / 'mlflow.db'}"
    out = _crs(["compare", "--last", "--uri", uri, "--format", "json"], other, 120)
    assert out.returncode == 0, out.stderr
    by_cell = {c["label"]: (c["n_finished"], c["n_failed"]) for c in json.loads(out.stdout)["cells"]}
    assert by_cell == {"null": (1, 0), "1": (0, 1)}, out.stdout
    # relaunching the sweep (resume=auto) runs only the job that did not finish; the new parent adopts
    # the skipped FINISHED run, so it counts every job
    args[args.index(f"hydra.sweep.dir={other / 'sweep'}")] = f"hydra.sweep.dir={other / 'sweep2'}"
    r = _crs(args, other, 900)
    assert "crs: skipped: this config already FINISHED" in r.stdout, r.stdout[-2000:]
    client, parents, jobs = _runs(other)
    # the failed job resumed its own run from its step-1 checkpoint (runs.checkpoint_every=-1: every
    # ceil(max_steps/10) steps) and failed there again: still one run per job
    assert sorted(j.info.status for j in jobs) == ["FAILED", "FINISHED"]
    assert next(j for j in jobs if j.info.status == "FAILED").data.tags.get("crs.resumed") == "1"
    p2 = client.get_run(json.loads((other / "sweep2" / "crs_sweep.json").read_text())["run_id"])
    assert p2.data.tags["jobs.finished"] == "1" and p2.data.tags["jobs.failed"] == "1"


def _slurm_up() -> bool:
    if not shutil.which("sbatch") or not shutil.which("scontrol"):
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True, timeout=20).returncode == 0


@pytest.mark.slurm
@pytest.mark.skipif(not _slurm_up(), reason="no SLURM cluster (make slurm-up)")
def test_slurm_grid(tmp_path):
    """2 methods × 2 schedules through real sbatch (job array); every job produces its MLflow run."""
    args = _grid(
        tmp_path,
        "slurm",
        [
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1",
            "hydra.launcher.timeout_min=15",
            "hydra.launcher.partition=debug",
        ],
    )
    r = _crs(args, tmp_path, 1500)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    client, parent, jobs = _check_grid(tmp_path, 3)
    assert all(j.info.status == "FINISHED" for j in jobs)
    # the jobs really ran inside SLURM: submitit wrote the array's logs
    assert list((tmp_path / "sweep" / ".submitit").glob("*_0/*_log.out"))


@pytest.mark.slurm
@pytest.mark.skipif(not _slurm_up(), reason="no SLURM cluster (make slurm-up)")
def test_slurm_job_with_two_tasks_is_one_two_process_run(tmp_path):
    """``hydra.launcher.tasks_per_node=2``: the job's two SLURM tasks train as two processes of one run
    (submitit's TorchDistributedEnvironment → torch env:// rendezvous, crs/runs/distributed.py): one
    MLflow job run, FINISHED, trained by a world of 2. Planted bug: no adoption of the tasks → each task
    trains alone, two job runs, caught below."""
    args = [
        "train", "-m", "debug=fast", "trainer.max_steps=2", "diagnostics.every=0", "seed=0",
        "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=15", "hydra.launcher.partition=debug",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]  # fmt: skip
    r = _crs(args, tmp_path, 900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    client, parents, jobs = _runs(tmp_path)
    assert len(parents) == 1 and len(jobs) == 1, [j.info.run_name for j in jobs]
    job = jobs[0]
    assert job.info.status == "FINISHED"
    logs = sorted((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2, logs  # one log per task: two processes ran the job
    text = " ".join(" ".join(p.read_text().split()) for p in logs)  # rich wraps long lines
    assert "world 2 processes" in text, text[-3000:]
