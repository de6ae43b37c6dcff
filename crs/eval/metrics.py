"""Scores of one model on one benchmark from per-problem counts: avg@n, unbiased pass@k, greedy accuracy.

For each problem ``n`` samples are drawn and ``c`` of them are correct.

- **avg@n** (the paper's avg@k): mean over problems of ``c / n`` — the expected accuracy of one sample.
- **pass@k**: the probability that at least one of ``k`` samples is correct, estimated without bias from
  the ``n ≥ k`` samples (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"):
  ``pass@k = 1 − C(n−c, k) / C(n, k)``, averaged over problems. The plug-in estimate
  ``1 − (1 − c/n)^k`` is biased low for ``k > 1`` (verl#7240); ``pass@1`` equals avg@n exactly.
- **greedy**: accuracy of one greedy decode per problem.
- **extraction failures** are counted apart from wrong answers (``extract_fail``: share of samples whose
  final answer could not be read at all, e.g. no ``\\boxed{}``; ``extract_fail_greedy`` likewise): a
  model that answers in the wrong format is a different problem from a model that answers wrongly.

Intervals: for one model, a 95% percentile-bootstrap interval over problems (the problem set is the
sample); over training seeds, ``crs compare --benchmarks`` reports intervals over the runs of a cell.

    from crs.eval.metrics import pass_at_k, summarize
    pass_at_k(n=8, c=2, k=4)   # 0.7857…
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem: ``1 − C(n−c, k) / C(n, k)`` (Chen et al. 2021).

    Computed as ``1 − Π_{i=n−c+1}^{n} (1 − k / i)`` (the same number, no huge binomials at n = 1024).

    Args:
        n: samples drawn (≥ 1); c: how many were correct (0 ≤ c ≤ n); k: 1 ≤ k ≤ n.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


@dataclass
class ProblemResult:
    """One problem's outcome: ``correct[i]``/``extracted[i]`` per sample, the greedy decode's, and lengths."""

    correct: list[bool]
    extracted: list[bool]
    greedy_correct: bool | None = None
    greedy_extracted: bool | None = None
    truncated: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Summary:
    """Benchmark-level numbers (``values``) and their 95% intervals over problems (``intervals``)."""

    values: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else float("nan")


def per_problem(results: Sequence[ProblemResult], ks: Sequence[int]) -> dict[str, list[float]]:
    """Per-problem scores whose means are the benchmark metrics (the bootstrap resamples these)."""
    out: dict[str, list[float]] = {}
    n = len(results[0].correct) if results else 0
    out[f"avg@{n}"] = [sum(r.correct) / n for r in results]
    for k in ks:
        out[f"pass@{k}"] = [pass_at_k(n, sum(r.correct), k) for r in results]
    if results and results[0].greedy_correct is not None:
        out["greedy"] = [float(bool(r.greedy_correct)) for r in results]
        out["extract_fail_greedy"] = [float(not r.greedy_extracted) for r in results]
    out["extract_fail"] = [1 - sum(r.extracted) / n for r in results]
    out["frac_truncated"] = [r.truncated / n for r in results]
    out["mean_tokens"] = [r.tokens / n for r in results]
    return out


def summarize(results: Sequence[ProblemResult], ks: Sequence[int], intervals: bool = True) -> Summary:
    """Benchmark metrics (means over problems) with bootstrap intervals over problems.

    Args:
        results: one :class:`ProblemResult` per problem, all with the same number of samples n.
        ks: the k of each pass@k (each ≤ n).
        intervals: also compute the intervals (``crs.compare.statistics.bootstrap_ci``).
    """
    s = Summary()
    if not results:
        return s
    for name, xs in per_problem(results, ks).items():
        s.values[name] = _mean(xs)
        if intervals and len(xs) >= 2 and not name.startswith(("mean_", "frac_")):
            from crs.compare.statistics import bootstrap_ci

            s.intervals[name] = bootstrap_ci(xs)
    s.values["n_problems"] = float(len(results))
    return s
