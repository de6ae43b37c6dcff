"""Runs you can trust (issue 9): each observed failure, reproduced and checked.

Fast, in-process where possible; the few that need real processes run the real CLI.

    pytest tests/test_trust.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from crs.errors import ConfigError

# ----------------------------------------------------------------------------------------- preflight


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_bad_resources_are_one_line_each(tmp_path):
    from crs.runs.preflight import check_data_files, check_model_path, check_tracking

    with pytest.raises(ConfigError, match="model.name_or_path: no such folder '/nonexistent'"):
        check_model_path("/nonexistent")
    (tmp_path / "m").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        check_model_path(str(tmp_path / "m"))
    with pytest.raises(ConfigError, match="neither a local model folder nor a hub id"):
        check_model_path("nobody/no-such-model")

    bench = {"name": "hf", "question_field": "question", "answer_field": "answer", "answer_format": "gsm8k"}
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        check_data_files({**bench, "path": str(tmp_path / "empty.jsonl")})
    f = _jsonl(tmp_path / "nocol.jsonl", [{"q": "1+1", "answer": "#### 2"}])
    with pytest.raises(ConfigError, match="no column 'question'"):
        check_data_files({**bench, "path": f})
    rows = [{"question": f"{i}+1", "answer": f"#### {i + 1}"} for i in range(10)]
    rows[3]["answer"] = "just 4"
    rows[7]["answer"] = "eight"
    f = _jsonl(tmp_path / "gsm.jsonl", rows)
    with pytest.raises(
        ConfigError, match=r"2 of 10 rows in .*gsm.jsonl have no an answer after '####' \(rows 4, 8\)"
    ):
        check_data_files({**bench, "path": f})
    f = _jsonl(tmp_path / "math.jsonl", [{"question": "x", "answer": "1"}, {"question": "y", "answer": None}])
    with pytest.raises(ConfigError, match=r"1 of 2 rows .* \(rows 2\)"):
        check_data_files({**bench, "answer_format": "boxed", "path": f})
    with pytest.raises(ConfigError, match="no such file"):
        check_data_files({**bench, "path": str(tmp_path / "missing.jsonl")})

    with pytest.raises(ConfigError, match="cannot write the store folder"):
        check_tracking({"name": "mlflow", "uri": "sqlite:////proc/crs-test/mlflow.db"})
    t0 = time.time()
    with pytest.raises(ConfigError, match="no MLflow server answers at http://ann:\\*\\*\\*@127.0.0.1:9"):
        check_tracking({"name": "mlflow", "uri": "http://ann:hunter2@127.0.0.1:9"})
    assert time.time() - t0 < 10
    check_tracking({"name": "mlflow", "uri": f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"})
    assert not (tmp_path / "new").exists()  # the probe creates nothing


def test_cli_unreachable_store_fails_in_seconds_without_creating_anything(tmp_path):
    from conftest import run_crs

    t0 = time.time()
    r = run_crs(
        "train", "debug=fast", "tracking.uri=http://user:pw123@127.0.0.1:9", cwd=tmp_path, timeout=120
    )
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no MLflow server answers" in lines[0] and "pw123" not in r.stderr + r.stdout
    assert time.time() - t0 < 60
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------------- credentials


def test_redaction_of_uris_and_secret_values():
    from crs.runs.redact import redact_mapping, redact_text, redact_yaml_text, split_credentials

    assert redact_text("see http://ann:s3cret@host:5000/x") == "see http://ann:***@host:5000/x"
    assert redact_text("tracking.uri=https://u:p@h token=abc api_key: xyz") == (
        "tracking.uri=https://u:***@h token=*** api_key: ***"
    )
    assert split_credentials("http://ann:s3cret@host:5000/p") == ("http://host:5000/p", "ann", "s3cret")
    d = redact_mapping({"trainer.extra.hub_token": "hf_abc", "seed": 1, "tags": "password=pw1,x"})
    assert d == {"trainer.extra.hub_token": "***", "seed": 1, "tags": "password=***,x"}
    assert redact_yaml_text("  hub_token: hf_abc\n  lr: 1\n") == "  hub_token: ***\n  lr: 1\n"


def test_planted_secrets_never_reach_the_store_or_the_output_folder(compose_cfg, tmp_path):
    from crs.train import train

    secret_a, secret_b = "hfTOKENplanted123", "pwPLANTED456"
    cfg = compose_cfg(
        "debug=fast",
        "trainer.max_steps=1",
        "diagnostics.heatmap=false",
        f"+trainer.extra.hub_token={secret_a}",
        f"tags=['password={secret_b}']",
    )
    out = tmp_path / "job"
    (out / ".hydra").mkdir(parents=True)
    (out / ".hydra" / "overrides.yaml").write_text(
        f"- +trainer.extra.hub_token={secret_a}\n- tags=[password={secret_b}]\n"
    )
    train(cfg)
    for root in (tmp_path,):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert secret_a.encode() not in data and secret_b.encode() not in data, path


# ------------------------------------------------------------------------------------------ NaN/inf


def test_non_finite_advantages_stop_the_run_failed_with_the_step(compose_cfg, tmp_path):
    from crs.credit import CreditBatch, Method
    from crs.methods import METHODS, register
    from crs.runs.guard import NonFiniteError
    from crs.train import train

    if "nan_after" not in METHODS:

        def nan_after(batch: CreditBatch, step: float = 0.0) -> CreditBatch:
            """Test-only: NaN advantages (a method whose math broke)."""
            return batch.replace(advantages=batch.advantages * float("nan"))

        register(Method("nan_after", nan_after, ranges={"step": "[0, inf)"}))

    cfg = compose_cfg("debug=fast", "+method.credit.nan_after={}", "runs.checkpoint_every=1")
    with pytest.raises(NonFiniteError, match="non-finite credit advantages at step 1"):
        train(cfg)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("crs").experiment_id])[0]
    assert run.info.status == "FAILED" and "non-finite credit advantages at step 1" in run.data.tags["error"]
    assert run.data.tags["crs.nonfinite"] == "credit advantages@1"
    from crs.metric_layout import ui_key

    hist = client.get_metric_history(run.info.run_id, ui_key("nonfinite/credit advantages"))
    assert [m.step for m in hist] == [1] and hist[0].value != hist[0].value  # NaN logged, not dropped


def test_nan_logits_are_caught_before_sampling():
    """A NaN policy stops with one named error instead of the sampler's assert."""
    from crs.runs.guard import NonFiniteError, logit_guard

    head = torch.nn.Linear(4, 8)
    head.register_forward_hook(logit_guard(lambda: 7))
    head(torch.randn(2, 4))  # finite: passes
    with torch.no_grad():
        head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite logits at step 7"):
        torch.multinomial(torch.softmax(head(torch.randn(2, 4)), -1), 1)


def test_collapse_warning():
    from crs.runs.guard import CollapseWatch
    from crs.tracking import NullTracker

    watch = CollapseWatch(vocab_size=100, patience=3, tracker=NullTracker())
    h = 0.99 * torch.log(torch.tensor(100.0)).item()
    assert watch.update({"entropy/all": h, "reward": 0.0}, 1) is None
    assert watch.update({"entropy/all": 0.5, "reward": 0.0}, 2) is None  # streak broken
    msgs = [watch.update({"entropy/all": h, "reward": 0.0}, s) for s in (3, 4, 5)]
    assert msgs[:2] == [None, None] and "policy collapsed at step 5" in msgs[2]


# --------------------------------------------------------------------------------- ghosts and locks


def test_dead_runs_are_detected_and_cleaned(tmp_path):
    from crs.runs.liveness import close_dead_runs, identity_tags
    from crs.runs.lock import RunLock
    from crs.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    live_home, dead_home = tmp_path / "live", tmp_path / "dead"
    lock = RunLock(live_home)
    assert lock.acquire()
    ids = {}
    for name, home in (("live", live_home), ("dead", dead_home)):
        t = MlflowTracker(uri, "crs")
        t.start(run_name=name, tags={**identity_tags(str(home)), "crs.role": "job"})
        ids[name] = t.run_id
    dead_home.mkdir()
    (dead_home / RunLock.NAME).write_text("12345")  # left behind by a kill -9: nobody holds it
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("crs").experiment_id
    dead = close_dead_runs(client, uri, [exp])
    assert [r.info.run_id for r, _ in dead] == [ids["dead"]]
    assert client.get_run(ids["dead"]).info.status == "KILLED"
    assert "ghost: process died" in client.get_run(ids["dead"]).data.tags["error"]
    assert client.get_run(ids["live"]).info.status == "RUNNING"
    lock.release()
    from crs.runs.liveness import death_reason

    assert death_reason({"crs.heartbeat": str(time.time() - 3600)}, stale_after_s=600).startswith(
        "no heartbeat"
    )


def test_first_use_of_a_fresh_store_by_several_processes_at_once(tmp_path):
    """The migration race that corrupted mlflow.db: 4 processes open the same new store together."""
    code = (
        "import sys; from crs.tracking import MlflowTracker; t = MlflowTracker(sys.argv[1], 'crs'); "
        "t.start(run_name=sys.argv[2]); t.end('FINISHED')"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri, f"r{i}"], env=env, stderr=subprocess.PIPE, text=True
        )
        for i in range(4)
    ]
    errs = [p.communicate(timeout=180)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("crs").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["r0", "r1", "r2", "r3"]


def test_output_folders_are_unique_within_a_second():
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from crs.train import CONF_DIR

    dirs = set()
    for _ in range(3):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            c = hcompose(config_name="train", return_hydra_config=True)
            dirs.add(str(c.hydra.run.dir))
    assert len(dirs) == 3, dirs


@pytest.mark.slow
def test_several_jobs_at_once_in_a_fresh_folder(tmp_path):
    """Three `crs train` started together: three FINISHED runs, three folders, each with its own config."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "crs.cli",
                "train",
                "debug=fast",
                "trainer.max_steps=1",
                f"seed={s}",
                "diagnostics.heatmap=false",
                "trainer.num_threads=1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for s in (1, 2, 3)
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("crs").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)
    folders = {r.data.tags["crs.home"] for r in runs}
    assert len(folders) == 3
    for r in runs:
        cfg = (Path(r.data.tags["crs.home"]) / ".hydra" / "config.yaml").read_text()
        assert f"seed: {r.data.params['seed']}\n" in cfg


def test_a_store_that_stops_answering_fails_fast_with_one_line(monkeypatch):
    """Mid-run outage: the metric write raises TrackingError in seconds (no 8-minute retry stall)."""
    from crs.tracking import MlflowTracker, TrackingError
    from crs.train import quiet_env

    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(var, "")  # restored after the test (the tracker sets the credentials)
        monkeypatch.delenv(var)
    quiet_env()  # caps MLflow's HTTP retries, as `crs train` does
    t = MlflowTracker("http://ann:pw9@127.0.0.1:9", "crs")
    from mlflow.tracking import MlflowClient

    t.client, t.run_id = MlflowClient(t.uri), "0" * 32
    t0 = time.time()
    with pytest.raises(TrackingError) as err:
        t.log_metrics({"loss": 1.0}, step=1)
    assert time.time() - t0 < 60
    msg = str(err.value)
    assert "\n" not in msg and "127.0.0.1:9" in msg and "pw9" not in msg


def test_compare_marks_runs_of_dead_processes(tmp_path):
    from crs.runs.liveness import dead_in_row
    from crs.runs.lock import RunLock

    home = tmp_path / "home"
    home.mkdir()
    (home / RunLock.NAME).write_text("1")
    row = {"status": "RUNNING", "tags.crs.home": str(home), "tags.crs.pid": "1", "tags.crs.host": "elsewhere"}
    assert "process died" in dead_in_row(row)
    lock = RunLock(home)
    assert lock.acquire()
    assert dead_in_row(row) is None  # alive: its lock is held
    lock.release()
    assert dead_in_row({**row, "status": "FINISHED"}) is None
