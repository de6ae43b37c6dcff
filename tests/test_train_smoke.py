"""End-to-end `train(cfg)` with debug=fast into a temporary MLflow store.

Checks what a researcher relies on: the run exists with params, tags and per-step metrics, the policy's
weights changed, the same seed gives the same numbers, and a crash still leaves a FAILED run with the
metrics logged before it.

    pytest tests/test_train_smoke.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from crs.metric_layout import ui_key
from crs.train import resolve_model_path, train


def _client(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _only_run(client):
    exp = client.get_experiment_by_name("crs")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_smoke_run_is_tracked_and_learns_something(compose_cfg, tmp_path):
    cfg = compose_cfg("debug=fast", "method=tp_schedule", "schedule=linear", "trainer.save_model=true")
    summary = train(cfg)
    client = _client(tmp_path)
    run = _only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_id == summary["mlflow_run_id"]
    # params: the resolved config under short dotted names
    p = run.data.params
    assert p["method.name"] == "tp_schedule" and p["schedule.name"] == "linear" and float(p["trainer.lr"]) > 0
    assert p["seed"] == "0" and "trainer.max_steps" in p
    # tags
    t = run.data.tags
    for key in (
        "method",
        "schedule",
        "loss",
        "model",
        "benchmark",
        "seed",
        "git_sha",
        "version.trl",
        "version.torch",
    ):
        assert key in t, key
    # per-step metrics, one value per optimizer step
    steps = cfg.trainer.max_steps
    for name in (
        "reward",
        "reward_std",
        "accuracy",
        "entropy/all",
        "completions/mean_length",
        "clip_ratio/region_mean",
        "schedule/rho",
        "credit/trained_frac",
        "adv/mean",
        "adv/std",
        "adv/abs_mean",
        "diag/entropy_bin_0",
        "diag/kl_bin_9",
    ):
        hist = client.get_metric_history(run.info.run_id, ui_key(name))
        assert sorted(m.step for m in hist) == list(range(1, steps + 1)), name
    rho = [
        m.value
        for m in sorted(
            client.get_metric_history(run.info.run_id, ui_key("schedule/rho")), key=lambda m: m.step
        )
    ]
    # the authors' clock: rollouts from 1, s_max = int(T·0.8) — for T = 3 that is ρ = 0.99·(1 − s/2)
    from crs.schedules import schedule_at_step

    assert rho == pytest.approx([schedule_at_step("linear", s, steps) for s in range(1, steps + 1)], abs=1e-6)
    assert rho[0] == pytest.approx(0.495, abs=1e-6) and rho == sorted(rho, reverse=True)
    assert client.get_metric_history(run.info.run_id, ui_key("eval_accuracy"))
    # artifacts: the Hydra config, rollout samples, summary, heatmaps
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config", "samples", "summary.json", "plots"} <= arts
    # parameters changed
    init_dir, _ = resolve_model_path(cfg)
    before = load_file(f"{init_dir}/model.safetensors")
    after = load_file(f"{tmp_path}/job/model/model.safetensors")
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) >= len(before) // 2, f"only {len(changed)}/{len(before)} tensors changed"


def test_same_seed_same_metrics(compose_cfg, tmp_path):
    for _ in range(2):
        train(compose_cfg("debug=fast", "method=forking_tokens", "diagnostics.every=0"))
    client = _client(tmp_path)
    exp = client.get_experiment_by_name("crs")
    a, b = client.search_runs([exp.experiment_id])
    for name in ("reward", "loss", "entropy/all", "grad_norm"):
        ha = [
            m.value
            for m in sorted(client.get_metric_history(a.info.run_id, ui_key(name)), key=lambda m: m.step)
        ]
        hb = [
            m.value
            for m in sorted(client.get_metric_history(b.info.run_id, ui_key(name)), key=lambda m: m.step)
        ]
        assert ha == hb and ha, name


def test_failure_keeps_the_data_and_marks_the_run(compose_cfg, tmp_path):
    cfg = compose_cfg("debug=fast", "inject_failure_at_step=2")
    with pytest.raises(RuntimeError, match="injected failure"):
        train(cfg)
    client = _client(tmp_path)
    run = _only_run(client)
    assert run.info.status == "FAILED" and "injected failure" in run.data.tags["error"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, ui_key("reward"))] == [1, 2]


def test_tracking_none_writes_no_store(compose_cfg, tmp_path):
    summary = train(compose_cfg("debug=fast", "tracking=none", "trainer.max_steps=1", "diagnostics.every=0"))
    assert summary["mlflow_run_id"] is None and not (tmp_path / "mlflow.db").exists()
    assert (tmp_path / "job" / "summary.json").exists()


# every method, schedule and loss preset end to end (3 steps each), paired so each appears at least once
E2E = [
    ("grpo", "constant", "grpo"),
    ("tp_schedule", "linear", "gspo"),
    ("forking_tokens", "cosine", "dapo"),
    ("entropy_adv", "sigmoid", "dr_grpo"),
    ("focal_grpo", "gamma", "grpo"),
    ("adora", "step", "dapo"),
    ("r3l_amplify", "linear", "grpo"),
]


@pytest.mark.parametrize("method,schedule,loss", E2E, ids=["-".join(x) for x in E2E])
def test_every_method_schedule_and_loss_trains(compose_cfg, tmp_path, method, schedule, loss):
    cfg = compose_cfg(
        "debug=fast", f"method={method}", f"schedule={schedule}", f"loss={loss}", "diagnostics.every=2"
    )
    summary = train(cfg)
    assert summary["steps"] == 3
    client = _client(tmp_path)
    run = _only_run(client)
    assert run.info.status == "FINISHED"
    assert run.data.params["method.name"] == method and run.data.params["schedule.name"] == schedule
    assert len(client.get_metric_history(run.info.run_id, ui_key("adv/abs_mean"))) == 3
    assert len(client.get_metric_history(run.info.run_id, ui_key("loss"))) == 3


@pytest.mark.parametrize("signame", ["SIGTERM", pytest.param("SIGHUP", marks=pytest.mark.slow)])
def test_sigterm_ends_the_run_killed_with_its_metrics(tmp_path, signame):
    """What a SLURM time limit, scancel or a closed terminal does: status KILLED, metrics, samples and a
    partial summary kept, one line on stderr, exit 128 + signal."""
    import os
    import signal
    import subprocess
    import sys
    import time

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crs.cli",
            "train",
            "debug=fast",
            "trainer.max_steps=500",
            f"tracking.uri={uri}",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    client = MlflowClient(uri)
    deadline = time.time() + 300
    run_id = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(1)
        exp = client.get_experiment_by_name("crs") if (tmp_path / "mlflow.db").exists() else None
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if runs and client.get_metric_history(runs[0].info.run_id, ui_key("loss")):
            run_id = runs[0].info.run_id
            break
    assert run_id is not None, proc.stderr.read() if proc.poll() is not None else "no step logged in time"
    sig = getattr(signal, signame)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    assert proc.returncode == 128 + sig
    err_lines = [ln for ln in proc.stderr.read().splitlines() if ln.strip()]
    assert err_lines[-1].startswith("crs: error: run KILLED by " + signame), err_lines[-5:]
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and signame in run.data.tags["error"]
    assert client.get_metric_history(run_id, ui_key("loss"))
    home = Path(run.data.tags["crs.home"])
    assert json.loads((home / "summary.json").read_text())["incomplete"] is True
    assert json.loads((home / "samples.json").read_text())  # the rollouts collected so far
