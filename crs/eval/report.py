"""``crs eval``'s output: the tables and the MLflow logging.

Each (model, benchmark) result is logged as metrics ``eval/<benchmark>/<metric>`` (avg_at_<n>, pass_at_<k>,
greedy, extract_fail, …; intervals over problems as ``…_ci_low``/``…_ci_high``): on the evaluated run
when the model came from one (``eval.log_to=auto``), so ``crs compare --sweep ID --benchmarks avg@8``
shows methods × benchmarks with intervals over seeds; else on an own run tagged ``crs.role=eval`` and
``crs.eval_of`` (the run it evaluated, if any).

Tables: one row per model × benchmark (value [95% interval over problems]); when several models share a
group (a sweep's seeds), a second table per group with mean and 95% interval over seeds
(:func:`crs.compare.statistics.describe`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crs.eval.metrics import Summary
from crs.eval.sources import Target


@dataclass
class Result:
    target: Target
    benchmark: str
    summary: Summary
    cached: bool = False


def _cell(value: float | None, ci: tuple[float, float] | None = None, digits: int = 3) -> str:
    """``0.445 [0.438, 0.453]``; ``compact``: ``0.445 ±0.008`` (the interval's half-width, for narrow tables)."""
    if value is None or value != value:
        return "–"
    s = f"{value:.{digits}f}"
    return s + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "")


def _compact(value: float | None, ci: tuple[float, float] | None = None) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:.3f}" + (f" ±{(ci[1] - ci[0]) / 2:.3f}" if ci else "")


def headline(n: int, ks: Sequence[int]) -> list[str]:
    return [f"avg@{n}", *(f"pass@{k}" for k in ks if k != 1), "greedy", "extract_fail"]


def results_table(results: Sequence[Result], n: int, ks: Sequence[int]):
    """Rich table: model × benchmark rows, the headline metrics ± half the 95% interval over problems
    (the bounds themselves are logged: ``…_ci_low``/``…_ci_high``)."""
    from rich.table import Table

    cols = headline(n, ks)
    t = Table(
        title=f"crs eval: {n} samples per problem, ± half the 95% interval over problems",
        title_justify="left",
    )
    for c in ("model", "benchmark", "problems", *cols):
        left = c in ("model", "benchmark")
        t.add_column(c, justify="left" if left else "right", no_wrap=left)
    for r in results:
        v, ci = r.summary.values, r.summary.intervals
        t.add_row(
            r.target.label + (" (cached)" if r.cached else ""),
            r.benchmark,
            str(int(v.get("n_problems", 0))),
            *(_compact(v.get(c), ci.get(c)) for c in cols),
        )
    return t


def group_rows(results: Sequence[Result], metric: str) -> dict[str, dict[str, Any]]:
    """``{group: {benchmark: Stat}}`` of ``metric`` over the group's models (seeds)."""
    from crs.compare.statistics import describe

    groups: dict[str, dict[str, list[float]]] = {}
    for r in results:
        groups.setdefault(r.target.group or r.target.label, {}).setdefault(r.benchmark, []).append(
            r.summary.values.get(metric, float("nan"))
        )
    return {g: {b: describe(vals) for b, vals in by.items()} for g, by in groups.items()}


def groups_table(results: Sequence[Result], metric: str):
    """Methods × benchmarks: mean [95% bootstrap interval over seeds] (n seeds)."""
    from rich.table import Table

    rows = group_rows(results, metric)
    benches = list(dict.fromkeys(r.benchmark for r in results))
    t = Table(
        title=f"crs eval: {metric} per group, mean [95% interval over seeds] (seeds)", title_justify="left"
    )
    t.min_width = 64  # keeps the title on one line
    t.add_column("group", no_wrap=True)
    for b in benches:
        t.add_column(b, justify="right")
    for g, by in rows.items():
        cells = []
        for b in benches:
            s = by.get(b)
            if s is None or s.mean is None:
                cells.append("–")
            else:
                ci = (s.ci95_low, s.ci95_high) if s.ci95_low is not None else None
                cells.append(f"{_cell(s.mean, ci)} ({s.n})")
        t.add_row(g, *cells)
    return t


def metric_key(benchmark: str, name: str) -> str:
    """The MLflow key of a result: ``eval/<benchmark>/<name>`` with ``@`` spelled ``_at_`` (MLflow
    refuses ``@``): ``eval/aime24/avg_at_16``, ``eval/aime24/pass_at_8``."""
    return f"eval/{benchmark}/{name.replace('@', '_at_')}"


def metrics_of(result: Result) -> dict[str, float]:
    out = {}
    for k, v in result.summary.values.items():
        out[metric_key(result.benchmark, k)] = float(v)
    for k, (lo, hi) in result.summary.intervals.items():
        out[metric_key(result.benchmark, k) + "_ci_low"] = float(lo)
        out[metric_key(result.benchmark, k) + "_ci_high"] = float(hi)
    return out


def log_results(
    results: Sequence[Result], tracking: Mapping[str, Any], log_to: str, params: Mapping[str, Any]
) -> list[str]:
    """Log each target's results to MLflow; returns the run ids written to."""
    if log_to == "none" or tracking.get("name") == "none" or not results:
        return []
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from crs.locations import default_uri
    from crs.tracking import ensure_experiment, flatten

    uri = tracking.get("uri") or default_uri()
    client = MlflowClient(uri)
    ts = int(time.time() * 1000)
    by_target: dict[int, list[Result]] = {}
    for r in results:
        by_target.setdefault(id(r.target), []).append(r)
    written = []
    sampling = {k: str(v) for k, v in flatten(dict(params)).items()}
    for rs in by_target.values():
        target = rs[0].target
        metrics = [Metric(k, v, ts, 0) for r in rs for k, v in metrics_of(r).items()]
        benches = ",".join(r.benchmark for r in rs)
        if target.run_id and log_to == "auto":
            run_id = target.run_id
            tags = [
                RunTag(f"eval.{r.benchmark}", " ".join(f"{k}={v}" for k, v in sampling.items())) for r in rs
            ]
        else:
            exp = ensure_experiment(client, tracking.get("experiment") or "crs-eval", uri)
            tags = {"crs.role": "eval", "model": target.label, "benchmark": benches, **target.tags}
            if target.run_id:
                tags["crs.eval_of"] = target.run_id
            if target.seed:
                tags["seed"] = target.seed
            run_id = client.create_run(exp, run_name=f"eval {target.label}", tags=tags).info.run_id
            client.log_batch(
                run_id, params=[Param(k, v[:6000]) for k, v in sampling.items()], synchronous=True
            )
            tags = []
        own = not (target.run_id and log_to == "auto")
        try:
            for i in range(0, len(metrics), 900):
                client.log_batch(
                    run_id, metrics=metrics[i : i + 900], tags=tags if i == 0 else [], synchronous=True
                )
        except Exception:
            if own:
                client.set_terminated(run_id, "FAILED")
            raise
        if own:
            client.set_terminated(run_id, "FINISHED")
        written.append(run_id)
    return written
