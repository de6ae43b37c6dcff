"""Group the selected runs into **cells** (one per configuration) and summarise each over its seeds.

Cells are the unique combinations of the sweep's swept keys except ``seed`` (a pandas ``groupby`` over
the runs table), so every seed of a configuration lands in the same row. Without sweep information the
cells are the tags ``method`` × ``schedule`` × ``loss`` (plus ``model``/``benchmark`` when those differ).
A method without a driven knob is tagged ``schedule=none`` (:mod:`crs.naming`): its schedule values
collapse into one cell. Failed/killed runs are counted, never averaged; statistics come from
:mod:`crs.compare.statistics`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from crs.compare.selection import CompareError, Histories, Selection, _search
from crs.compare.statistics import CI_METHOD, SMOOTH_WINDOW, Stat, describe, steps_to_threshold
from crs.metric_layout import SUMMARY_TAG, ui_key
from crs.naming import NO_SCHEDULE

FALLBACK_KEYS = ("method", "schedule", "loss")
# credit localization (crs/steps/localization.py): the run's mean over steps, when a task logged it
LOC_METRICS = ("loc/adv_share", "loc/kl_share", "loc/decisive_frac")
LOC_TITLES = {
    "loc/adv_share": "credit on decisive (adv)",
    "loc/kl_share": "credit on decisive (KL)",
    "loc/decisive_frac": "decisive token frac",
}
FAILED_STATUSES = ("FAILED", "KILLED", "DEAD")  # DEAD: left RUNNING by a dead process (crs/runs/liveness.py)


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

    def cell_records(self, by_seed: bool = False) -> list[dict[str, Any]]:
        """One record per cell (its key, counts, statistics with the best flags, and its runs), as both
        ``--json`` and ``--export`` write them; ``by_seed`` orders each cell's runs by seed (exports)."""
        best = self.best()
        out = []
        for i, cell in enumerate(self.cells):
            runs = sorted(cell.runs, key=_run_order) if by_seed else cell.runs
            out.append(
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
                            "seed": r.seed,
                            "status": r.status,
                            "name": r.name,
                            "run_id": r.run_id,
                            "error": r.error,
                            "has_accuracy": r.has_accuracy,
                            "values": r.values,
                        }
                        for r in runs
                    ],
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "selection": sel.description,
            "uri": sel.uri,
            "sweep_id": sel.sweep_id,
            "parent_run_id": sel.parent.info.run_id if sel.parent is not None else None,
            "cell_keys": self.keys,
            "cell_keys_source": self.keys_source,
            "threshold": self.threshold,
            "smoothing_window": SMOOTH_WINDOW,
            "interval": CI_METHOD,
            "columns": {c.key: {"title": c.title, "better": c.better or None} for c in self.columns},
            "cells": self.cell_records(),
            "fixed": self.fixed,
            "notes": self.notes,
        }


def _run_order(r: RunInfo) -> tuple:
    """Numeric seeds in numeric order, then the rest by name (exports read the same on every rebuild)."""
    try:
        seed = (0, float(r.seed), r.seed)
    except ValueError:
        seed = (1, 0.0, r.seed)
    return (seed, r.status, r.name)


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
# ... and, in a pipeline stage's run (tag crs.stage; crs/pipeline/runner.py), the folders of the models it
# reads: each seed's stage trains the output of that seed's previous stage, so these paths differ by seed
# by construction (a crs train stage: model.name_or_path, OPD's teacher; a TRL distillation stage:
# teacher, student and its stage.* crs train config)
_PER_STAGE_RUN_PARAMS = (
    "params.model.name_or_path",
    "params.method.credit.opd.teacher",
    "params.teacher",
    "params.student",
    "params.stage.seed",
    "params.stage.data_seed",
    "params.stage.paths.",
    "params.stage.tracking.",
    "params.stage.model.name_or_path",
    "params.stage.method.credit.opd.teacher",
)


def _mixed_config(sub) -> str:
    """Config params (and the code version) that differ between the runs of one cell, as a short phrase.

    Within a sweep this is empty by construction; with ``--experiment`` (cells from tags only) it is what
    tells you that, say, two learning rates were averaged into one row.
    """
    if len(sub) < 2:
        return ""
    per_run = _PER_RUN_PARAMS
    if "tags.crs.stage" in sub.columns and sub["tags.crs.stage"].notna().all():
        per_run = per_run + _PER_STAGE_RUN_PARAMS
    varying = []
    for name in sub.columns:
        if (name.startswith("params.") and not name.startswith(per_run)) or name == "tags.git_sha":
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
    if (key == "schedule" or key.startswith("schedule.")) and _text(row, "tags.drives") == NO_SCHEDULE:
        return NO_SCHEDULE  # the method has no knob the schedule drives: its schedules are one cell
    names = ([f"tags.sweep.{key}"] if from_sweep else []) + [f"tags.{key}", f"params.{key}"]
    for name in names:
        v = _text(row, name)
        if v is not None:
            return v
    return "?"


def _metric(row, name: str) -> float | None:
    """A run's latest value of a trainer metric, under its UI key or (older runs) its own name."""
    for col in dict.fromkeys(f"metrics.{k}" for k in (ui_key(name), name) if k):
        v = _value(row, col)
        if v is not None:
            return v
    return None


def _summary(row, name: str) -> float | None:
    """An end-of-run summary: tag ``final.<name>`` (or, in older runs, metric ``final/<name>``)."""
    v = _value(row, f"tags.{SUMMARY_TAG}{name}")
    return v if v is not None else _value(row, f"metrics.final/{name}")


def _run_values(
    row, hist: Histories, threshold: float, extra: Sequence[Column], loc: Sequence[str] = ()
) -> dict[str, Any]:
    """The numbers one finished run contributes to its cell."""
    run_id = row["run_id"]
    v: dict[str, Any] = {}
    v["eval_accuracy_end"] = _summary(row, "eval_accuracy_end")
    if v["eval_accuracy_end"] is None:  # same definition: the last evaluation
        v["eval_accuracy_end"] = _metric(row, "eval_accuracy")
    v["eval_accuracy_best"] = _summary(row, "eval_accuracy_best")
    if v["eval_accuracy_best"] is None and _metric(row, "eval_accuracy") is not None:
        v["eval_accuracy_best"] = max(x for _, x in hist.get(run_id, "eval_accuracy"))
    v["steps_to_threshold"] = None
    v["has_accuracy"] = _metric(row, "accuracy") is not None
    if v["has_accuracy"]:
        v["steps_to_threshold"] = steps_to_threshold(hist.get(run_id, "accuracy"), threshold)
    v["entropy_last"] = _summary(row, "entropy_last")
    if v["entropy_last"] is None:
        v["entropy_last"] = _metric(row, "entropy/all")
    # training time (trainer.train() + evaluations), not model build/load: the first job of a sweep
    # builds the cached model and would look slower; fall back to wall time for older runs
    v["train_time_s"] = _summary(row, "train_time_s")
    if v["train_time_s"] is None:
        v["train_time_s"] = _summary(row, "wall_time_s")
    for col in extra:
        name = col.title
        if name.startswith("final/"):
            v[col.key] = _summary(row, name[len("final/") :])
        else:
            v[col.key] = _metric(row, name)
    for m in loc:
        h = [x for _, x in hist.get(run_id, m)]
        v[m.replace("/", "_")] = sum(h) / len(h) if h else None
    return v


def _has_metric(df, name: str) -> bool:
    if name.startswith("final/"):
        short = name[len("final/") :]
        return f"tags.{SUMMARY_TAG}{short}" in df.columns or f"metrics.{name}" in df.columns
    return any(f"metrics.{k}" in df.columns for k in (ui_key(name), name) if k)


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
    import pandas as pd

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
    loc = [m for m in LOC_METRICS if _has_metric(df, m)]
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
    # one row per run: its cell key, identity, status and (finished runs only) its values
    records = []
    for _, row in df.iterrows():
        status = str(row["status"])
        rec = {f"key:{k}": _key_value(row, k, from_sweep) for k in keys}
        rec.update(
            run_id=row["run_id"],
            name=_text(row, "tags.mlflow.runName") or row["run_id"][:8],
            status=status,
            seed=_text(row, "tags.seed") or _text(row, "params.seed") or "?",
            error=_text(row, "tags.error"),
            job_num=_value(row, "tags.job_num"),
        )
        from crs.runs.liveness import dead_in_row

        if (ghost := dead_in_row(row)) is not None:  # RUNNING in MLflow, but its process is gone
            status = rec["status"] = "DEAD"
            rec["error"] = f"{ghost} (crs runs clean closes it as KILLED)"
        # a failed run's partial numbers would bias the statistics: it is counted, not averaged
        rec.update(_run_values(row, hist, threshold, extra, loc) if status == "FINISHED" else {})
        records.append(rec)
    runs = pd.DataFrame.from_records(records)
    key_cols = [f"key:{k}" for k in keys]
    groups = runs.groupby(key_cols, sort=False, dropna=False)
    first_job = groups["job_num"].min()
    cell_ids = list(groups.groups)
    cell_ids = [k if isinstance(k, tuple) else (k,) for k in cell_ids]
    if from_sweep:  # the order the sweep was written in (method=grpo,tp_schedule → grpo first)
        fj = {(k if isinstance(k, tuple) else (k,)): v for k, v in first_job.items()}
        order = sorted(cell_ids, key=lambda k: (_nan_inf(fj.get(k)), _sort_key(k)))
    else:
        order = sorted(cell_ids, key=_sort_key)
    notes: list[str] = []
    for col in extra:
        if not _has_metric(df, col.title):
            notes.append(f"--metric {col.title}: no run logged it")
    ordered: list[Cell] = []
    for key in order:
        sub = groups.get_group(key)  # pandas ≥ 2.2: a list of keys always groups by tuples
        cell = Cell(tuple(str(x) for x in key))
        for _, r in sub.iterrows():
            vals = {c.key: _finite(r.get(c.key)) for c in columns}
            cell.runs.append(
                RunInfo(
                    run_id=r["run_id"],
                    name=r["name"],
                    status=r["status"],
                    seed=r["seed"],
                    error=r["error"] if isinstance(r["error"], str) else None,
                    values=vals if r["status"] == "FINISHED" else {},
                    has_accuracy=bool(r.get("has_accuracy")) if r["status"] == "FINISHED" else False,
                )
            )
        fin = cell.finished
        for col in columns:
            if col.key == "steps_to_threshold":
                with_hist = [r for r in fin if r.has_accuracy]
                s = describe(r.values["steps_to_threshold"] for r in with_hist)
                s.of = len(with_hist)
            else:
                s = describe(r.values.get(col.key) for r in fin)
            cell.stats[col.key] = s
        mixed = _mixed_config(df.loc[sub.index])
        if mixed:
            notes.append(f"{cell.label}: its runs differ in {mixed} — averaged together; is that intended?")
        dup = [s for s, c in Counter(r.seed for r in fin).items() if c > 1]
        if dup:
            notes.append(
                f"{cell.label}: several finished runs with seed {', '.join(dup)} (re-runs? all are averaged)"
            )
        ordered.append(cell)
    fixed = {}
    for tag in ("method", "schedule", "loss", "model", "benchmark"):
        col = _col(df, f"tags.{tag}")
        if tag not in keys and col is not None and col.dropna().nunique() == 1:
            fixed[tag] = str(col.dropna().iloc[0])
    return Comparison(sel, keys, source, columns, ordered, threshold, df, notes, fixed)


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _nan_inf(x: Any) -> float:
    x = _finite(x)
    return math.inf if x is None else x
