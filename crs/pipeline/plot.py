"""``crs pipeline plot``: held-out pass@1 of a pipeline sweep's student through its stages, one line per arm.

``crs compare`` ranks the arms by their final model; this picture shows how each got there: every arm
starts at the raw student (``s2d/raw_student/*`` on its pipeline run) and moves through the stages it
runs (stage 2a FKL, 2b OPD, 3 GRPO), the mean over seeds with a 95% bootstrap interval
(:func:`crs.compare.statistics.describe`); dashed lines are the teacher before and after stage 1 (the
paper's C1 check). Reused stages (an arm sharing another arm's stage by content key) count for both. ::

    crs pipeline plot --last --out docs/img/s2d.png     # the last pipeline sweep of ./mlflow.db
    crs pipeline plot --sweep <id> --metric s2d/kl_student_teacher
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any

from crs.pipeline.config import STAGES

STUDENT_AXIS = ("raw", *STAGES[1:])  # x positions: raw student, fkl, on_policy, student_rl
LABELS = {"raw": "raw student", "fkl": "2a FKL", "on_policy": "2b OPD", "student_rl": "3 GRPO"}


METRICS = (
    "s2d/heldout_pass1",
    "s2d/heldout_passk",
    "s2d/heldout_greedy",
    "s2d/kl_student_teacher",
    "s2d/kl_student_teacher_in",
)


def raw_name(metric: str, role: str) -> str:
    """``s2d/heldout_pass1`` of the model a pipeline starts from: ``s2d/raw_<role>/heldout_pass1``."""
    return metric.replace("s2d/", f"s2d/raw_{role}/", 1)


def stage_rows(uri: str, sweep_run) -> list[dict[str, Any]]:
    """One row per (pipeline run, stage): ``arm, seed, stage, metrics``; ``stage="raw"`` for the raw student,
    ``"raw_teacher"`` for the teacher before stage 1 (both from the pipeline run's ``s2d/raw_*`` metrics)."""
    from mlflow.tracking import MlflowClient

    from crs.metric_layout import ui_key

    client = MlflowClient(uri)
    exp = [sweep_run.info.experiment_id]
    pipes = client.search_runs(
        exp,
        f"tags.`crs.role` = 'pipeline' and tags.`mlflow.parentRunId` = '{sweep_run.info.run_id}'",
        max_results=10_000,
    )
    rows = []
    for pipe in pipes:
        tags = pipe.data.tags
        base = {"arm": tags.get("arm"), "seed": tags.get("seed"), "status": pipe.info.status}
        for role, stage in (("student", "raw"), ("teacher", "raw_teacher")):
            m = {name: pipe.data.metrics.get(ui_key(raw_name(name, role))) for name in METRICS}
            if any(v is not None for v in m.values()):
                rows.append(
                    {**base, "stage": stage, "metrics": {k: v for k, v in m.items() if v is not None}}
                )
        # a pipeline's final stage is re-tagged crs.role=job for the comparison: find stages by parent
        children = client.search_runs(exp, f"tags.`mlflow.parentRunId` = '{pipe.info.run_id}'")
        runs = {c.data.tags["crs.stage"]: c for c in children if c.data.tags.get("crs.stage")}
        for key, run_id in tags.items():
            if key.startswith("reused.") and run_id:
                runs[key[len("reused.") :]] = client.get_run(run_id)
        for stage, run in runs.items():
            if run.info.status == "FINISHED":
                m = {name: run.data.metrics.get(ui_key(name)) for name in METRICS}
                rows.append(
                    {**base, "stage": stage, "metrics": {k: v for k, v in m.items() if v is not None}}
                )
    return rows


def summarize(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, str], Any]:
    """``(arm, stage) → Stat`` of ``metric`` over seeds (finished pipelines' stages only)."""
    from crs.compare.statistics import describe

    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        if metric in r["metrics"]:
            values[(r["arm"], r["stage"])].append(float(r["metrics"][metric]))
    return {k: describe(v) for k, v in values.items()}


def figure(stats: dict[tuple[str, str], Any], metric: str, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({a for a, _ in stats}, key=str)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for i, (name, stage) in enumerate(
        (("teacher after stage 1", "teacher_rl"), ("raw teacher", "raw_teacher"))
    ):
        vals = [s.mean for (a, st), s in stats.items() if st == stage and s.mean is not None]
        if vals:
            ax.axhline(sum(vals) / len(vals), color="0.35", ls="--" if i == 0 else ":", lw=1, label=name)
    offsets = {a: (j - (len(arms) - 1) / 2) * 0.06 for j, a in enumerate(arms)}
    for arm in arms:
        xs, ys, lo, hi = [], [], [], []
        for x, stage in enumerate(STUDENT_AXIS):
            s = stats.get((arm, stage))
            if s is None or s.mean is None:
                continue
            raw = stage == "raw"  # one start for every arm, drawn once below
            xs.append(x + (0 if raw else offsets[arm]))
            ys.append(s.mean)
            lo.append(0 if raw else s.mean - (s.ci95_low if s.ci95_low is not None else s.mean))
            hi.append(0 if raw else (s.ci95_high if s.ci95_high is not None else s.mean) - s.mean)
        if len(xs) > 1:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", ms=4, capsize=3, lw=1.4, label=arm)
    raw = [s for (a, st), s in stats.items() if st == "raw" and s.mean is not None]
    if raw:
        s = raw[0]
        err = [[s.mean - (s.ci95_low or s.mean)], [(s.ci95_high or s.mean) - s.mean]]
        ax.errorbar([0], [s.mean], yerr=err, color="black", marker="s", ms=5, capsize=3, zorder=5)
    ax.set_xticks(range(len(STUDENT_AXIS)), [LABELS[s] for s in STUDENT_AXIS])
    ax.set_ylabel(f"held-out {metric.split('/')[-1]}")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return fig


def main(argv: list[str]) -> None:
    """``crs pipeline plot [--last | --sweep ID] [--uri URI] [--metric M] [--out PNG]``."""
    from crs.compare.selection import CompareError, resolve
    from crs.errors import ConfigError

    ap = argparse.ArgumentParser(prog="crs pipeline plot", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweep", help="a pipeline sweep's id or parent run id")
    ap.add_argument("--last", action="store_true", help="the most recent sweep of the store")
    ap.add_argument("--experiment", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--uri", default=None, help="MLflow tracking URI (default: ./mlflow.db)")
    ap.add_argument(
        "--metric", default=METRICS[0], choices=METRICS, help="a stage metric (default %(default)s)"
    )
    ap.add_argument("--out", default="plots/pipeline.png", help="the PNG to write")
    args = ap.parse_args(argv)
    try:
        sel = resolve(args)
    except CompareError as err:
        raise ConfigError(f"crs pipeline plot: {err}") from None
    if sel.parent is None or not sel.parent.data.tags.get("pipeline_grid"):
        raise ConfigError(f"crs pipeline plot: {sel.description} is not a crs pipeline sweep")
    rows = stage_rows(sel.uri, sel.parent)
    if not rows:
        raise ConfigError(f"crs pipeline plot: {sel.description} has no finished stage")
    stats = summarize(rows, args.metric)
    seeds = len({r["seed"] for r in rows})
    grid = sel.parent.data.tags["pipeline_grid"]
    fig = figure(stats, args.metric, f"{grid}: student through the stages (mean, 95% CI over {seeds} seeds)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    print(f"crs pipeline plot: {out} ({len(rows)} stage results, {seeds} seeds)")
