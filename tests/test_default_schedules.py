"""Each method's default schedule is its paper's (conf/method/*.yaml ``override /schedule@...``), the
command line still wins, and every experiment row and sweep grid composes to the schedule it names.

pytest tests/test_default_schedules.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from crs.cli import compose

ROOT = Path(__file__).resolve().parents[1]
CONF, SWEEPS = ROOT / "conf", ROOT / "sweeps"

# method -> (schedule shape, m) its paper trains with; constant where the paper has no schedule
PAPER = {
    "grpo": ("constant", 1.0),
    "tp_schedule": ("linear", 0.99),  # RLVR-Schedule: linear, m = 0.99, end = 0.8
    "forking_tokens": ("constant", 0.8),  # 80/20: the top 20% for the whole run
    "entropy_adv": ("constant", 1.0),
    "focal_grpo": ("constant", 1.0),
    "adora": ("constant", 1.0),
    "r3l_amplify": ("constant", 1.0),
    "pure": ("constant", 1.0),
    "capo": ("constant", 1.0),
    "oprl": ("constant", 1.0),
    "int": ("constant", 1.0),
    "r3l": ("constant", 1.0),
    "gigpo": ("constant", 1.0),
    "a2tgpo": ("constant", 1.0),
    "matchtir": ("constant", 1.0),
    "f_grpo": ("constant", 1.0),
}
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def _schedule(cfg) -> dict:
    return OmegaConf.to_container(cfg.schedule, resolve=True)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_picks_its_schedule_and_says_why(method):
    """No method falls back to train.yaml's schedule; a comment (above or inline) gives the reason."""
    text = (CONF / "method" / f"{method}.yaml").read_text()
    above = r"\n\s*#.+\n\s*- override /schedule@_global_\.schedule: \w+"
    inline = r"- override /schedule@_global_\.schedule: \w+\s+#.+"
    assert re.search(above, text) or re.search(inline, text), method


@pytest.mark.parametrize("method", sorted(PAPER))
def test_method_default_is_its_papers_schedule(method):
    s = _schedule(compose([f"method={method}"]))
    assert (s["name"], s["m"]) == PAPER[method]


def test_default_run_is_grpo_with_no_annealing():
    cfg = compose([])
    assert cfg.method.name == "grpo" and cfg.schedule.name == "constant"


@pytest.mark.parametrize("method", ["grpo", "tp_schedule", "forking_tokens", "gigpo", "pure"])
@pytest.mark.parametrize("where", ["after", "before"])
def test_command_line_schedule_wins(method, where):
    for sched in ("linear", "cosine", "constant"):
        ovs = [f"method={method}", f"schedule={sched}"]
        cfg = compose(ovs if where == "after" else ovs[::-1])
        assert _schedule(cfg) == _schedule(compose([f"schedule={sched}"])), (method, sched)
    cfg = compose([f"method={method}", "schedule.m=0.5"])
    assert cfg.schedule.m == 0.5 and cfg.schedule.name == PAPER[method][0]


def _intended(option_file: Path) -> tuple[str | None, dict, str | None]:
    """(schedule option, schedule values, method option) an experiment file sets, itself or through the
    experiments it includes (``- /experiment/table1/tp_schedule`` in a paper recipe); its own win."""
    data = OmegaConf.to_container(OmegaConf.load(option_file), resolve=False)
    sched = method = None
    values: dict = {}
    for d in data.get("defaults") or []:
        if isinstance(d, str) and d.startswith("/experiment/"):
            s, v, m = _intended(CONF / f"{d[1:]}.yaml")
            sched, method, values = s or sched, m or method, {**values, **v}
        if isinstance(d, dict):
            for k, v in d.items():
                if k.startswith("override /schedule"):
                    sched = v
                if k.startswith("override /method"):
                    method = v
    return sched, {**values, **(data.get("schedule") or {})}, method


def _expected(sched: str | None, values: dict, method: str | None) -> dict:
    base = compose([f"schedule={sched}"] if sched else [f"method={method or 'grpo'}"])
    return OmegaConf.to_container(OmegaConf.merge(base.schedule, values), resolve=True)


EXPERIMENTS = sorted(
    str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml")
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_rows_keep_their_schedule(experiment):
    sched, values, method = _intended(CONF / "experiment" / f"{experiment}.yaml")
    if method is None and sched is None:
        pytest.skip(f"experiment={experiment} sets neither method nor schedule (a shared part of recipes)")
    assert sched, f"experiment={experiment} sets a method but no schedule"
    cfg = compose([f"experiment={experiment}"])
    assert _schedule(cfg) == _expected(sched, values, method)
    if method:
        assert cfg.method.name == OmegaConf.load(CONF / "method" / f"{method}.yaml").name


def _grid_jobs(grid: str) -> list[list[str]]:
    """The grid's distinct jobs (seeds dropped), as Hydra's basic sweeper expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.load(SWEEPS / f"{grid}.yaml").hydra.sweeper.params
    args = [f"{k}={v}" for k, v in params.items() if k != "seed"]
    parsed = OverridesParser.create().parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _compose_grid_job(grid: str, job: list[str]):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(SWEEPS), version_base="1.3"):
        return hcompose(config_name=grid, overrides=[f"hydra.searchpath=[file://{CONF}]", *job])


@pytest.mark.parametrize("grid", sorted(p.stem for p in SWEEPS.glob("*.yaml")))
def test_sweep_jobs_get_the_schedule_they_name(grid):
    from crs.config import register_configs

    register_configs()
    for job in _grid_jobs(grid):
        kv = dict(o.split("=", 1) for o in job)
        values = {k.split(".", 1)[1]: v for k, v in kv.items() if k.startswith("schedule.")}
        if "schedule" in kv:
            expected = _expected(kv["schedule"], {}, None)
        elif "experiment" in kv:
            sched, exp_values, method = _intended(CONF / "experiment" / f"{kv['experiment']}.yaml")
            expected = _expected(sched, exp_values, method)
        else:  # the method's own (paper) default
            expected = _expected(None, {}, kv.get("method"))
        expected.update({k: type(expected[k])(v) for k, v in values.items()})
        got = _schedule(_compose_grid_job(grid, job))
        assert got == expected, f"{grid}: {' '.join(job)}"
