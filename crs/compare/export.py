"""Exports: a comparison as a file you can commit, that says how to make it again.

``crs compare ... --export results/<name>.json`` writes the table's rows — per cell each metric's mean,
std, 95% interval and n over seeds, and every seed's own values — together with its **provenance**: the
git commit (and whether the checkout had uncommitted changes), the exact ``crs compare`` command, the
command that reruns the sweep (``rebuild``), a hash of the jobs' resolved configs (``config_hash``: the
runs' params, minus where files and stores live), the date and the crs/trl/transformers/torch versions
(of the export and of the runs). ``--export x.csv`` writes the flat rows (one per cell, per-seed values
as JSON lists) with the provenance as ``#`` lines above them.

``crs compare --from results/<name>.json`` reads an export back into a :class:`Comparison`, so every
format renders without a store (``--markdown`` = ``--format markdown``): the table in ``docs/results.md``
is that output. ``numbers(export)`` is what two exports must share to be "the same result" (the
provenance, run ids and store paths may differ).

    make results SWEEP=smoke                         # crs sweep smoke, then crs compare --export results/smoke.json
    crs compare --last --export results/smoke.json   # export the last sweep of ./mlflow.db
    crs compare --from results/smoke.json --markdown # the table again, from the file alone
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any

from crs.compare.cells import Cell, Column, Comparison, RunInfo
from crs.compare.selection import CompareError, Selection
from crs.compare.statistics import Stat

FORMAT = "crs-compare-export/1"
# params that say where things live or how a job is looked after, not what it computes
VOLATILE_PARAMS = (
    "params.paths.",
    "params.tracking.uri",
    "params.tracking.run_name",
    "params.resume",
    "params.runs.",
    "params.grid.",
)
# wall-clock columns: a rerun never reproduces them, so numbers() leaves them out
TIMING = ("train_time_s", "wall_time_s", "step_time")
# overrides that choose the store, not the result: left out of the rebuild command
STORE_OVERRIDES = ("tracking.uri=", "root=")  # root=: where a pipeline's stage folders live


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def config_hash(df) -> str:
    """sha256 (16 hex digits) of every job's resolved config (its params), order-independent.

    Args:
        df: the job runs (``Comparison.df``), one row per run, MLflow's ``params.*`` columns.
    """
    if df is None or not len(df):
        return ""
    cols = sorted(c for c in df.columns if c.startswith("params.") and not c.startswith(VOLATILE_PARAMS))
    jobs = []
    for _, row in df.iterrows():
        job = {c[len("params.") :]: row[c] for c in cols if isinstance(row[c], str)}
        jobs.append(json.dumps(job, sort_keys=True))
    return hashlib.sha256("\n".join(sorted(set(jobs))).encode()).hexdigest()[:16]


def _sweep_record(sel: Selection) -> dict[str, Any]:
    """The sweep's grid and how it was launched: its ``crs_sweep.json`` if the folder exists, else tags."""
    if sel.parent is None:
        return {}
    tags = sel.parent.data.tags
    rec: dict[str, Any] = {}
    sweep_dir = tags.get("sweep_dir")
    if sweep_dir:
        from crs.runs.parent import read_parent

        try:
            info = read_parent(Path(sweep_dir))
        except (OSError, ValueError):
            info = None
        if info:
            rec = {k: info.get(k) for k in ("config_name", "overrides", "grid", "launcher")}
    if not rec and tags.get("pipeline_grid"):  # crs pipeline sweep (sweeps/pipelines/<grid>.yaml)
        rec = {"pipeline_grid": tags["pipeline_grid"], "overrides": shlex.split(tags.get("overrides", ""))}
    if not rec:
        try:
            params = json.loads(tags.get("sweep_params") or "{}")
        except ValueError:
            params = {}
        rec = {
            "config_name": None,
            "overrides": shlex.split(tags.get("overrides", "")),
            "sweep_params": params,
            "launcher": tags.get("launcher"),
        }
    return rec


def rebuild_command(rec: dict[str, Any]) -> str | None:
    """The command that reruns the sweep (``crs sweep <grid> ...``, ``crs pipeline sweep <grid> ...``),
    without the store it wrote to."""
    if not rec:
        return None
    overrides = [o for o in rec.get("overrides") or [] if not o.startswith(STORE_OVERRIDES)]
    if rec.get("pipeline_grid"):
        return shlex.join(["crs", "pipeline", "sweep", rec["pipeline_grid"], *overrides])
    name = rec.get("config_name")
    if name and name != "train":
        return shlex.join(["crs", "sweep", name, *overrides])
    grid = [f"{k}={v}" for k, v in (rec.get("sweep_params") or {}).items()]
    return shlex.join(["crs", "train", "-m", *grid, *overrides])


def _runs_versions(df) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if df is None:
        return out
    for col in sorted(c for c in df.columns if c.startswith("tags.version.") or c == "tags.git_sha"):
        out[col[len("tags.") :]] = sorted({str(v) for v in df[col].dropna()})
    return out


def provenance(cmp: Comparison, argv: list[str]) -> dict[str, Any]:
    """Where an export comes from: commit, commands, config hash, date, versions."""
    from crs.tracking import versions

    rec = _sweep_record(cmp.selection)
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": None if dirty is None else bool(dirty),
        "command": shlex.join(["crs", "compare", *argv]),
        "rebuild": rebuild_command(rec),
        "sweep": rec,
        "config_hash": config_hash(cmp.df),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": {**versions(), "python": platform.python_version()},
        "runs": _runs_versions(cmp.df),
    }


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def export_dict(cmp: Comparison, argv: list[str]) -> dict[str, Any]:
    """The export: ``format``, ``provenance``, ``source`` (which store and sweep) and ``table``."""
    sel = cmp.selection
    cells = cmp.cell_records(by_seed=True)
    return _clean(
        {
            "format": FORMAT,
            "provenance": provenance(cmp, argv),
            "source": {
                "selection": sel.description,
                "uri": sel.uri,
                "sweep_id": sel.sweep_id,
                "parent_run_id": sel.parent.info.run_id if sel.parent is not None else None,
            },
            "table": {
                "cell_keys": cmp.keys,
                "cell_keys_source": cmp.keys_source,
                "threshold": cmp.threshold,
                "columns": [
                    {"key": c.key, "title": c.title, "better": c.better, "digits": c.digits, "why": c.why}
                    for c in cmp.columns
                ],
                "fixed": cmp.fixed,
                "notes": cmp.notes,
                "cells": cells,
            },
        }
    )


def _csv_text(data: dict[str, Any]) -> str:
    import pandas as pd

    table = data["table"]
    rows = []
    for cell in table["cells"]:
        row: dict[str, Any] = dict(cell["cell"])
        row.update(n_finished=cell["n_finished"], n_failed=cell["n_failed"], n_running=cell["n_running"])
        fin = [r for r in cell["runs"] if r["status"] == "FINISHED"]
        row["seeds"] = json.dumps([r["seed"] for r in fin])
        for col in table["columns"]:
            name = col["key"].replace("metric:", "")
            for k, v in cell["metrics"][col["key"]].items():
                row[f"{name}_{k}"] = v
            row[f"{name}_values"] = json.dumps([r["values"].get(col["key"]) for r in fin])
        rows.append(row)
    buf = io.StringIO()
    prov = {**data["provenance"], "source": data["source"]}
    for k, v in prov.items():
        buf.write(f"# {k}: {v if isinstance(v, str) else json.dumps(v, sort_keys=True)}\n")
    pd.DataFrame(rows).to_csv(buf, index=False)
    return buf.getvalue()


def write_export(cmp: Comparison, path: str | Path, argv: list[str]) -> Path:
    """Write ``cmp`` to ``path`` (``.json``: everything; ``.csv``: flat rows with ``#`` provenance lines)."""
    path = Path(path)
    if path.suffix not in (".json", ".csv"):
        raise CompareError(f"--export {path}: the file must end in .json or .csv")
    data = export_dict(cmp, argv)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n" if path.suffix == ".json" else _csv_text(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def read_export(path: str | Path) -> dict[str, Any]:
    """Load and check a ``.json`` export. Raises :class:`CompareError` (one line) if it is not one."""
    path = Path(path)
    if path.suffix == ".csv":
        raise CompareError(f"--from {path}: read the .json export (the .csv is for spreadsheets)")
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompareError(f"--from {path}: no such file") from None
    except (OSError, ValueError) as err:
        raise CompareError(f"--from {path}: not a JSON export ({err.__class__.__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CompareError(f"--from {path}: not a crs compare export (expected format {FORMAT!r})")
    return data


def from_export(data: dict[str, Any], path: str | Path = "") -> Comparison:
    """An export back as a :class:`Comparison` (no store, no frame), for the renderers."""
    from types import SimpleNamespace

    src, table = data["source"], data["table"]
    parent = None
    if src.get("parent_run_id"):  # what the renderers read of a parent run, as the export knows it
        parent = SimpleNamespace(
            info=SimpleNamespace(run_id=src["parent_run_id"], status="as exported"),
            data=SimpleNamespace(tags={}),
        )
    sel = Selection(
        src.get("uri") or "",
        f"{src.get('selection')} (export {path})" if path else str(src.get("selection")),
        None,
        "",
        parent,
        src.get("sweep_id"),
    )
    columns = [
        Column(c["key"], c["title"], c.get("better") or "", int(c["digits"]), c.get("why") or "")
        for c in table["columns"]
    ]
    cells = []
    for c in table["cells"]:
        cell = Cell(tuple(str(v) for v in c["cell"].values()))
        for r in c["runs"]:
            cell.runs.append(
                RunInfo(
                    run_id=r["run_id"],
                    name=r["name"],
                    status=r["status"],
                    seed=r["seed"],
                    error=r.get("error"),
                    values=dict(r.get("values") or {}),
                    has_accuracy=bool(r.get("has_accuracy")),
                )
            )
        for key, m in c["metrics"].items():
            cell.stats[key] = Stat(m["n"], m["mean"], m["std"], m["ci95_low"], m["ci95_high"], m.get("of"))
        cells.append(cell)
    return Comparison(
        sel,
        list(table["cell_keys"]),
        table["cell_keys_source"],
        columns,
        cells,
        float(table["threshold"]),
        None,
        list(table.get("notes") or []),
        dict(table.get("fixed") or {}),
    )


def _timing(key: str) -> bool:
    return any(t in key for t in TIMING)


def numbers(data: dict[str, Any]) -> dict[str, Any]:
    """What two exports of the same result share: cells, statistics, per-seed values and statuses —
    not the provenance, run ids, store paths, or wall-clock columns (``TIMING``)."""
    table = data["table"]

    def keep(d: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if not _timing(k)}

    return {
        "cell_keys": table["cell_keys"],
        "columns": [c["key"] for c in table["columns"] if not _timing(c["key"])],
        "cells": [
            {
                "cell": c["cell"],
                "n_finished": c["n_finished"],
                "n_failed": c["n_failed"],
                "metrics": keep(c["metrics"]),
                "runs": [
                    {"seed": r["seed"], "status": r["status"], "values": keep(r["values"] or {})}
                    for r in c["runs"]
                ],
            }
            for c in table["cells"]
        ],
    }


def differences(a: Any, b: Any, tol: float = 1e-9, where: str = "") -> list[str]:
    """Where two :func:`numbers` differ (floats within ``tol``, relative to max(1, |x|))."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'the first' if k in a else 'the second'}")
            else:
                out += differences(a[k], b[k], tol, f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{where}: {len(a)} vs {len(b)} entries"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, tol, f"{where}[{i}]")]
    num = (int, float)
    if isinstance(a, num) and isinstance(b, num) and not isinstance(a, bool) and not isinstance(b, bool):
        return [] if abs(a - b) <= tol * max(1.0, abs(a), abs(b)) else [f"{where}: {a!r} vs {b!r}"]
    return [] if a == b else [f"{where}: {a!r} vs {b!r}"]
