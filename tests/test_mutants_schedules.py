"""Exact-value tests of crs/schedules.py written to kill its surviving mutants (docs/mutation.md).

Each case pins one boundary or default the broader tests of tests/test_schedules.py leave free:
the integer clock's window (``step_progress``), the default ``start``/``end``, the range checks of
``check_schedule`` (per key, per index), the registry's duplicate rule, ``Schedule.at_step``.

    python -m pytest tests/test_mutants_schedules.py -q
    make mutation MODULE=crs/schedules.py
"""

from __future__ import annotations

import pytest

from crs.errors import ConfigError
from crs.schedules import (
    SCHEDULE_RANGES,
    SCHEDULES,
    Schedule,
    check_schedule,
    register_schedule,
    schedule_at_step,
    schedule_from_cfg,
    schedule_value,
    step_progress,
)


def test_step_progress_defaults_are_start_0_end_0_8():
    # T = 10: s_min = 0, s_max = 8 -> p = step / 8
    assert step_progress(2, 10) == 2 / 8
    assert step_progress(8, 10) == 1.0
    assert step_progress(0, 10) == 0.0


def test_step_progress_offset_window_subtracts_s_min():
    # T = 10, start 0.2, end 0.6: s_min = 2, s_max = 6
    assert step_progress(3, 10, 0.2, 0.6) == 1 / 4
    assert step_progress(5, 10, 0.2, 0.6) == 3 / 4
    assert step_progress(7, 10, 0.2, 0.6) == 1.0
    assert step_progress(1, 10, 0.2, 0.6) == 0.0


def test_step_progress_empty_window_is_one_rollout_wide():
    # T = 3, start 0.5, end 0.6: s_min = s_max = 1 -> window [1, 2]
    assert step_progress(1, 3, 0.5, 0.6) == 0.0
    assert step_progress(2, 3, 0.5, 0.6) == 1.0
    # s_max == s_min + 1 exactly is a proper window, not widened: T = 10, 0.5..0.6 -> [5, 6]
    assert step_progress(6, 10, 0.5, 0.6) == 1.0
    assert step_progress(5, 10, 0.5, 0.6) == 0.0


def test_step_progress_caps_at_one():
    assert step_progress(100, 10) == 1.0


def test_schedule_at_step_defaults_and_params():
    # defaults m = 0.99, start 0, end 0.8; linear at p = 2/8
    assert schedule_at_step("linear", 2, 10) == pytest.approx(0.99 * (1 - 2 / 8))
    assert schedule_at_step("linear", 2, 10, m=0.5, start=0.2, end=0.6) == 0.5
    assert schedule_at_step("linear", 3, 10, m=0.5, start=0.2, end=0.6) == pytest.approx(0.5 * 0.75)
    assert schedule_at_step("linear", 3, 10, m=0.5, start=0.2, end=0.6, invert=True) == pytest.approx(
        0.5 * 0.25
    )
    assert schedule_at_step("gamma", 4, 10, m=1.0, gamma=3.0) == pytest.approx(0.5**3)
    assert schedule_at_step("constant", 5, 10, m=0.3) == 0.3


def test_schedule_at_step_checks_the_window():
    with pytest.raises(ValueError, match="end"):
        schedule_at_step("linear", 1, 10, start=0.5, end=0.5)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_at_step("nope", 1, 10)
    assert schedule_at_step("constant", 1, 10, m=0.4, start=0.5, end=0.5) == 0.4  # constant has no window
    assert schedule_at_step("constant", 10, 10, m=0.4) == 0.4  # not the decaying shapes' "0 after end"


def test_schedule_at_step_method_uses_name_and_params():
    s = Schedule("linear", {"m": 0.5, "start": 0.2, "end": 0.6})
    assert s.at_step(3, 10) == pytest.approx(0.375)
    assert s(0.4) == pytest.approx(0.25)


def test_schedule_from_cfg_keeps_milestones_and_values():
    s = schedule_from_cfg({"name": "step", "m": 0.9, "milestones": [0.5], "values": [0.1]})
    assert s.params["milestones"] == [0.5] and s.params["values"] == [0.1]
    assert s(0.2) == pytest.approx(0.9) and s(0.7) == pytest.approx(0.1)
    assert "name" not in s.params


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"name": "linear", "m": 1.5}, "schedule.m"),
        ({"name": "linear", "m": -0.1}, "schedule.m"),
        ({"name": "linear", "start": 1.0}, "schedule.start"),
        ({"name": "linear", "end": 0.0}, "schedule.end"),
        ({"name": "sigmoid", "k": 0.0}, "schedule.k"),
        ({"name": "gamma", "gamma": -1.0}, "schedule.gamma"),
        ({"name": "step", "milestones": [0.2, 1.5], "values": [0.1, 0.2]}, r"schedule.milestones\[1\]"),
        ({"name": "step", "milestones": [0.2], "values": [-0.5]}, r"schedule.values\[0\]"),
    ],
)
def test_check_schedule_names_the_bad_key(cfg, key):
    with pytest.raises(ConfigError, match=f"^{key} must be in"):
        check_schedule(cfg)


def test_check_schedule_accepts_bounds_and_skips_none():
    check_schedule({"name": "linear", "m": 1.0, "start": 0.0, "end": 1.0})
    check_schedule({"name": "linear", "m": None, "start": None})
    check_schedule({"name": "step", "milestones": [0.0, 1.0], "values": [1.0, 0.0]})
    check_schedule({"name": "step", "milestones": None, "values": None})
    # milestone ranges apply to the step shape only
    check_schedule({"name": "linear", "milestones": [5.0]})
    # an unknown shape has only the common ranges here (the name itself is checked by schedule_value)
    check_schedule({"name": "_unknown", "m": 0.5})
    with pytest.raises(ConfigError, match="^schedule.m must be in"):
        check_schedule({"name": "_unknown", "m": 2.0})


def test_register_schedule_records_ranges_and_refuses_a_duplicate():
    def shape(p, m, **_):
        return m

    try:
        assert register_schedule("_mut_probe", ranges={"z": "[0, 1]"})(shape) is shape
        assert SCHEDULES["_mut_probe"] is shape
        assert SCHEDULE_RANGES["_mut_probe"] == {"z": "[0, 1]"}
        register_schedule("_mut_probe")(shape)  # the same function again is fine
        assert SCHEDULE_RANGES["_mut_probe"] == {}
        with pytest.raises(ValueError, match="'_mut_probe' is already registered"):
            register_schedule("_mut_probe")(lambda p, m: m)
        assert schedule_value("_mut_probe", 0.5, m=0.7) == 0.7
    finally:
        SCHEDULES.pop("_mut_probe", None)
        SCHEDULE_RANGES.pop("_mut_probe", None)


# -- short_run_warning / run_rollouts / warn_if_short (issue 23's warning), values by hand ----------------

HEAD = "crs: warning: run too short for its schedule — methods will look alike: "


def test_short_run_warning_names_the_window_the_values_and_the_rollouts_needed():
    from crs.schedules import short_run_warning

    # T = 3, end 0.8: s_max = int(2.4) = 2, p = s/2 -> ρ = 0.5·(1 − p) = 0.25, 0, 0; need ⌈11 / 0.8⌉ = 14
    cfg = {"name": "linear", "m": 0.5, "start": 0.0, "end": 0.8}
    assert short_run_warning(cfg, ["k"], 3, "tp") == HEAD + (
        "schedule=linear moves ρ 0.25 → 0.00 within 3 rollout(s) and tp equals GRPO on 2 of them; "
        "give it ≥ 14 rollouts (trainer.max_steps)"
    )


def test_short_run_warning_defaults_and_the_min_window_boundary():
    from crs.schedules import MIN_WINDOW, short_run_warning

    assert MIN_WINDOW == 10
    # defaults m 0.99, start 0, end 0.8; T = 12: window int(9.6) = 9 < 10; ρ(1) = 0.99·8/9 = 0.88; ρ = 0 from s = 9
    assert short_run_warning({"name": "linear"}, ["k"], 12) == HEAD + (
        "schedule=linear moves ρ 0.88 → 0.00 within 12 rollout(s) and the method equals GRPO on 4 of them; "
        "give it ≥ 14 rollouts (trainer.max_steps)"
    )
    assert short_run_warning({"name": "linear"}, ["k"], 13) is None  # window int(10.4) = 10
    # start 0.5: window int(T) − int(T/2): T = 19 -> 19 − 9 = 10 (silent), T = 18 -> 9 (warns), need ⌈11/0.5⌉
    late = {"name": "linear", "start": 0.5, "end": 1.0}
    assert short_run_warning(late, ["k"], 19) is None
    line = short_run_warning(late, ["k"], 18, "m")
    assert line == HEAD + (
        "schedule=linear moves ρ 0.99 → 0.00 within 18 rollout(s) and m equals GRPO on 1 of them; "
        "give it ≥ 22 rollouts (trainer.max_steps)"
    )


def test_short_run_warning_rho_zero_throughout_and_the_silent_cases():
    from crs.schedules import short_run_warning

    zero = HEAD + "ρ = 0 at every rollout, so {} is plain GRPO for the whole run"
    assert short_run_warning({"name": "constant", "m": 0.0}, ["k"], 500, "pure") == zero.format("pure")
    # T = 1: s_max = int(0.8) = 0 -> 1, p(1) = 1 -> ρ = 0 at the only rollout
    assert short_run_warning({"name": "linear"}, ["k"], 1) == zero.format("the method")
    assert short_run_warning({"name": "linear"}, ["k"], 0) is None  # no rollouts
    assert short_run_warning({"name": "linear"}, [], 3) is None  # nothing driven
    assert short_run_warning({"name": "constant", "m": 0.5}, ["k"], 3) is None  # constant: no window


def test_run_rollouts_counts_generations_of_the_optimizer_steps():
    from types import SimpleNamespace

    from crs.schedules import run_rollouts

    t = SimpleNamespace(
        args=SimpleNamespace(gradient_accumulation_steps=2), _micro_steps_per_rollout=lambda: 4
    )
    assert run_rollouts(t, 5) == 3  # ⌈5·2 / 4⌉
    assert run_rollouts(t, 4) == 2
    assert run_rollouts(t, 0) == 1  # at least one
    assert run_rollouts(SimpleNamespace(), 7.0) == 7  # not a crs GRPO trainer: one rollout per step


def test_warn_if_short_echoes_the_line_once_and_nothing_for_a_long_run():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from crs.schedules import short_run_warning, warn_if_short

    t = SimpleNamespace(
        args=SimpleNamespace(gradient_accumulation_steps=1), _micro_steps_per_rollout=lambda: 1
    )
    cfg = OmegaConf.create({"schedule": {"name": "linear", "m": 0.5}, "trainer": {"max_steps": 3}})
    said: list[str] = []
    warn_if_short(cfg, ["k"], t, "tp", said.append)
    assert said == [short_run_warning({"name": "linear", "m": 0.5}, ["k"], 3, "tp")] and said[0]
    cfg.trainer.max_steps = 300
    warn_if_short(cfg, ["k"], t, "tp", said.append)
    assert len(said) == 1


def test_warn_if_short_counts_the_trainers_rollouts_not_the_optimizer_steps():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from crs.schedules import warn_if_short

    # GA 2, one micro-step per rollout: 3 optimizer steps are 6 rollouts (without the trainer: 3)
    t = SimpleNamespace(
        args=SimpleNamespace(gradient_accumulation_steps=2), _micro_steps_per_rollout=lambda: 1
    )
    cfg = OmegaConf.create({"schedule": {"name": "linear", "m": 0.5}, "trainer": {"max_steps": 3}})
    said: list[str] = []
    warn_if_short(cfg, ["k"], t, "tp", said.append)
    # T = 6, end 0.8: s_max = int(4.8) = 4, ρ = 0 at s = 4, 5, 6; need ⌈11 / 0.8⌉ = 14
    assert len(said) == 1 and said[0].endswith(
        "within 6 rollout(s) and tp equals GRPO on 3 of them; give it ≥ 14 rollouts (trainer.max_steps)"
    )
