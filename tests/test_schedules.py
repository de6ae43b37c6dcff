"""Golden tests for the temporal schedules (spec: /work/shared/docs/methods.md §1.2, §13).

Conventions under test (RLVR-Schedule ``_prefix_curriculum``)::

    p = clip((progress − start) / (end − start), 0, 1)
    linear  ρ = m·(1 − p)
    cosine  ρ = m·(1 + cos πp)/2
    sigmoid ρ = m·(σ(p) − σ(1)) / (σ(0) − σ(1)),  σ(p) = 1/(1 + exp(k(p − ½))),  k = 8
    gamma   ρ = (m·(1 − p))^γ    (m inside the power)
    step    ρ = m before milestones[0], values[i] from milestones[i] on
    held at m before ``start``, 0 from ``end`` on; ``invert`` mirrors in time (ρ = shape(1 − p)).

Every expected number is written out by hand (or as plain arithmetic on the formula above), never
obtained by calling the implementation.
"""

from __future__ import annotations

import math

import pytest
from torch.testing import assert_close

from crs.schedules import SCHEDULES, schedule_from_cfg, schedule_value

TOL = dict(rtol=0.0, atol=1e-12)


def _sig(p: float, k: float = 8.0) -> float:
    """σ(p) of the spec, written out (the test's own copy of the formula)."""
    return 1.0 / (1.0 + math.exp(k * (p - 0.5)))


# ---------------------------------------------------------------------------------------------------
# acceptance case of the spec (§1.2 "Sanity values for unit tests")


@pytest.mark.parametrize(
    "progress, expected",
    [
        (0.0, 0.99),
        (0.2, 0.7425),  # 0.99·(1 − 0.25)
        (0.4, 0.495),  # 0.99·(1 − 0.5)
        (0.6, 0.2475),  # 0.99·(1 − 0.75)
        (0.8, 0.0),
        (0.85, 0.0),
        (0.9, 0.0),
        (1.0, 0.0),
    ],
)
def test_linear_paper_values(progress, expected):
    assert_close(schedule_value("linear", progress, m=0.99, start=0.0, end=0.8), expected, **TOL)


def test_defaults_are_the_paper_schedule():
    # m = 0.99, start = 0, end = 0.8 are the released scripts' values (§1.4)
    assert_close(schedule_value("linear", 0.0), 0.99, **TOL)
    assert_close(schedule_value("linear", 0.4), 0.495, **TOL)
    assert schedule_value("linear", 0.8) == 0.0


def test_returns_python_float():
    assert type(schedule_value("linear", 0.3)) is float
    assert type(schedule_value("constant", 0.3, m=1)) is float


# ---------------------------------------------------------------------------------------------------
# shapes


def test_gamma_starts_at_0_9801():
    # (0.99·1)^2
    assert_close(schedule_value("gamma", 0.0, m=0.99, end=0.8, gamma=2.0), 0.9801, **TOL)


@pytest.mark.parametrize(
    "progress, gamma, expected",
    [
        (0.0, 2.0, 0.9801),
        (0.2, 2.0, 0.7425**2),  # (0.99·0.75)^2 = 0.55130625
        (0.4, 2.0, 0.245025),  # (0.99·0.5)^2; m outside the power would give 0.2475
        (0.6, 2.0, 0.06125625),  # (0.99·0.25)^2
        (0.8, 2.0, 0.0),
        (0.4, 0.5, math.sqrt(0.495)),  # γ < 1 holds the criterion longer
        (0.4, 1.0, 0.495),  # γ = 1 is linear
    ],
)
def test_gamma_values_m_inside_power(progress, gamma, expected):
    assert_close(schedule_value("gamma", progress, m=0.99, end=0.8, gamma=gamma), expected, **TOL)


def test_gamma_default_exponent_is_2():
    assert_close(schedule_value("gamma", 0.4, m=0.99, end=0.8), 0.245025, **TOL)


@pytest.mark.parametrize(
    "p, expected",
    [
        (0.0, 1.0),
        (0.25, (1.0 + math.sqrt(2.0) / 2.0) / 2.0),  # 0.8535533905932737
        (0.5, 0.5),
        (0.75, (1.0 - math.sqrt(2.0) / 2.0) / 2.0),  # 0.1464466094067262
        (1.0, 0.0),
    ],
)
def test_cosine_values(p, expected):
    # end = 1 so that progress = p; m = 1 then m = 0.8
    assert_close(schedule_value("cosine", p, m=1.0, start=0.0, end=1.0), expected, **TOL)
    assert_close(schedule_value("cosine", p, m=0.8, start=0.0, end=1.0), 0.8 * expected, **TOL)


def test_sigmoid_normalised_endpoints():
    # exactly m at p = 0, exactly 0 at p = 1 (§1.2)
    assert_close(schedule_value("sigmoid", 0.0, m=0.99, end=0.8), 0.99, **TOL)
    assert schedule_value("sigmoid", 0.8, m=0.99, end=0.8) == 0.0
    # midpoint: σ(½) = ½ and σ(0) + σ(1) = 1, so ρ(½) = m/2 exactly
    assert_close(schedule_value("sigmoid", 0.4, m=0.99, end=0.8), 0.495, **TOL)


@pytest.mark.parametrize("p", [0.1, 0.25, 0.75, 0.9])
def test_sigmoid_k8_values(p):
    expected = 0.99 * (_sig(p) - _sig(1.0)) / (_sig(0.0) - _sig(1.0))
    assert_close(schedule_value("sigmoid", p, m=0.99, start=0.0, end=1.0), expected, **TOL)


def test_sigmoid_hand_value_at_quarter():
    # σ(0.25) = 1/(1+e^-2) = 0.8807970779778823, σ(0) = 1/(1+e^-4) = 0.9820137900379085,
    # σ(1) = 1/(1+e^4) = 0.01798620996209156  →  (0.8807970779778823 − 0.01798620996209156)
    #                                            / (0.9820137900379085 − 0.01798620996209156) = 0.8950...
    expected = (0.8807970779778823 - 0.01798620996209156) / (0.9820137900379085 - 0.01798620996209156)
    assert_close(schedule_value("sigmoid", 0.25, m=1.0, start=0.0, end=1.0), expected, rtol=0.0, atol=1e-12)
    assert 0.8950 < expected < 0.8951


def test_sigmoid_k_parameter_is_used():
    expected_k4 = 0.99 * (_sig(0.25, 4.0) - _sig(1.0, 4.0)) / (_sig(0.0, 4.0) - _sig(1.0, 4.0))
    got = schedule_value("sigmoid", 0.25, m=0.99, start=0.0, end=1.0, k=4.0)
    assert_close(got, expected_k4, **TOL)
    # and k = 4 really differs from the default k = 8 there
    assert abs(got - schedule_value("sigmoid", 0.25, m=0.99, start=0.0, end=1.0)) > 1e-3


@pytest.mark.parametrize("progress", [0.0, 0.3, 0.5, 0.8, 0.95, 1.0])
def test_constant_ignores_progress(progress):
    assert_close(schedule_value("constant", progress, m=0.8), 0.8, **TOL)
    assert_close(schedule_value("constant", progress, m=0.8, invert=True), 0.8, **TOL)


@pytest.mark.parametrize(
    "progress, expected",
    [
        (0.0, 0.99),  # m before the first milestone
        (0.2, 0.99),
        (0.25, 0.75),  # milestone reached: values[0]
        (0.4, 0.75),
        (0.5, 0.5),
        (0.6, 0.5),
        (0.75, 0.25),
        (0.99, 0.25),
        (1.0, 0.0),  # 0 at/after the end of the window
    ],
)
def test_step_values(progress, expected):
    got = schedule_value(
        "step", progress, m=0.99, start=0.0, end=1.0, milestones=[0.25, 0.5, 0.75], values=[0.75, 0.5, 0.25]
    )
    assert_close(got, expected, **TOL)


def test_step_milestones_are_in_schedule_progress():
    # end = 0.5: milestone 0.5 of p is reached at training progress 0.25
    kw = dict(m=1.0, start=0.0, end=0.5, milestones=[0.5], values=[0.3])
    assert_close(schedule_value("step", 0.2, **kw), 1.0, **TOL)
    assert_close(schedule_value("step", 0.25, **kw), 0.3, **TOL)
    assert_close(schedule_value("step", 0.45, **kw), 0.3, **TOL)
    assert schedule_value("step", 0.5, **kw) == 0.0


def test_step_without_milestones_is_m_until_end():
    assert_close(schedule_value("step", 0.7, m=0.6, end=0.8), 0.6, **TOL)
    assert schedule_value("step", 0.8, m=0.6, end=0.8) == 0.0


# ---------------------------------------------------------------------------------------------------
# start / end hold semantics


@pytest.mark.parametrize(
    "progress, expected",
    [
        (0.0, 0.8),  # held at m before start
        (0.1, 0.8),
        (0.2, 0.8),  # p = 0 at start
        (0.3, 0.6),  # p = 0.25 → 0.8·0.75
        (0.4, 0.4),  # p = 0.5
        (0.5, 0.2),  # p = 0.75
        (0.6, 0.0),  # end
        (0.9, 0.0),  # 0 after end
        (1.0, 0.0),
    ],
)
def test_linear_hold_before_start_zero_after_end(progress, expected):
    assert_close(schedule_value("linear", progress, m=0.8, start=0.2, end=0.6), expected, **TOL)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "gamma"])
def test_every_decaying_shape_holds_then_reaches_zero(name):
    # before start: the shape's value at p = 0 (m, or m^γ for gamma); after end: exactly 0
    at_start = {"linear": 0.9, "cosine": 0.9, "sigmoid": 0.9, "gamma": 0.81}[name]
    for progress in (0.0, 0.05, 0.1):
        assert_close(schedule_value(name, progress, m=0.9, start=0.1, end=0.7), at_start, **TOL)
    for progress in (0.7, 0.71, 0.9, 1.0):
        assert schedule_value(name, progress, m=0.9, start=0.1, end=0.7) == 0.0


# ---------------------------------------------------------------------------------------------------
# invert: ρ = shape(1 − p)


@pytest.mark.parametrize(
    "progress, expected",
    [
        (0.0, 0.0),  # shape(1) = 0
        (0.2, 0.2475),  # p = 0.25 → 0.99·(1 − 0.75)
        (0.4, 0.495),
        (0.6, 0.7425),
        (0.8, 0.99),
        (1.0, 0.99),  # held at the full value after end
    ],
)
def test_linear_invert(progress, expected):
    assert_close(schedule_value("linear", progress, m=0.99, end=0.8, invert=True), expected, **TOL)


def test_invert_holds_zero_before_start():
    for progress in (0.0, 0.1, 0.2):
        assert schedule_value("linear", progress, m=0.5, start=0.2, end=0.6, invert=True) == 0.0
    assert_close(schedule_value("linear", 0.3, m=0.5, start=0.2, end=0.6, invert=True), 0.125, **TOL)


def test_gamma_invert():
    # progress 0.2 → p = 0.25 → q = 0.75 → (0.99·0.25)^2
    assert_close(schedule_value("gamma", 0.2, m=0.99, end=0.8, invert=True), 0.06125625, **TOL)
    assert_close(schedule_value("gamma", 0.8, m=0.99, end=0.8, invert=True), 0.9801, **TOL)


def test_cosine_invert():
    # progress 0.25 of [0, 1] → q = 0.75 → (1 − √2/2)/2
    assert_close(
        schedule_value("cosine", 0.25, m=1.0, end=1.0, invert=True), (1.0 - math.sqrt(2.0) / 2.0) / 2.0, **TOL
    )


# ---------------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("start, end", [(0.5, 0.5), (0.6, 0.4), (0.0, 0.0)])
@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "gamma", "step"])
def test_end_must_exceed_start(name, start, end):
    with pytest.raises(ValueError, match="end"):
        schedule_value(name, 0.3, m=0.9, start=start, end=end)


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_value("exponential", 0.3)


def test_step_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        schedule_value("step", 0.3, m=0.9, end=0.8, milestones=[0.25, 0.5], values=[0.5])


def test_registry_lists_all_shapes():
    assert {"constant", "linear", "cosine", "sigmoid", "gamma", "step"} <= set(SCHEDULES)


# ---------------------------------------------------------------------------------------------------
# config entry point


def test_schedule_from_cfg_linear():
    rho = schedule_from_cfg({"name": "linear", "m": 0.99, "start": 0.0, "end": 0.8})
    assert_close(rho(0.0), 0.99, **TOL)
    assert_close(rho(0.2), 0.7425, **TOL)
    assert rho(0.8) == 0.0


def test_schedule_from_cfg_step_with_missing_lists():
    rho = schedule_from_cfg(
        {"name": "step", "m": 0.7, "start": 0.0, "end": 1.0, "milestones": None, "values": None}
    )
    assert_close(rho(0.5), 0.7, **TOL)


def test_schedule_from_cfg_fails_early():
    with pytest.raises(ValueError):
        schedule_from_cfg({"name": "linear", "m": 0.99, "start": 0.8, "end": 0.2})
    with pytest.raises(ValueError):
        schedule_from_cfg({"name": "nope", "m": 0.99})
    with pytest.raises(ValueError):
        schedule_from_cfg({"name": "step", "m": 0.99, "milestones": [0.5], "values": []})


# ===================================================================================================
# the authors' clock (RLVR-Schedule ray_trainer.py:384-385 + agent_loop.py _prefix_curriculum)


def _authors_rho(mode, step, T, m=0.99, start=0.0, end=0.8, gamma=2.0):
    """agent_loop.py _prefix_curriculum, written out: integer window, steps counted from 1."""
    min_step, max_step = int(T * start), int(T * end)
    progress = min(max((step - min_step) / (max_step - min_step), 0), 1)
    linear = m * (1 - progress)
    if mode == "linear":
        return linear
    if mode == "gamma":
        return linear**gamma
    k = 8.0
    sig = 1 / (1 + math.exp(k * (progress - 0.5)))
    sig_start, sig_end = 1 / (1 + math.exp(-k * 0.5)), 1 / (1 + math.exp(k * 0.5))
    return m * (sig - sig_end) / (sig_start - sig_end)


@pytest.mark.parametrize("T", [300, 101])
@pytest.mark.parametrize("mode", ["linear", "sigmoid", "gamma"])
def test_rho_sequence_matches_the_authors_clock(T, mode):
    from crs.schedules import schedule_at_step

    got = [schedule_at_step(mode, s, T) for s in range(1, T + 1)]
    want = [_authors_rho(mode, s, T) for s in range(1, T + 1)]
    assert_close(got, want, rtol=0.0, atol=1e-12)
    # T = 101: s_max = int(80.8) = 80, so ρ reaches 0 at rollout 80 (not 80.8 → 81)
    s_max = int(T * 0.8)
    assert got[s_max - 1] == 0.0 and got[s_max - 2] > 0.0
    assert got[0] < 0.99  # rollout 1 is already one step into the window


def test_old_loss_time_clock_differs():
    """Planted: the old clock (progress = global_step / T from 0) gives other values for T = 101."""
    from crs.schedules import schedule_at_step

    old = [schedule_value("linear", s / 101) for s in range(101)]
    new = [schedule_at_step("linear", s, 101) for s in range(1, 102)]
    assert max(abs(a - b) for a, b in zip(old, new)) > 1e-3


# --- issue 23: a run too short for its schedule says so (crs/schedules.py short_run_warning) ---


def _short_warning(*overrides: str, total: int | None = None):
    from crs.cli import compose
    from crs.naming import driven_knobs
    from crs.schedules import short_run_warning

    cfg = compose(list(overrides))
    n = total if total is not None else int(cfg.trainer.max_steps)
    return short_run_warning(cfg.schedule, driven_knobs(cfg.method.credit), n, cfg.method.name)


def test_short_run_warns_for_debug_fast_tp_schedule():
    line = _short_warning("debug=fast", "method=tp_schedule")
    assert line and line.startswith("crs: warning:") and "\n" not in line
    assert (
        "look alike" in line and "schedule=linear" in line and "tp_schedule equals GRPO on 2 of them" in line
    )


def test_short_run_silent_for_default_runs():
    assert _short_warning() is None  # grpo: nothing driven
    assert _short_warning("method=tp_schedule") is None  # 300 rollouts, a 240-rollout window
    assert _short_warning("debug=fast", "method=pure") is None  # constant ρ = 1: PURE all the way
    assert _short_warning("debug=fast") is None  # grpo has no knob to compare


def test_short_run_warns_when_rho_is_zero_throughout():
    line = _short_warning("method=pure", "schedule=constant", "schedule.m=0")
    assert line and "plain GRPO for the whole run" in line
