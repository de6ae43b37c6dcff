"""Renderers of a :class:`~crs.compare.cells.Comparison`: the rich table, csv, markdown and json.

The human table prints mean ± std over the finished seeds of each cell and, under it, the 95%
percentile-bootstrap interval of the mean (:mod:`crs.compare.statistics`); the best cell per ranked
column is highlighted. Machine formats print mean, std, ci95_low, ci95_high and n per metric.
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections import defaultdict
from typing import Any

from crs.compare.cells import Column, Comparison, _sort_key
from crs.compare.statistics import CI_METHOD, SMOOTH_WINDOW, Stat

MISSING = "–"


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
        f"mean ± std over the finished seeds of each cell, then [95% interval of the mean]: {CI_METHOD}; "
        f"within the seeds' range, so inside the possible range; with 2–3 seeds it is close to that range "
        f"(none for one seed). Steps to acc≥{cmp.threshold:g}: first step where the mean of the last "
        f"{SMOOTH_WINDOW} train accuracies (fewer at the start) reaches it, (k/n) = seeds that did. "
        f"Best per column ({style}) — {ranked}."
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
