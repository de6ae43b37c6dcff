"""What the MLflow UI shows: metric sections, run names and tags, grid-cell deduplication, `crs ui`.

pytest tests/test_ui_layout.py
"""

from __future__ import annotations

import math

import pytest

from crs.metric_layout import MetricLayout, round_sig, ui_key
from crs.naming import default_choice, duplicate_of, parent_description, run_name, sweep_grid


def test_sections_put_the_handful_first():
    main = ["reward", "accuracy", "eval_accuracy", "entropy/all", "kl", "diag/kl"]
    assert all(ui_key(k).startswith("1 main/") for k in main)
    assert ui_key("schedule/rho") == "2 schedule/rho"
    # the driven knob goes with ρ; other per-step credit statistics stay in the credit section
    assert (
        ui_key("credit/tp_schedule/withhold", ["tp_schedule/withhold"]) == "2 schedule/tp_schedule.withhold"
    )
    assert ui_key("credit/gigpo/step_groups") == "3 credit/gigpo.step_groups"
    assert ui_key("env/success") == "1 main/success" and ui_key("env/turns") == "4 rollouts/env.turns"
    assert ui_key("credit/trained_frac").startswith("3 credit/")
    assert ui_key("diag/entropy_bin_3") == "8 per-bin/entropy_bin_3"
    for k in ("epoch", "total_flos", "train_runtime", "eval_runtime", "step_time"):
        assert ui_key(k).startswith("9 trl/"), k
    for k in ("eval_schedule/rho", "eval_credit/trained_frac", "eval_adv/mean", "eval_loss"):
        assert ui_key(k) is None, k  # nothing is trained during evaluation
    assert ui_key("eval_reward") == "6 eval/reward"
    # rule-based: new metrics land somewhere sensible without a code change
    assert ui_key("credit/localization_share") == "3 credit/localization_share"
    assert ui_key("success_rate") == "1 main/success_rate"
    assert (
        ui_key("loc/adv_share") == "3 credit/loc.adv_share" and ui_key("int/failed") == "3 credit/int.failed"
    )
    assert ui_key("tool/latency") == "other/tool.latency"
    # MLflow sorts named sections alphabetically, un-prefixed keys last: every key has a section,
    # and the main section sorts first
    keys = [ui_key(k) for k in ("reward", "adv/mean", "epoch", "diag/kl_bin_0", "foo", "clip_ratio/low_min")]
    assert all("/" in k for k in keys)
    assert sorted(k.rsplit("/", 1)[0] for k in keys)[0] == "1 main"


def test_layout_drops_knob_charts_without_a_knob_and_turns_summaries_into_tags():
    logs = {
        "schedule/rho": 0.16500000000000006,
        "credit/tp_schedule/withhold": 0.3,
        "reward": 0.16500000000000006,
        "final/eval_accuracy_end": 0.1875,
        "final/steps": 3.0,
        "nan": float("nan"),
    }
    metrics, tags = MetricLayout(knobs=()).split(logs)
    assert math.isnan(metrics.pop("other/nan"))  # NaN is logged, not dropped (issue 9)
    # no ρ chart, a knob-like statistic that is not driven stays with credit, float noise rounded away
    assert metrics == {"1 main/reward": 0.165, "3 credit/tp_schedule.withhold": 0.3}
    assert tags == {"final.eval_accuracy_end": "0.1875", "final.steps": "3"}
    metrics, _ = MetricLayout(knobs=["tp_schedule/withhold"]).split(logs)
    assert set(metrics) == {"1 main/reward", "2 schedule/rho", "2 schedule/tp_schedule.withhold", "other/nan"}
    assert round_sig(3.725290298461914e-08) == pytest.approx(3.72529e-08, rel=1e-9)


def test_run_names_and_duplicates(compose_cfg):
    ctx = {"choices": {"method": "tp_schedule", "schedule": "linear", "loss": default_choice("loss")}}
    assert (
        run_name(compose_cfg("method=tp_schedule", "schedule=linear"), ctx, None) == "tp_schedule·linear·s0"
    )
    assert default_choice("loss") == "token_mean"  # the default preset stays out of names
    ctx["choices"]["loss"] = "dapo"  # ... another one is part of the name
    assert (
        run_name(compose_cfg("method=tp_schedule", "schedule=linear"), ctx, None)
        == "tp_schedule·linear·dapo·s0"
    )
    grpo = compose_cfg("method=grpo", "schedule=linear", "seed=1")
    assert run_name(grpo, {"choices": {"method": "grpo", "schedule": "linear"}}, None) == "grpo·s1"
    # a sweep over loss and lr: both in the name; grpo × {constant, linear}: one job per seed runs
    grid = sweep_grid(
        ["method=grpo,tp_schedule", "schedule=constant,linear", "loss=grpo,dapo", "trainer.lr=1e-5,1e-4"]
    )
    assert grid["schedule"] == ["constant", "linear"] and grid["trainer.lr"] == [
        "1e-05",
        "0.0001",
    ]  # as Hydra writes the jobs' overrides
    parent = {"swept_keys": list(grid), "grid": grid}
    # a grid file's sweeper params, with the command line winning (and fixing a swept key)
    from_file = sweep_grid(
        ["seed=0,1,2", "schedule=linear"], {"method": "grpo,tp_schedule", "schedule": "a,b", "seed": "0"}
    )
    assert from_file == {"method": ["grpo", "tp_schedule"], "seed": ["0", "1", "2"]}
    ov = ["method=tp_schedule", "schedule=cosine", "loss=dapo", "trainer.lr=0.0001"]
    ctx = {"choices": {"method": "tp_schedule", "schedule": "cosine", "loss": "dapo"}, "overrides": ov}
    cfg = compose_cfg(*ov)
    assert run_name(cfg, ctx, parent) == "tp_schedule·cosine·dapo·lr=0.0001·s0"
    assert duplicate_of(cfg, ctx, parent) is None  # tp_schedule has a knob: every schedule runs
    for schedule, dup in (("constant", False), ("linear", True)):
        ov = ["method=grpo", f"schedule={schedule}", "loss=grpo", "trainer.lr=0.0001"]
        ctx = {"choices": {"method": "grpo", "schedule": schedule, "loss": "grpo"}, "overrides": ov}
        reason = duplicate_of(compose_cfg(*ov), ctx, parent)
        assert (reason is not None) == dup, schedule
    assert "schedule=linear would repeat the job with schedule=constant" in reason
    text = parent_description(
        {"sweep_id": "ab12", "grid": grid, "overrides": ["debug=fast", *ov], "n_jobs": 16}
    )
    assert (
        "`method` | `grpo`, `tp_schedule`" in text
        and "`debug=fast`" in text
        and "crs compare --sweep ab12" in text
    )


def test_ui_refuses_a_missing_store(tmp_path, capsys):
    from crs.ui import main

    with pytest.raises(SystemExit) as exc:
        main(["--uri", f"sqlite:///{tmp_path / 'none.db'}", "--no-browser"])
    assert exc.value.code == 2 and "no MLflow store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_ui_links_and_command(tmp_path):
    import sys

    from mlflow.tracking import MlflowClient

    from crs.ui import find_experiment, links, server_command

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("crs")
    other = client.create_experiment("other")
    parent = client.create_run(other, tags={"crs.role": "sweep"}).info.run_id
    assert find_experiment(uri) == (other, parent)  # the experiment of the last sweep
    assert find_experiment(uri, "crs") == (exp, None)
    urls = dict(links("http://h:1", other, parent))
    assert urls["training runs"].startswith(
        f"http://h:1/#/experiments/{other}/runs?workflowType=machine_learning"
    )
    assert urls["last sweep (parent run)"].startswith(f"http://h:1/#/experiments/{other}/runs/{parent}?")
    cmd = server_command(uri, "127.0.0.1", 5000, 1)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "server"] and cmd[cmd.index("--workers") + 1] == "1"


def test_saved_view_groups_by_method_and_expands_the_last_sweep(tmp_path):
    """Issue 23: comparing across seeds needs "Group by: method" (mean line and band per method)."""
    import json

    from mlflow.tracking import MlflowClient

    from crs.ui import SHARED_VIEW_TAG, VIEW_KEY, install_view

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    parent = client.create_run(exp, run_name="sweep: method=grpo,tp_schedule × seed=0,1").info.run_id
    install_view(uri, exp, parent)
    state = json.loads(client.get_experiment(exp).tags[SHARED_VIEW_TAG + VIEW_KEY])
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "method"}]
    assert state["groupBy"]["aggregateFunction"] == "average" and state["useGroupedValuesInCharts"]
    assert state["runsExpanded"] == {parent: True}
