"""Temporal schedules: how a credit criterion moves over training.

"Not only where, but when" (arXiv 2605.25381): a credit method's criterion need not be fixed. A
schedule maps training progress to a scalar ``ρ`` that drives one knob of the active credit method.
``ρ`` is fixed once per rollout, when it is generated, on the authors' clock (rollouts counted from 1,
``p = (s − int(T·start)) / (int(T·end) − int(T·start))``, :func:`schedule_at_step`), and every use of
it — the trained mask, the reward cut, the driven knob — sees that one value. For TP-Schedule ``ρ`` is the withheld fraction of each
response (only the tail ``1−ρ`` is trained); for other methods the yaml says which knob it drives.

All schedules share the authors' conventions (RLVR-Schedule ``_prefix_curriculum``)::

    p = clip((progress − start) / (end − start), 0, 1)        # schedule progress
    ρ = shape(p)   with shape(0) = m-ish and shape(1) = 0      # hold before start, 0 after end

Shapes (pure functions of ``p``)::

    constant  ρ = m                                  (ignores progress: a static criterion)
    linear    ρ = m·(1 − p)
    cosine    ρ = m·(1 + cos(πp)) / 2
    sigmoid   ρ = m·(σ(p) − σ(1)) / (σ(0) − σ(1)),  σ(p) = 1 / (1 + exp(k(p − ½)))   (k = 8)
    gamma     ρ = (m·(1 − p))^γ                      (γ = 2; m is inside the power, as in the code)
    step      ρ = m before the first milestone, values[i] from milestone i on

``invert=true`` mirrors the shape in time (``ρ = shape(1 − p)``): the criterion rises from 0 to its
full value instead of falling. Show any schedule before spending compute on it::

    crs schedule linear schedule.end=0.8 --steps 10 --plot rho.png
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEDULES: dict[str, Callable[..., float]] = {}
# accepted ranges, declared with each shape (crs/ranges.py); the common ones hold for every shape:
# ρ stays in [0, 1], so a driven knob stays between its neutral and its configured value
COMMON_RANGES = {"m": "[0, 1]", "start": "[0, 1)", "end": "(0, 1]"}
SCHEDULE_RANGES: dict[str, dict[str, str]] = {}


def register_schedule(name: str, ranges: Mapping[str, str] | None = None):
    """Decorator: register ``shape(p, m, **params) -> float`` under ``name`` (duplicates raise).

    ``ranges`` declares the accepted interval of shape parameters, e.g. ``{"k": "(0, inf)"}``.
    """

    def deco(fn):
        if name in SCHEDULES and SCHEDULES[name] is not fn:
            raise ValueError(f"schedule {name!r} is already registered")
        SCHEDULES[name] = fn
        SCHEDULE_RANGES[name] = dict(ranges or {})
        return fn

    return deco


def check_schedule(cfg: Mapping[str, Any]) -> None:
    """Raise :class:`~crs.errors.ConfigError` naming ``schedule.<key>`` for a value outside its range."""
    from crs.ranges import check_range

    name = cfg["name"]
    for key, spec in {**COMMON_RANGES, **SCHEDULE_RANGES.get(name, {})}.items():
        if key in cfg and cfg[key] is not None:
            check_range(f"schedule.{key}", cfg[key], spec)
    if name == "step":
        for key in ("milestones", "values"):
            for i, v in enumerate(cfg.get(key) or []):
                check_range(f"schedule.{key}[{i}]", v, "[0, 1]")


@register_schedule("constant")
def constant(p: float, m: float, **_: Any) -> float:
    """ρ = m for the whole run (the static version of any criterion)."""
    return m


@register_schedule("linear")
def linear(p: float, m: float, **_: Any) -> float:
    """ρ = m·(1 − p): the paper's default (m = 0.99, end = 0.8)."""
    return m * (1.0 - p)


@register_schedule("cosine")
def cosine(p: float, m: float, **_: Any) -> float:
    """ρ = m·(1 + cos πp)/2: slow start and slow finish."""
    return m * 0.5 * (1.0 + math.cos(math.pi * p))


@register_schedule("sigmoid", ranges={"k": "(0, inf)"})
def sigmoid(p: float, m: float, k: float = 8.0, **_: Any) -> float:
    """Logistic decay centred at p = ½, normalised to exactly m at p = 0 and 0 at p = 1."""

    def s(x: float) -> float:
        return 1.0 / (1.0 + math.exp(k * (x - 0.5)))

    return m * (s(p) - s(1.0)) / (s(0.0) - s(1.0))


@register_schedule("gamma", ranges={"gamma": "(0, inf)"})
def gamma(p: float, m: float, gamma: float = 2.0, **_: Any) -> float:
    """ρ = (m·(1 − p))^γ; γ > 1 drops fast early, γ < 1 holds the criterion longer."""
    return (m * (1.0 - p)) ** gamma


@register_schedule("step")
def step(
    p: float, m: float, milestones: Sequence[float] = (), values: Sequence[float] = (), **_: Any
) -> float:
    """Piecewise constant: m until ``milestones[0]``, then ``values[i]`` from ``milestones[i]`` on.

    Milestones are in schedule progress ``p`` (0 = start, 1 = end).
    """
    if len(milestones) != len(values):
        raise ValueError("step schedule: milestones and values must have the same length")
    value = m
    for milestone, v in zip(milestones, values):
        if p >= milestone:
            value = v
    return value


def _shape_at(name: str, p: float, m: float, invert: bool, params: Mapping[str, Any]) -> float:
    q = 1.0 - p if invert else p
    # every decaying shape reaches exactly 0 at the end of its window ("0 after end")
    return 0.0 if q >= 1.0 else float(SCHEDULES[name](q, m, **params))


def _check(name: str, start: float, end: float) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {sorted(SCHEDULES)}")
    if name != "constant" and not end > start:
        raise ValueError(f"schedule end ({end}) must be greater than start ({start})")


def schedule_value(
    name: str,
    progress: float,
    m: float = 0.99,
    start: float = 0.0,
    end: float = 0.8,
    invert: bool = False,
    **params: Any,
) -> float:
    """Value of schedule ``name`` at a continuous training ``progress`` ∈ [0, 1] (plots, ``crs schedule``).

    Training itself uses :func:`schedule_at_step`, the authors' integer clock.

    Args:
        name: registered shape (``constant``, ``linear``, ``cosine``, ``sigmoid``, ``gamma``, ``step``).
        progress: fraction of training done.
        m: magnitude, the value held before ``start``.
        start, end: fractions of training where the schedule begins and finishes moving.
        invert: mirror in time, so the value rises from 0 to the shape's start value.
        params: shape parameters (``k``, ``gamma``, ``milestones``, ``values``); unknown ones are ignored.

    Returns:
        ``ρ`` as a Python float.
    """
    _check(name, start, end)
    if name == "constant":
        return float(m)
    p = min(max((progress - start) / (end - start), 0.0), 1.0)
    return _shape_at(name, p, m, invert, params)


def step_progress(step: int, total: int, start: float = 0.0, end: float = 0.8) -> float:
    """The authors' schedule clock: ``p = clip((s − s_min) / (s_max − s_min), 0, 1)``.

    RLVR-Schedule counts rollouts from 1 (``ray_trainer.py``: ``self.global_steps += 1`` before the
    first generation) and resolves the window to integers once, ``s_min = int(T·start)``,
    ``s_max = int(T·end)`` (``ray_trainer.py:384-385``; ``agent_loop.py`` ``schedule_progress``).
    For T = 101, end = 0.8 that is s_max = 80, not 80.8.

    Args:
        step: 1-based index of the rollout (the authors' ``global_steps`` at generation time).
        total: ``T``, the number of rollouts in the run.
    """
    s_min, s_max = int(total * start), int(total * end)
    if s_max <= s_min:
        # the authors raise here; crs lets very short (debug) runs through with a one-rollout window
        s_max = s_min + 1
    return min(max((step - s_min) / (s_max - s_min), 0.0), 1.0)


def schedule_at_step(
    name: str,
    step: int,
    total: int,
    m: float = 0.99,
    start: float = 0.0,
    end: float = 0.8,
    invert: bool = False,
    **params: Any,
) -> float:
    """``ρ`` for rollout ``step`` (1-based) of ``total`` on the authors' clock (:func:`step_progress`)."""
    _check(name, start, end)
    if name == "constant":
        return float(m)
    return _shape_at(name, step_progress(step, total, start, end), m, invert, params)


@dataclass(frozen=True)
class Schedule:
    """A configured schedule: ``schedule(progress)`` for plots, ``schedule.at_step(s, T)`` for training."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, progress: float) -> float:
        return schedule_value(self.name, progress, **self.params)

    def at_step(self, step: int, total: int) -> float:
        return schedule_at_step(self.name, step, total, **self.params)


def schedule_from_cfg(cfg: Mapping[str, Any]) -> Schedule:
    """Turn a ``schedule`` config node into a :class:`Schedule` (validated now, not at step 1)."""
    params = {k: v for k, v in dict(cfg).items() if k not in ("name",)}
    params["milestones"] = list(params.get("milestones") or [])
    params["values"] = list(params.get("values") or [])
    name = cfg["name"]
    # fail early on a bad config, not at step 1
    schedule_value(name, 0.0, **params)
    return Schedule(name, params)


# a schedule that moves ρ over fewer rollouts than this cannot show what the schedule does
MIN_WINDOW = 10


def short_run_warning(
    cfg: Mapping[str, Any], knobs: Sequence[str], total: int, method: str = ""
) -> str | None:
    """One line when a run is too short for its schedule to separate the method from the others, else None.

    ``knobs`` are the driven knobs (``[]``: the method ignores ρ, nothing to warn about), ``total`` the
    run's number of rollouts. Warns when ρ = 0 at every rollout (the knob sits at its neutral value: the
    method *is* GRPO), or when a moving schedule's window ``int(T·end) − int(T·start)`` is under
    :data:`MIN_WINDOW` rollouts (``debug=fast``: 3 rollouts, ρ 0.49 → 0 after one of them).
    """
    if not knobs or total < 1:
        return None
    sched = schedule_from_cfg(cfg)
    rhos = [sched.at_step(s, total) for s in range(1, total + 1)]
    zero = sum(r == 0.0 for r in rhos)
    who = method or "the method"
    name = cfg["name"]
    if zero == total:
        why = f"ρ = 0 at every rollout, so {who} is plain GRPO for the whole run"
    elif (
        name != "constant"
        and int(total * cfg.get("end", 0.8)) - int(total * cfg.get("start", 0.0)) < MIN_WINDOW
    ):
        span = max(cfg.get("end", 0.8) - cfg.get("start", 0.0), 1e-9)
        need = math.ceil((MIN_WINDOW + 1) / span)
        why = (
            f"schedule={name} moves ρ {rhos[0]:.2f} → {rhos[-1]:.2f} within {total} rollout(s) and {who} equals "
            f"GRPO on {zero} of them; give it ≥ {need} rollouts (trainer.max_steps)"
        )
    else:
        return None
    return f"crs: warning: run too short for its schedule — methods will look alike: {why}"


def run_rollouts(trainer: Any, max_steps: int) -> int:
    """Rollouts a run of ``max_steps`` optimizer steps makes (before ``train()`` sets TRL's state)."""
    try:
        ga = trainer.args.gradient_accumulation_steps
        return max(1, math.ceil(max_steps * ga / trainer._micro_steps_per_rollout()))
    except Exception:
        return int(max_steps)


def warn_if_short(
    cfg: Any, knobs: Sequence[str], trainer: Any, method: str, echo: Callable[[str], Any]
) -> None:
    """Call :func:`short_run_warning` for a configured run and print its line (train start)."""
    line = short_run_warning(cfg.schedule, knobs, run_rollouts(trainer, int(cfg.trainer.max_steps)), method)
    if line:
        echo(line)
