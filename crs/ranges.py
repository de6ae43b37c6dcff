"""Declared value ranges: one interval string next to the function that takes the value.

Credit steps and schedule shapes declare the accepted range of each numeric argument where they are
defined (``register_credit("focal_grpo", ranges={"gamma": "[0, inf)"})``), and the config check reads
the declaration instead of a hand-written list elsewhere, so a new method gets its checks for free::

    >>> Interval.parse("[0, 1)").contains(1.0)
    False
    >>> check_range("method.credit.forking_tokens.keep_fraction", 2, "[0, 1]")
    Traceback (most recent call last):
    crs.errors.ConfigError: method.credit.forking_tokens.keep_fraction must be in [0, 1] (got 2)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from crs.errors import ConfigError

_SPEC = re.compile(r"^\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*$")


@dataclass(frozen=True)
class Interval:
    """A real interval; ``inf``/``-inf`` bounds are always open."""

    lo: float
    hi: float
    lo_open: bool
    hi_open: bool
    spec: str

    @classmethod
    def parse(cls, spec: str) -> Interval:
        """``"[0, 1]"``, ``"(0, inf)"``, ``"[0, 1)"``, ``"(-inf, 0]"`` → :class:`Interval`."""
        m = _SPEC.match(spec)
        if not m:
            raise ValueError(f"not an interval: {spec!r} (write e.g. '[0, 1]' or '(0, inf)')")
        lo, hi = float(m.group(2)), float(m.group(3))
        if lo > hi:
            raise ValueError(f"empty interval {spec!r}")
        return cls(lo, hi, m.group(1) == "(", m.group(4) == ")", spec.strip())

    def contains(self, x: float) -> bool:
        if isinstance(x, float) and math.isnan(x):
            return False
        above = x > self.lo if self.lo_open else x >= self.lo
        below = x < self.hi if self.hi_open else x <= self.hi
        return above and below

    def __str__(self) -> str:
        return self.spec


def parse_ranges(ranges: dict[str, str] | None, allowed: list[str], owner: str) -> dict[str, Interval]:
    """Parse a ``{argument: spec}`` declaration; every key must be an argument of ``owner``."""
    out = {}
    for key, spec in (ranges or {}).items():
        if key not in allowed:
            raise ValueError(f"{owner}: range declared for {key!r}, which is not an argument ({allowed})")
        out[key] = Interval.parse(spec)
    return out


def check_range(key: str, value: Any, spec: str | Interval) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is a number inside ``spec``."""
    interval = spec if isinstance(spec, Interval) else Interval.parse(spec)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key} must be a number in {interval} (got {value!r})")
    if not interval.contains(value):
        raise ConfigError(f"{key} must be in {interval} (got {value})")
