"""``crs compare``: one row per configuration of a sweep, mean ± std and a 95% CI over seeds.

A sweep (``crs train -m ...``) leaves one MLflow parent run (``crs.role=sweep``, ``swept_keys``) and one
child run per job, tagged ``sweep_id`` and ``sweep.<key>`` (see :mod:`crs.sweep` and :mod:`crs.tracking`).
This command reads them back with ``mlflow.search_runs`` and groups the jobs into **cells**: the unique
combinations of the swept keys except ``seed``, so every seed of a configuration lands in the same row.
Without sweep information (single runs, ``--experiment``) the cells are the tags ``method`` × ``schedule``
× ``loss`` (plus ``model``/``benchmark`` when those differ between runs).

Per cell it reports the finished runs (the seeds the statistics use), the failed/killed runs (never
hidden: a cell whose runs all failed still has a row, and the errors are listed under the table), and,
as mean ± std with a Student-t 95% confidence interval (none for a single seed):

- final and best eval accuracy (``final/eval_accuracy_end``, ``final/eval_accuracy_best``);
- steps to reach ``--threshold`` train accuracy: the first optimizer step at which the trailing
  5-step moving average of the per-step ``accuracy`` reaches the threshold (raw per-step accuracy on a
  group of a few prompts is too noisy: one lucky batch is not "learned");
- final entropy (``final/entropy_last``) and training time (``final/train_time_s``; model build excluded);
- any ``--metric NAME[:max|:min]`` you add (the run's last logged value).

The best cell per column is highlighted, and the caption says which direction counts as best. Machine
formats (``csv``, ``markdown``, ``json``) print mean, std, ci95_low, ci95_high and n per metric to stdout,
for papers and scripts. ``--plot DIR`` writes learning curves (mean over seeds, min–max band) and
trajectory-percentile heatmaps (``diag/entropy_bin_*``, ``diag/kl_bin_*``) per cell, and logs them under
``compare/`` in the sweep's parent run.

    crs compare                                   # the last sweep (or every run of experiment "crs")
    crs compare --last --plot plots               # + PNGs in plots/, also logged to the parent run
    crs compare --sweep 3fa2c1d0                  # a sweep id, a parent run id, or a sweep dir
    crs compare --sweep multirun/2026-01-01/12-00-00 --format markdown > table.md
    crs compare --experiment crs --format json --threshold 0.8 --metric final/reward_last10
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SMOOTH_WINDOW = 5
LOC_METRICS = ("loc/adv_share", "loc/kl_share", "loc/decisive_frac")
LOC_TITLES = {
    "loc/adv_share": "credit on decisive (adv)",
    "loc/kl_share": "credit on decisive (KL)",
    "loc/decisive_frac": "decisive token frac",
}
CURVE_METRICS = ("accuracy", "reward", "entropy/all", "schedule/rho", "eval_accuracy")
HEATMAP_FAMILIES = ("entropy", "kl")
FALLBACK_KEYS = ("method", "schedule", "loss")
FAILED_STATUSES = ("FAILED", "KILLED")
MISSING = "–"


class CompareError(Exception):
    """Nothing to compare, or a selector that matches nothing: one line on stderr, exit 1."""


# ---------------------------------------------------------------------------------------------------
# statistics


@dataclass
class Stat:
    """Summary of one metric over the finished runs of a cell.

    Args:
        n: number of runs that contributed a value.
        mean, std: sample mean and standard deviation (``ddof=1``; ``None`` for ``n < 2``).
        ci95_low, ci95_high: Student-t 95% confidence interval of the mean (``None`` for ``n < 2``).
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


def describe(values: Iterable[float | None]) -> Stat:
    """Mean, sample std and a two-sided 95% Student-t interval of the non-missing values.

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
    from scipy.stats import t

    std = statistics.stdev(vals)
    half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half)


def steps_to_threshold(
    history: Sequence[tuple[int, float]], threshold: float, window: int = SMOOTH_WINDOW
) -> int | None:
    """First step at which the trailing moving average of a per-step metric reaches ``threshold``.

    Only full windows count (a single lucky first batch must not count as "learned"); a history
    shorter than the window is averaged over its whole length instead.

    Args:
        history: ``(step, value)`` pairs in any order; for a repeated step the last pair wins.
        threshold: the level to reach (``>=``, with a 1e-9 tolerance for float sums).
        window: moving-average length.
    Returns:
        The step of the window's last point, or ``None`` if the average never reaches the threshold.
    """
    by_step: dict[int, float] = {}
    for step, value in history:
        if value is not None and math.isfinite(value):
            by_step[int(step)] = float(value)
    steps = sorted(by_step)
    if not steps:
        return None
    w = max(1, min(window, len(steps)))
    vals = [by_step[s] for s in steps]
    total = math.fsum(vals[:w])
    for i in range(w - 1, len(vals)):
        if i >= w:
            total += vals[i] - vals[i - w]
        if total / w >= threshold - 1e-9:
            return steps[i]
    return None


# ---------------------------------------------------------------------------------------------------
# what to compare


@dataclass(frozen=True)
class Column:
    """One numeric column of the table.

    Args:
        key: machine name (csv/json field prefix).
        title: table header.
        better: ``"max"``, ``"min"`` or ``""`` (not ranked).
        digits: decimals shown.
        why: the caption's word for the better direction.
    """

    key: str
    title: str
    better: str
    digits: int
    why: str = ""


def base_columns(threshold: float) -> list[Column]:
    return [
        Column("eval_accuracy_end", "eval acc (end)", "max", 3, "higher"),
        Column("eval_accuracy_best", "eval acc (best)", "max", 3, "higher"),
        Column(
            "steps_to_threshold",
            f"steps to acc≥{threshold:g}",
            "min",
            1,
            "fewer (cells where every seed got there)",
        ),
        Column("entropy_last", "entropy (last)", "max", 3, "higher (less entropy collapse)"),
        Column("train_time_s", "train time (s)", "min", 0, "shorter"),
    ]


def parse_metric_arg(spec: str) -> Column:
    """``NAME`` / ``NAME:max`` / ``NAME:min`` → an extra column (``max``/``min`` turn on highlighting)."""
    name, _, better = spec.rpartition(":") if spec.endswith((":max", ":min")) else (spec, "", "")
    return Column(f"metric:{name}", name, better, 4, {"max": "higher", "min": "lower"}.get(better, ""))


@dataclass
class Selection:
    """Which runs to read and how to describe them."""

    uri: str
    description: str
    experiment_ids: list[str] | None  # None: all experiments
    filter_string: str = ""
    parent: Any = None  # mlflow Run of the sweep parent
    sweep_id: str | None = None


def _default_uri() -> str:
    from crs.tracking import default_uri

    return default_uri()


def _existing_store(uri: str) -> str:
    """Refuse a sqlite path that does not exist: MLflow would silently create an empty store there."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise CompareError(
            f"no MLflow store at {uri[len('sqlite:///') :]} (run crs train there first, or pass --uri)"
        )
    return uri


def _quote(value: str) -> str:
    if "'" in value:
        raise CompareError(f"invalid id {value!r}")
    return f"'{value}'"


def _search(uri: str, **kwargs: Any):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(**kwargs)


def _find_parents(uri: str, filter_extra: str = "", max_results: int = 1) -> list:
    flt = "tags.`crs.role` = 'sweep'" + (f" and {filter_extra}" if filter_extra else "")
    return _search(
        uri,
        search_all_experiments=True,
        filter_string=flt,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
        output_format="list",
    )


def _from_parent(uri: str, parent, how: str) -> Selection:
    sweep_id = parent.data.tags.get("sweep_id")
    if not sweep_id:
        raise CompareError(f"run {parent.info.run_id} is tagged as a sweep but has no sweep_id tag")
    return Selection(
        uri, how, [parent.info.experiment_id], f"tags.sweep_id = {_quote(sweep_id)}", parent, sweep_id
    )


def resolve(args: argparse.Namespace) -> Selection:
    """Turn ``--sweep/--experiment/--last`` (or none) into the runs to read.

    Args:
        args: parsed command line (``sweep``, ``experiment``, ``last``, ``uri``).
    Returns:
        A :class:`Selection`.
    Raises:
        CompareError: the selector matches nothing.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = args.uri
    if args.sweep:
        from crs.sweep import SWEEP_FILE, read_parent

        path = Path(args.sweep).expanduser()
        if path.name == SWEEP_FILE and path.is_file():
            path = path.parent
        if path.is_dir():
            info = read_parent(path)
            if info is None:
                raise CompareError(
                    f"{path} has no {SWEEP_FILE} (a tracking=none sweep, or not launched by crs train -m)"
                )
            uri = _existing_store(uri or info["uri"])  # the file knows where the sweep was tracked
            try:
                parent = MlflowClient(uri).get_run(info["run_id"])
            except MlflowException:
                parent = None
            if parent is None:  # parent deleted: the children still carry the sweep id
                return Selection(
                    uri,
                    f"sweep {info['sweep_id']} (dir {path})",
                    None,
                    f"tags.sweep_id = {_quote(info['sweep_id'])}",
                    None,
                    info["sweep_id"],
                )
            return _from_parent(uri, parent, f"sweep {info['sweep_id']} (dir {path})")
        uri = _existing_store(uri or _default_uri())
        value = sweep_id = args.sweep.strip()
        try:
            run = MlflowClient(uri).get_run(value)
        except MlflowException:
            run = None
        if run is not None and run.data.tags.get("sweep_id"):  # a parent's or a job's run id: its sweep
            if run.data.tags.get("crs.role") == "sweep":
                return _from_parent(uri, run, f"sweep {run.data.tags['sweep_id']}")
            sweep_id = run.data.tags["sweep_id"]
        flt = f"tags.sweep_id = {_quote(sweep_id)}"
        parents = _find_parents(uri, flt)
        if parents:
            return _from_parent(uri, parents[0], f"sweep {sweep_id}")
        if _search(uri, search_all_experiments=True, filter_string=flt, max_results=1, output_format="list"):
            return Selection(uri, f"sweep {sweep_id} (no parent run)", None, flt, None, sweep_id)
        raise CompareError(f"no sweep {value!r} in {uri} (tried: sweep id, run id, sweep dir)")
    uri = _existing_store(uri or _default_uri())
    if args.experiment:
        exp = MlflowClient(uri).get_experiment_by_name(args.experiment)
        if exp is None:
            names = [e.name for e in MlflowClient(uri).search_experiments()]
            raise CompareError(
                f"no experiment {args.experiment!r} in {uri} (there are: {', '.join(names) or 'none'})"
            )
        return Selection(uri, f"experiment {args.experiment}", [exp.experiment_id])
    parents = _find_parents(uri)
    if parents:
        return _from_parent(uri, parents[0], f"last sweep {parents[0].data.tags.get('sweep_id')}")
    if args.last:
        raise CompareError(f"no sweep in {uri} (run `crs train -m ...` first, or use --experiment NAME)")
    exp = MlflowClient(uri).get_experiment_by_name("crs")
    if exp is None:
        raise CompareError(f"no sweep and no experiment 'crs' in {uri} (wrong directory? pass --uri)")
    return Selection(uri, "experiment crs (no sweep found)", [exp.experiment_id])


# ---------------------------------------------------------------------------------------------------
# reading runs


class Histories:
    """``MlflowClient.get_metric_history`` with a cache: each (run, metric) is read at most once."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        self.cache: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def get(self, run_id: str, key: str) -> list[tuple[int, float]]:
        if (run_id, key) not in self.cache:
            metrics = sorted(self.client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
            last: dict[int, float] = {}
            for m in metrics:  # a step logged twice: the later value wins, as in MLflow's "latest"
                last[int(m.step)] = float(m.value)
            self.cache[(run_id, key)] = sorted(last.items())
        return self.cache[(run_id, key)]


@dataclass
class RunInfo:
    run_id: str
    name: str
    status: str
    seed: str
    error: str | None
    values: dict[str, float | None] = field(default_factory=dict)
    has_accuracy: bool = False  # logged a per-step accuracy (the denominator of steps-to-threshold)


@dataclass
class Cell:
    """One row: a configuration and all its runs."""

    key: tuple[str, ...]
    runs: list[RunInfo] = field(default_factory=list)
    stats: dict[str, Stat] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " · ".join(self.key)

    @property
    def finished(self) -> list[RunInfo]:
        return [r for r in self.runs if r.status == "FINISHED"]

    @property
    def failed(self) -> list[RunInfo]:
        return [r for r in self.runs if r.status in FAILED_STATUSES]

    @property
    def running(self) -> list[RunInfo]:
        return [r for r in self.runs if r.status not in FAILED_STATUSES and r.status != "FINISHED"]


@dataclass
class Comparison:
    """Everything the renderers need."""

    selection: Selection
    keys: list[str]
    keys_source: str
    columns: list[Column]
    cells: list[Cell]
    threshold: float
    df: Any  # the pandas frame of job runs
    notes: list[str] = field(default_factory=list)
    fixed: dict[str, str] = field(default_factory=dict)  # Hydra choices shared by every run

    def best(self) -> dict[str, set[int]]:
        """Indices of the best cell(s) per ranked column; ties share it, and a column where every ranked
        cell has the same mean (or fewer than two cells have one) highlights nothing."""
        out: dict[str, set[int]] = {}
        for col in self.columns:
            if col.better not in ("max", "min"):
                continue
            cand = {}
            for i, cell in enumerate(self.cells):
                s = cell.stats.get(col.key)
                if s is None or s.mean is None:
                    continue
                if col.key == "steps_to_threshold" and s.n != s.of:
                    continue  # fewer steps over only the seeds that made it is not "faster"
                cand[i] = s.mean
            if len(cand) < 2 or len(set(cand.values())) == 1:
                continue
            target = max(cand.values()) if col.better == "max" else min(cand.values())
            out[col.key] = {i for i, v in cand.items() if abs(v - target) <= 1e-12 * max(1.0, abs(target))}
        return out

    def to_dict(self) -> dict[str, Any]:
        sel = self.selection
        best = self.best()
        return {
            "selection": sel.description,
            "uri": sel.uri,
            "sweep_id": sel.sweep_id,
            "parent_run_id": sel.parent.info.run_id if sel.parent is not None else None,
            "cell_keys": self.keys,
            "cell_keys_source": self.keys_source,
            "threshold": self.threshold,
            "smoothing_window": SMOOTH_WINDOW,
            "columns": {c.key: {"title": c.title, "better": c.better or None} for c in self.columns},
            "cells": [
                {
                    "cell": dict(zip(self.keys, cell.key)),
                    "label": cell.label,
                    "n_finished": len(cell.finished),
                    "n_failed": len(cell.failed),
                    "n_running": len(cell.running),
                    "metrics": {
                        c.key: {**cell.stats[c.key].as_dict(), "best": i in best.get(c.key, ())}
                        for c in self.columns
                    },
                    "runs": [
                        {
                            "run_id": r.run_id,
                            "name": r.name,
                            "status": r.status,
                            "seed": r.seed,
                            "error": r.error,
                            "values": r.values,
                        }
                        for r in cell.runs
                    ],
                }
                for i, cell in enumerate(self.cells)
            ],
            "fixed": self.fixed,
            "notes": self.notes,
        }


def _col(df, name: str):
    return df[name] if name in df.columns else None


def _value(row, name: str) -> float | None:
    v = row.get(name)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _text(row, name: str) -> str | None:
    v = row.get(name)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


def _sort_key(key: tuple[str, ...]) -> tuple:
    # numbers in numeric order (lr=1e-5 before 1e-4), the rest alphabetically
    out = []
    for v in key:
        try:
            out.append((0, float(v), ""))
        except ValueError:
            out.append((1, 0.0, v))
    return tuple(out)


# differ between seeds of one configuration by design
_PER_RUN_PARAMS = ("params.seed", "params.data_seed", "params.tags", "params.paths.", "params.tracking.")


def _mixed_config(sub) -> str:
    """Config params (and the code version) that differ between the runs of one cell, as a short phrase.

    Within a sweep this is empty by construction; with ``--experiment`` (cells from tags only) it is what
    tells you that, say, two learning rates were averaged into one row.
    """
    if len(sub) < 2:
        return ""
    varying = []
    for name in sub.columns:
        if (name.startswith("params.") and not name.startswith(_PER_RUN_PARAMS)) or name == "tags.git_sha":
            n = sub[name].dropna().nunique()
            if n > 1:
                varying.append(f"{name.split('.', 1)[1]} ({n} values)")
    if len(varying) > 5:
        varying = varying[:5] + [f"{len(varying) - 5} more"]
    return ", ".join(varying)


def _command_line_order(keys: list[str], parent_tags: dict[str, str]) -> list[str]:
    """Swept keys in the order the user wrote them (``swept_keys`` is stored sorted), from the parent's
    ``overrides`` tag, then its ``sweep_params``; keys found in neither keep their place at the end."""
    seen: list[str] = []
    for token in parent_tags.get("overrides", "").split():
        seen.append(token.split("=", 1)[0].lstrip("+~"))
    try:
        seen += list(json.loads(parent_tags.get("sweep_params") or "{}"))
    except (ValueError, TypeError):
        pass
    pos = {k: i for i, k in reversed(list(enumerate(seen)))}
    return sorted(keys, key=lambda k: (pos.get(k, len(seen)), keys.index(k)))


def cell_keys(sel: Selection, df) -> tuple[list[str], str, bool]:
    """The keys that define a cell, a phrase saying where they came from, and whether they are swept keys."""
    keys: list[str] = []
    source = ""
    if sel.sweep_id is not None:
        tag = sel.parent.data.tags.get("swept_keys", "") if sel.parent is not None else ""
        if tag:
            keys, source = [k.strip() for k in tag.split(",") if k.strip()], "swept keys of the sweep"
        else:
            keys = sorted(c[len("tags.sweep.") :] for c in df.columns if c.startswith("tags.sweep."))
            source = "sweep.<key> tags of the jobs"
        keys = [k for k in keys if k != "seed"]
        if sel.parent is not None:
            keys = _command_line_order(keys, sel.parent.data.tags)
    if not keys:
        keys = list(FALLBACK_KEYS)
        for extra in ("model", "benchmark"):  # never average over different models or tasks
            col = _col(df, f"tags.{extra}")
            if col is not None and col.dropna().nunique() > 1:
                keys.append(extra)
        source = (
            "tags "
            + " × ".join(keys)
            + (" (only seeds were swept)" if sel.sweep_id else " (no sweep information)")
        )
        return keys, source, False
    return keys, source, True


def _key_value(row, key: str, from_sweep: bool) -> str:
    names = ([f"tags.sweep.{key}"] if from_sweep else []) + [f"tags.{key}", f"params.{key}"]
    for name in names:
        v = _text(row, name)
        if v is not None:
            return v
    return "?"


def load(sel: Selection, threshold: float = 0.5, extra: Sequence[Column] = ()) -> Comparison:
    """Read the selected job runs and compute one :class:`Cell` per configuration.

    Args:
        sel: from :func:`resolve`.
        threshold: train-accuracy level for the steps-to-threshold column.
        extra: additional columns from ``--metric``.
    Returns:
        A :class:`Comparison`.
    Raises:
        CompareError: no job runs selected.
    """
    kwargs: dict[str, Any] = {"filter_string": sel.filter_string}
    if sel.experiment_ids is None:
        kwargs["search_all_experiments"] = True
    else:
        kwargs["experiment_ids"] = sel.experiment_ids
    df = _search(sel.uri, **kwargs)
    if len(df) and "tags.crs.role" in df.columns:
        df = df[df["tags.crs.role"].fillna("") != "sweep"]  # the parent is bookkeeping, not a job
    if not len(df):
        raise CompareError(f"{sel.description}: no job runs in {sel.uri}")
    df = df.reset_index(drop=True)
    keys, source, from_sweep = cell_keys(sel, df)
    columns = base_columns(threshold) + list(extra)
    # credit localization (crs/steps/localization.py): the run's mean over steps, when a task logged it
    loc = [m for m in LOC_METRICS if f"metrics.{m}" in df.columns]
    columns += [
        Column(
            m.replace("/", "_"),
            LOC_TITLES[m],
            "max" if m != "loc/decisive_frac" else "",
            3,
            "higher (more credit on the decisive tokens)",
        )
        for m in loc
    ]
    hist = Histories(sel.uri)
    cells: dict[tuple[str, ...], Cell] = {}
    notes: list[str] = []
    first_job: dict[tuple[str, ...], float] = {}
    rows_of: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, row in df.iterrows():
        run = RunInfo(
            run_id=row["run_id"],
            name=_text(row, "tags.mlflow.runName") or row["run_id"][:8],
            status=str(row["status"]),
            seed=_text(row, "tags.seed") or _text(row, "params.seed") or "?",
            error=_text(row, "tags.error"),
        )
        key = tuple(_key_value(row, k, from_sweep) for k in keys)
        cells.setdefault(key, Cell(key)).runs.append(run)
        rows_of[key].append(i)
        job = _value(row, "tags.job_num")
        if job is not None:
            first_job[key] = min(first_job.get(key, math.inf), job)
        if run.status != "FINISHED":
            continue  # a failed run's partial numbers would bias the statistics; it is counted, not averaged
        v = run.values
        v["eval_accuracy_end"] = _value(row, "metrics.final/eval_accuracy_end")
        if v["eval_accuracy_end"] is None:  # same definition: the last evaluation
            v["eval_accuracy_end"] = _value(row, "metrics.eval_accuracy")
        v["eval_accuracy_best"] = _value(row, "metrics.final/eval_accuracy_best")
        if v["eval_accuracy_best"] is None and _value(row, "metrics.eval_accuracy") is not None:
            v["eval_accuracy_best"] = max(x for _, x in hist.get(run.run_id, "eval_accuracy"))
        v["steps_to_threshold"] = None
        if _value(row, "metrics.accuracy") is not None:
            v["steps_to_threshold"] = steps_to_threshold(hist.get(run.run_id, "accuracy"), threshold)
            run.has_accuracy = True
        v["entropy_last"] = _value(row, "metrics.final/entropy_last")
        if v["entropy_last"] is None:
            v["entropy_last"] = _value(row, "metrics.entropy/all")
        # training time (trainer.train() + evaluations), not model build/load: the first job of a sweep
        # builds the cached model and would look slower; fall back to wall time for older runs
        v["train_time_s"] = _value(row, "metrics.final/train_time_s")
        if v["train_time_s"] is None:
            v["train_time_s"] = _value(row, "metrics.final/wall_time_s")
        for col in extra:
            v[col.key] = _value(row, f"metrics.{col.title}")
        for m in loc:
            h = [x for _, x in hist.get(run.run_id, m)]
            v[m.replace("/", "_")] = sum(h) / len(h) if h else None
    for col in extra:
        if f"metrics.{col.title}" not in df.columns:
            notes.append(f"--metric {col.title}: no run logged it")
    if from_sweep:  # the order the sweep was written in (method=grpo,tp_schedule → grpo first)
        order = sorted(cells, key=lambda k: (first_job.get(k, math.inf), _sort_key(k)))
    else:
        order = sorted(cells, key=_sort_key)
    ordered = [cells[k] for k in order]
    for cell in ordered:
        fin = cell.finished
        for col in columns:
            if col.key == "steps_to_threshold":
                with_hist = [r for r in fin if r.has_accuracy]
                s = describe(r.values["steps_to_threshold"] for r in with_hist)
                s.of = len(with_hist)
            else:
                s = describe(r.values.get(col.key) for r in fin)
            cell.stats[col.key] = s
        mixed = _mixed_config(df.loc[rows_of[cell.key]])
        if mixed:
            notes.append(f"{cell.label}: its runs differ in {mixed} — averaged together; is that intended?")
        dup = [s for s, c in Counter(r.seed for r in fin).items() if c > 1]
        if dup:
            notes.append(
                f"{cell.label}: several finished runs with seed {', '.join(dup)} (re-runs? all are averaged)"
            )
    fixed = {}
    for tag in ("method", "schedule", "loss", "model", "benchmark"):
        col = _col(df, f"tags.{tag}")
        if tag not in keys and col is not None and col.dropna().nunique() == 1:
            fixed[tag] = str(col.dropna().iloc[0])
    return Comparison(sel, keys, source, columns, ordered, threshold, df, notes, fixed)


# ---------------------------------------------------------------------------------------------------
# rendering


def _num(x: float | None, digits: int) -> str:
    return MISSING if x is None else f"{round(x, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0"


def _mean_std(s: Stat, col: Column, n_finished: int) -> str:
    if s.mean is None:
        text = MISSING
    elif s.std is None:
        text = _num(s.mean, col.digits)
    else:
        text = f"{_num(s.mean, col.digits)} ± {_num(s.std, col.digits)}"
    if col.key == "steps_to_threshold" and s.of:
        if s.n != s.of:
            text += f" ({s.n}/{s.of})"
    elif s.n and s.n != n_finished:
        text += f" (n={s.n})"
    return text


def _ci(s: Stat, col: Column) -> str:
    if s.ci95_low is None:
        return ""
    return f"[{_num(s.ci95_low, col.digits)}, {_num(s.ci95_high, col.digits)}]"


def _arrow(col: Column) -> str:
    return {"max": " ↑", "min": " ↓"}.get(col.better, "")


def caption(cmp: Comparison, style: str = "bold green") -> str:
    ranked = "; ".join(f"{c.title} {c.why}" for c in cmp.columns if c.better)
    return (
        f"mean ± std over the finished seeds of each cell, then the 95% CI of the mean (Student t; none for one "
        f"seed). Steps to acc≥{cmp.threshold:g}: first step where the {SMOOTH_WINDOW}-step moving average of train "
        f"accuracy reaches it, (k/n) = seeds that did. Best per column ({style}) — {ranked}."
    )


def header(cmp: Comparison) -> list[str]:
    sel = cmp.selection
    lines = [f"crs compare · {sel.description} · {sel.uri}"]
    if sel.parent is not None:
        t = sel.parent.data.tags
        jobs = ", ".join(
            f"{t[f'jobs.{k}']} {k}" for k in ("finished", "failed", "killed", "running") if f"jobs.{k}" in t
        )
        lines.append(
            f"parent run {sel.parent.info.run_id} ({sel.parent.info.status}{': ' + jobs if jobs else ''})"
            + (f" · {t['sweep_dir']}" if t.get("sweep_dir") else "")
        )
    n_runs = sum(len(c.runs) for c in cmp.cells)
    lines.append(f"{len(cmp.cells)} cells × seeds from {n_runs} job runs · cells = {cmp.keys_source}")
    if cmp.fixed:
        lines.append("same in every run: " + ", ".join(f"{k}={v}" for k, v in cmp.fixed.items()))
    return lines


def footer(cmp: Comparison) -> list[str]:
    """Failures (grouped by cell and error), runs still open, and other caveats."""
    lines: list[str] = []
    fails = [(c, r) for c in cmp.cells for r in c.failed]
    if fails:
        lines.append(f"failures ({len(fails)} run{'s' if len(fails) > 1 else ''}, counted but not averaged):")
        groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
        for c, r in fails:
            err = (
                (r.error or "no error tag").strip().splitlines()[0]
                if (r.error or "").strip()
                else "no error tag"
            )
            groups[(c.label, r.status, err[:160])].append(r.seed)
        for (label, status, err), seeds in groups.items():
            seeds = sorted(seeds, key=lambda x: _sort_key((x,)))
            lines.append(f"  {label}: {len(seeds)} {status} (seed {', '.join(seeds)}): {err}")
    running = [(c, r) for c in cmp.cells for r in c.running]
    if running:
        lines.append(
            f"not finished ({len(running)}; still running, or died without closing the run — not averaged):"
        )
        for c, r in running:
            lines.append(f"  {c.label}: seed {r.seed} {r.status} ({r.run_id})")
    lines += [f"note: {n}" for n in cmp.notes]
    return lines


def render_table(cmp: Comparison, console=None) -> None:
    """Print the rich table with header, caption and failure footer."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 200)
    best = cmp.best()
    for line in header(cmp):
        console.print(line, style="bold" if line.startswith("crs compare") else "dim", markup=False)
    table = Table(caption=caption(cmp), caption_justify="left", header_style="bold", show_lines=True)
    for k in cmp.keys:
        table.add_column(k)
    table.add_column("seeds", justify="right")
    table.add_column("failed", justify="right")
    for col in cmp.columns:
        table.add_column(col.title + _arrow(col), justify="right")
    for i, cell in enumerate(cmp.cells):
        nf = len(cell.failed)
        row: list[Any] = list(cell.key)
        row.append(str(len(cell.finished)) + (f" (+{len(cell.running)} open)" if cell.running else ""))
        row.append(Text(str(nf), style="bold red" if nf else "dim"))
        for col in cmp.columns:
            s = cell.stats[col.key]
            text = Text(
                _mean_std(s, col, len(cell.finished)),
                style="bold green" if i in best.get(col.key, ()) else "",
            )
            ci = _ci(s, col)
            if ci:
                text.append("\n" + ci, style="dim")
            row.append(text)
        table.add_row(*row)
    console.print(table)
    section = None
    for line in footer(cmp):
        if not line.startswith("  "):
            section = line.split(" ")[0]
        console.print(
            line,
            style="red" if section == "failures" else "yellow" if section == "not" else None,
            markup=False,
        )


def flat_rows(cmp: Comparison) -> list[dict[str, Any]]:
    """One flat dict per cell: keys, counts, then ``<metric>_{mean,std,ci95_low,ci95_high,n}``."""
    rows = []
    for cell in cmp.cells:
        row: dict[str, Any] = dict(zip(cmp.keys, cell.key))
        row.update(n_finished=len(cell.finished), n_failed=len(cell.failed), n_running=len(cell.running))
        for col in cmp.columns:
            name = col.key.replace("metric:", "")
            for k, v in cell.stats[col.key].as_dict().items():
                row[f"{name}_{k}"] = v
        row["errors"] = " | ".join(sorted({(r.error or "").splitlines()[0] for r in cell.failed if r.error}))
        rows.append(row)
    return rows


def to_csv(cmp: Comparison) -> str:
    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(flat_rows(cmp)).to_csv(buf, index=False)
    return buf.getvalue()


def to_markdown(cmp: Comparison) -> str:
    """A pipe table (best per column in bold) with the caption and failures below it, ready for a paper."""
    best = cmp.best()
    head = [*cmp.keys, "seeds", "failed", *(c.title + _arrow(c) for c in cmp.columns)]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * len(cmp.keys) + ["---:"] * (len(head) - len(cmp.keys))) + "|",
    ]
    for i, cell in enumerate(cmp.cells):
        vals = [*cell.key, str(len(cell.finished)), str(len(cell.failed))]
        for col in cmp.columns:
            s = cell.stats[col.key]
            text = _mean_std(s, col, len(cell.finished))
            ci = _ci(s, col)
            text = f"{text} {ci}" if ci else text
            vals.append(f"**{text}**" if i in best.get(col.key, ()) else text)
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in vals) + " |")
    lines += ["", caption(cmp, "bold")]
    extra = footer(cmp)
    if extra:
        lines += [""] + [f"- {ln.strip()}" if ln.startswith("  ") else ln for ln in extra]
    return "\n".join(lines) + "\n"


def to_json(cmp: Comparison) -> str:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(cmp.to_dict()), indent=2, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------------------
# plots


def _metric_present(cmp: Comparison, key: str) -> bool:
    col = _col(cmp.df, f"metrics.{key}")
    return col is not None and col.notna().any()


def _step_edges(steps: Sequence[int]):
    import numpy as np

    s = np.asarray(steps, dtype=float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _smooth(values, window: int):
    """Centred moving average (edges use the available points)."""
    import pandas as pd

    if window <= 1:
        return values
    return pd.Series(values).rolling(window, center=True, min_periods=1).mean().to_numpy()


def plot(cmp: Comparison, out_dir: Path, extra_metrics: Sequence[str] = ()) -> list[Path]:
    """Learning curves and trajectory-percentile heatmaps of the finished runs, one PNG per metric.

    Args:
        cmp: from :func:`load`.
        out_dir: where PNGs go (created).
        extra_metrics: more per-step metrics to draw (``--metric``), when they have a history.
    Returns:
        Paths of the written PNGs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    out_dir.mkdir(parents=True, exist_ok=True)
    hist = Histories(cmp.selection.uri)
    colors = plt.get_cmap("tab10")
    legend_title = " · ".join(cmp.keys)
    written: list[Path] = []
    metrics = list(CURVE_METRICS) + [
        m for m in extra_metrics if m not in CURVE_METRICS and not m.startswith("final/")
    ]
    for metric in metrics:
        if not _metric_present(cmp, metric):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        # per-step metrics of small batches are noisy: a centred moving average over ~3% of the run
        # (1 = none for short runs); evaluations, logged a few times per run, are never smoothed
        n_steps = max((len(hist.get(r.run_id, metric)) for c in cmp.cells for r in c.finished), default=0)
        window = 1 if metric.startswith("eval_") or n_steps < 40 else max(3, round(n_steps / 30))
        drawn = 0
        for i, cell in enumerate(cmp.cells):
            by_step: dict[int, list[float]] = defaultdict(list)
            runs = 0
            for r in cell.finished:
                h = hist.get(r.run_id, metric)
                runs += bool(h)
                for step, v in h:
                    by_step[step].append(v)
            if len(by_step) < 1:
                continue
            steps = sorted(by_step)
            mean = _smooth(np.array([np.mean(by_step[s]) for s in steps]), window)
            lo = _smooth(np.array([np.min(by_step[s]) for s in steps]), window)
            hi = _smooth(np.array([np.max(by_step[s]) for s in steps]), window)
            color = colors(i % 10)
            ax.plot(
                steps,
                mean,
                color=color,
                marker="o" if len(steps) <= 20 else None,
                ms=3,
                label=f"{cell.label} (n={runs})",
            )
            if runs > 1:
                ax.fill_between(steps, lo, hi, color=color, alpha=0.18, linewidth=0)
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        if metric == "accuracy":
            ax.axhline(cmp.threshold, color="grey", ls="--", lw=0.8, label=f"threshold {cmp.threshold:g}")
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel(metric)
        smoothing = f", moving average over {window} steps" if window > 1 else ""
        ax.set_title(f"{metric}: mean over seeds, band = min–max (finished runs){smoothing}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title=legend_title, title_fontsize=7)
        fig.tight_layout()
        path = out_dir / f"curve_{metric.replace('/', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    for family in HEATMAP_FAMILIES:
        prefix = f"metrics.diag/{family}_bin_"
        bins = sorted(
            int(c[len(prefix) :])
            for c in cmp.df.columns
            if c.startswith(prefix) and c[len(prefix) :].isdigit()
        )
        if not bins:
            continue
        grids = []
        for cell in cmp.cells:
            # step → bin → values over the cell's seeds
            acc: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
            runs = 0
            for r in cell.finished:
                got = False
                for b in bins:
                    for step, v in hist.get(r.run_id, f"diag/{family}_bin_{b}"):
                        acc[step][b].append(v)
                        got = True
                runs += got
            if not acc:
                continue
            steps = sorted(acc)
            grid = np.full((len(bins), len(steps)), np.nan)
            for j, s in enumerate(steps):
                for bi, b in enumerate(bins):
                    if acc[s][b]:
                        grid[bi, j] = np.mean(acc[s][b])
            if family == "kl":
                # KL of the first updates dwarfs the rest on a linear scale; each step's share per bin shows
                # *where* the policy moves (the paper's late → early shift) at every step alike
                total = np.nansum(grid, axis=0, keepdims=True)
                grid = np.divide(grid, total, out=np.full_like(grid, np.nan), where=total > 0)
            grids.append((cell, runs, steps, grid))
        if not grids:
            continue
        vmin = float(np.nanmin([np.nanmin(g) for *_, g in grids]))
        vmax = float(np.nanmax([np.nanmax(g) for *_, g in grids]))
        constant = vmax - vmin <= 1e-12 * max(1.0, abs(vmax))
        if constant:  # vmin == vmax maps values arbitrarily; widen so every panel shows the same color
            pad = max(abs(vmax) * 0.05, 1e-6)
            vmin, vmax = vmin - pad, vmax + pad
        ncols = min(3, math.ceil(math.sqrt(len(grids))))
        nrows = math.ceil(len(grids) / ncols)
        fig, axes = plt.subplots(
            nrows,
            ncols,
            figsize=(4.2 * ncols + 1.2, 3.0 * nrows),
            squeeze=False,
            sharey=True,
            constrained_layout=True,
        )
        mesh = None
        y_edges = np.linspace(0, 1, len(bins) + 1)
        for ax, (cell, runs, steps, grid) in zip(axes.ravel(), grids):
            cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # steps a cell never logged
            mesh = ax.pcolormesh(
                _step_edges(steps), y_edges, np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax
            )
            ax.set_title(f"{cell.label} (n={runs})", fontsize=8)
            ax.set_xlabel("optimizer step", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        for ax in axes[:, 0]:
            ax.set_ylabel("trajectory percentile t/L", fontsize=8)
        for ax in axes.ravel()[len(grids) :]:
            ax.axis("off")
        label = (
            "share of the step's KL(rollout‖updated), mean over seeds"
            if family == "kl"
            else "entropy (nats), mean over seeds"
        )
        fig.colorbar(mesh, ax=axes.ravel().tolist(), label=label)
        fig.suptitle(
            f"{family} by trajectory percentile ({len(bins)} bins; shared color scale)"
            + (f" — constant {vmin + (vmax - vmin) / 2:g} everywhere" if constant else ""),
            fontsize=9,
        )
        path = out_dir / f"heatmap_{family}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def log_plots(cmp: Comparison, paths: Sequence[Path]) -> str | None:
    """Attach the PNGs to the sweep's parent run under ``compare/``; returns the run id, or None."""
    parent = cmp.selection.parent
    if parent is None or not paths:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cmp.selection.uri)
    for p in paths:
        client.log_artifact(parent.info.run_id, str(p), "compare")
    return parent.info.run_id


# ---------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crs compare",
        description="Compare the runs of a sweep: one row per configuration, mean ± std and 95% CI over seeds.",
        epilog="Without a selector: the last sweep in the store, or every run of experiment 'crs' if there is none.",
    )
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--sweep", metavar="ID", help="a sweep id, the sweep's parent run id, or its sweep dir")
    sel.add_argument("--experiment", metavar="NAME", help="every job run of an MLflow experiment")
    sel.add_argument(
        "--last", action="store_true", help="the most recent sweep (parent run tagged crs.role=sweep)"
    )
    p.add_argument(
        "--uri",
        default=None,
        help="tracking store (default: sqlite:///<cwd>/mlflow.db; a sweep dir knows its own)",
    )
    p.add_argument(
        "--format",
        choices=("table", "csv", "markdown", "json"),
        default="table",
        help="table (rich, default) or machine-readable output on stdout",
    )
    p.add_argument(
        "--plot", metavar="DIR", default=None, help="write learning curves and heatmaps (PNG) to DIR"
    )
    p.add_argument(
        "--threshold", type=float, default=0.5, help="train accuracy for the steps-to-threshold column"
    )
    p.add_argument(
        "--metric",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME[:max|:min]",
        help="extra columns: a metric's last logged value (e.g. final/reward_last10:max)",
    )
    return p


def main(argv: list[str]) -> None:
    """``crs compare`` entry point (called by :func:`crs.cli.main`).

    Args:
        argv: the arguments after ``compare``.
    """
    args = build_parser().parse_args(argv)
    extra = [parse_metric_arg(m) for m in args.metric]
    machine = args.format != "table"
    # machine formats keep stdout parseable: every human message goes to stderr
    info = sys.stderr if machine else sys.stdout
    try:
        sel = resolve(args)
        cmp = load(sel, args.threshold, extra)
    except CompareError as err:
        print(f"crs: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    if args.format == "table":
        render_table(cmp)
    elif args.format == "csv":
        sys.stdout.write(to_csv(cmp))
    elif args.format == "markdown":
        sys.stdout.write(to_markdown(cmp))
    else:
        sys.stdout.write(to_json(cmp))
    sys.stdout.flush()
    if args.plot:
        paths = plot(cmp, Path(args.plot), [c.title for c in extra])
        for p in paths:
            print(f"wrote {p}", file=info)
        if not paths:
            print("crs compare: nothing to plot (no per-step metrics in the finished runs)", file=info)
        try:
            run_id = log_plots(cmp, paths)
        # the PNGs are on disk already; an unreachable or read-only artifact store must not lose them
        except Exception as err:
            print(f"crs compare: could not log the plots to the parent run: {err}", file=sys.stderr)
        else:
            if run_id:
                print(f"logged {len(paths)} plots as artifacts compare/ of parent run {run_id}", file=info)
