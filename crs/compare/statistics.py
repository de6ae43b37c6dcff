"""Statistics of ``crs compare``: a per-cell summary over seeds and the steps-to-threshold count.

Intervals are **percentile-bootstrap 95% intervals of the mean over seeds** (``scipy.stats.bootstrap``,
9 999 resamples, fixed seed so the table is reproducible). A percentile-bootstrap interval of a mean
always lies within ``[min, max]`` of the seeds' values, so it can never leave the possible range of a
metric (an accuracy stays in [0, 1], a time stays positive) — the Student-t interval it replaces gave
``[-2.007, 2.757]`` for an accuracy with two seeds. The price: with very few seeds it is too narrow
(with two seeds it *is* the range of the two values), so read it as a description of the seeds, not
as a guarantee; the table says how many seeds each cell has.

``steps_to_threshold`` is the first optimizer step at which the trailing mean of the last ``window``
(5) per-step train accuracies reaches the threshold; the first steps average over what exists so far
(``pandas`` ``rolling(min_periods=1)``), so a run that starts above the threshold reaches it at its
first step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

SMOOTH_WINDOW = 5
CONFIDENCE = 0.95
N_RESAMPLES = 9999
CI_METHOD = "percentile bootstrap of the mean over seeds (scipy.stats.bootstrap, 9999 resamples)"


@dataclass
class Stat:
    """Summary of one metric over the finished runs of a cell.

    Args:
        n: number of runs that contributed a value.
        mean, std: sample mean and standard deviation (``ddof=1``; ``None`` for ``n < 2``).
        ci95_low, ci95_high: percentile-bootstrap 95% interval of the mean (``None`` for ``n < 2``);
            always within ``[min, max]`` of the values.
        of: runs that could have contributed (steps-to-threshold: runs with an accuracy history,
            so ``n`` of ``of`` reached the threshold); ``None`` where it equals the cell's finished runs.
    """

    n: int = 0
    mean: float | None = None
    std: float | None = None
    ci95_low: float | None = None
    ci95_high: float | None = None
    of: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {
            "mean": self.mean,
            "std": self.std,
            "ci95_low": self.ci95_low,
            "ci95_high": self.ci95_high,
            "n": self.n,
        }
        if self.of is not None:
            d["of"] = self.of
        return d


def bootstrap_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (at least two of them).

    Returns:
        ``(low, high)`` with ``min(values) <= low <= high <= max(values)``.
    """
    import numpy as np
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=float)
    lo_v, hi_v = float(x.min()), float(x.max())
    if hi_v - lo_v <= 1e-12 * max(1.0, abs(hi_v)):  # every seed agrees: nothing to resample
        return lo_v, hi_v
    res = bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=N_RESAMPLES,
        method="percentile",
        vectorized=True,
        rng=np.random.default_rng(0),
    )
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    # percentiles of resampled means lie in [min, max] up to float rounding of the means: clamp that
    return min(max(lo, lo_v), hi_v), min(max(hi, lo_v), hi_v)


def describe(values: Iterable[float | None]) -> Stat:
    """Mean, sample std and a 95% percentile-bootstrap interval of the non-missing values.

    Args:
        values: one value per seed; ``None``/NaN are dropped.
    Returns:
        A :class:`Stat`; with one value only the mean is set (no spread can be estimated from one seed).
    """
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(vals)
    if n == 0:
        return Stat(0)
    mean = math.fsum(vals) / n
    if n == 1:
        return Stat(1, mean)
    import statistics

    lo, hi = bootstrap_ci(vals)
    return Stat(n, mean, statistics.stdev(vals), lo, hi)


def steps_to_threshold(
    history: Sequence[tuple[int, float]], threshold: float, window: int = SMOOTH_WINDOW
) -> int | None:
    """First step at which the trailing mean of the last ``window`` values reaches ``threshold``.

    One lucky batch in the middle of a run does not count (it is averaged with the steps before it);
    at the start the mean is over the steps so far, so a run already above the threshold at its first
    step reaches it there (the old full-window rule reported the window's end, i.e. the same step for
    every run shorter than the window).

    Args:
        history: ``(step, value)`` pairs in any order; for a repeated step the last pair wins.
        threshold: the level to reach (``>=``, with a 1e-9 tolerance for float sums).
        window: moving-average length.
    Returns:
        The step, or ``None`` if the average never reaches the threshold.
    """
    import pandas as pd

    by_step: dict[int, float] = {}
    for step, value in history:
        if value is not None and math.isfinite(value):
            by_step[int(step)] = float(value)
    if not by_step:
        return None
    s = pd.Series(by_step).sort_index()
    avg = s.rolling(max(1, window), min_periods=1).mean()
    hit = avg[avg >= threshold - 1e-9]
    return int(hit.index[0]) if len(hit) else None
