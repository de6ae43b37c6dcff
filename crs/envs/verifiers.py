"""Exact *turn* verifiers of crs's environments: the index of an episode's first wrong tool call.

``maze``: the first move that is invalid or off every shortest path (BFS distances); ``calc_tool``: the
first call that differs from the gold call at its position. Used where a method needs to know *where*
an episode went wrong (R³L's pivot turn); a new environment adds its verifier here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from crs.envs.base import StepRecord

TURN_VERIFIERS: dict[str, Callable[[Any, Sequence[StepRecord]], int]] = {}


def register_turn_verifier(name: str):
    def deco(fn):
        TURN_VERIFIERS[name] = fn
        return fn

    return deco


@register_turn_verifier("maze")
def maze_first_wrong(env, steps: Sequence[StepRecord]) -> int:
    """Index of the first call that is invalid or off every shortest path (``len(steps)`` if none)."""
    pos = env.task.start
    for j, s in enumerate(steps):
        d = s.args.get("direction")
        if not s.valid or d not in env.task.best_moves(pos):
            return j
        pos = env.task.step(pos, d)
    return len(steps)


@register_turn_verifier("calc_tool")
def calc_first_wrong(env, steps: Sequence[StepRecord]) -> int:
    """Index of the first call that is invalid or differs from the gold call at its position."""
    gold = list(getattr(env, "gold_calls", []) or [])
    for j, s in enumerate(steps):
        g = gold[j] if j < len(gold) else None
        if (
            not s.valid
            or g is None
            or s.name != g.get("name")
            or dict(s.args) != dict(g.get("arguments", {}))
        ):
            return j
    return len(steps)
