"""``crs eval`` on a tiny sweep's final models (methods × seeds → intervals over seeds, logged on the
job runs, read back by ``crs compare --benchmarks``), and every paper recipe running one CPU step.

    pytest tests/test_eval_slow.py -m slow
"""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import run_crs
from tests.test_eval import RECIPES, dapo_file, recipe_one_step

pytestmark = pytest.mark.slow


def test_crs_eval_on_a_sweeps_final_models(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = run_crs(
        "train",
        "-m",
        "debug=fast",
        "method=grpo,tp_schedule",
        "seed=0,1",
        "trainer.save_model=true",
        "trainer.max_steps=2",
        "diagnostics.every=0",
        f"tracking.uri={uri}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(uri)
    (parent,) = client.search_runs(
        [client.get_experiment_by_name("crs").experiment_id], filter_string="tags.`crs.role` = 'sweep'"
    )
    sweep_id = parent.data.tags["sweep_id"]
    r = run_crs(
        "eval",
        f"source={sweep_id}",
        "benchmark=arithmetic_easy",
        "eval.n=4",
        "eval.k=[1,4]",
        "eval.n_problems=16",
        "eval.max_new_tokens=32",
        f"tracking.uri={uri}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "interval over seeds" in r.stdout and "grpo" in r.stdout and "tp_schedule" in r.stdout
    jobs = client.search_runs(
        [client.get_experiment_by_name("crs").experiment_id], filter_string=f"tags.sweep_id = '{sweep_id}'"
    )
    jobs = [j for j in jobs if j.data.tags.get("crs.role") == "job"]
    assert len(jobs) == 4 and all("eval/arithmetic_easy/avg_at_4" in j.data.metrics for j in jobs)
    r = run_crs(
        "compare",
        "--sweep",
        sweep_id,
        "--uri",
        uri,
        "--benchmarks",
        "avg@4",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "eval/arithmetic_easy/avg_at_4" in r.stdout
    json.loads(r.stdout)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r != "common"])
def test_every_paper_recipe_runs_one_step(recipe, compose_cfg, tiny_model_dir, tmp_path):
    assert recipe_one_step(recipe, compose_cfg, tiny_model_dir, dapo_file(tmp_path))["steps"] == 1
