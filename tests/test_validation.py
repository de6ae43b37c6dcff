"""Every bad value is one ``crs: error:`` line before anything loads (issue 9, point 5).

Ranges are declared next to the credit steps and schedule shapes (``crs/ranges.py``); these tests try
the values the issue saw accepted silently, in-process (``validate``) and through the CLI.

    pytest tests/test_validation.py
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from crs.cli import compose
from crs.config import validate
from crs.errors import ConfigError
from crs.methods import METHODS as CREDIT
from crs.ranges import Interval, check_range


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["seed=abc"], "seed must be an integer"),
        (["seed=-1"], "seed must be an integer"),
        (["schedule.m=-1"], "schedule.m must be in [0, 1]"),
        (["schedule.m=2"], "schedule.m must be in [0, 1]"),
        (["schedule=sigmoid", "schedule.k=0"], "schedule.k must be in (0, inf)"),
        (["schedule=gamma", "schedule.gamma=0"], "schedule.gamma must be in (0, inf)"),
        (["schedule=step", "schedule.milestones=[0.5]", "schedule.values=[3]"], "schedule.values[0]"),
        (
            ["method=forking_tokens", "method.credit.forking_tokens.keep_fraction=2"],
            "method.credit.forking_tokens.keep_fraction must be in [0, 1] (got 2)",
        ),
        (
            ["method=focal_grpo", "method.credit.focal_grpo.gamma=-0.5"],
            "focal_grpo.gamma must be in [0, inf)",
        ),
        (["method=adora", "method.credit.adora.lam=-1"], "adora.lam"),
        (
            ["method=tp_schedule", "method.credit.tp_schedule.drive.neutral=1.5"],
            "method.credit.tp_schedule.drive.neutral must be in [0, 1]",
        ),
    ],
)
def test_out_of_range_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert needle in str(err.value)


def test_every_registered_method_declares_a_range_for_its_numeric_arguments():
    """A method added without range declarations fails here, not silently at run time."""
    import inspect

    for name, step in CREDIT.items():
        params = inspect.signature(step.fn).parameters
        numeric = [
            p
            for p, v in params.items()
            if p != "batch" and isinstance(v.default, int | float) and not isinstance(v.default, bool)
        ]
        missing = [p for p in numeric if p not in step.ranges]
        assert not missing, (
            f"credit step {name}: declare ranges for {missing} in @register_credit(ranges=...)"
        )


def test_interval_parsing_and_bounds():
    assert Interval.parse("[0, 1)").contains(0) and not Interval.parse("[0, 1)").contains(1)
    assert not Interval.parse("(0, inf)").contains(0) and Interval.parse("(0, inf)").contains(1e9)
    assert not Interval.parse("[0, 1]").contains(float("nan"))
    with pytest.raises(ConfigError, match="must be a number"):
        check_range("x", "abc", "[0, 1]")
    with pytest.raises(ValueError):
        Interval.parse("0..1")


def test_int_refuses_several_processes_before_any_model_loads(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        validate(compose(["method=int"]))
    validate(compose(["method=pure", "benchmark=bifurcation_easy"]))  # gathered on several processes
    monkeypatch.setenv("WORLD_SIZE", "1")
    validate(compose(["method=int"]))


def test_step_methods_on_environments_are_oprl_per_turn_only():
    with pytest.raises(ConfigError, match="runs on single-turn benchmarks.*oprl"):
        validate(compose(["method=pure", "benchmark=maze"]))
    validate(compose(["method=oprl", "benchmark=maze"]))


@dataclasses.dataclass
class _Section:
    x: int = 1


@dataclasses.dataclass
class _Root:
    opt: typing.Optional[_Section] = None  # noqa: UP045 (OmegaConf reads the annotation)
    hydra: typing.Any = None


def test_field_ranges_walk_skips_none_sections_and_hydra_node():
    """A sweep job's config (Hydra's loader) carries the ``hydra`` node and optional sections set to
    None; the range walk must pass over both (it crashed with 'NoneType' has no attribute 'keys')."""
    from omegaconf import OmegaConf

    from crs.checks import check_field_ranges

    cfg = OmegaConf.structured(_Root)
    cfg.hydra = {"job": {"env_set": None}, "launcher": {"n_jobs": -7}}
    check_field_ranges(cfg)  # no AttributeError, and Hydra's own values are not crs's fields
