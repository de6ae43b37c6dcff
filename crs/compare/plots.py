"""``crs compare --plot``: learning curves (mean over seeds, min–max band) and percentile heatmaps.

Every cell gets its own color, line style and marker, so curves that coincide stay visible (a dashed
line over a solid one); evaluation curves with few points are always lines with markers.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from crs.compare.cells import Comparison, _has_metric
from crs.compare.selection import Histories
from crs.metric_layout import ui_key

CURVE_METRICS = ("accuracy", "reward", "entropy/all", "schedule/rho", "eval_accuracy")
HEATMAP_FAMILIES = ("entropy", "kl")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


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
        if not _has_metric(cmp.df, metric):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2))
        # per-step metrics of small batches are noisy: a centred moving average over ~3% of the run
        # (1 = none for short runs); evaluations, logged a few times per run, are never smoothed
        n_steps = max((len(hist.get(r.run_id, metric)) for c in cmp.cells for r in c.finished), default=0)
        window = 1 if metric.startswith("eval_") or n_steps < 40 else max(3, round(n_steps / 30))
        drawn = 0
        every = max(len(cmp.cells), n_steps // 12)  # one marker per cell every `every` steps
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
            # color, dash pattern and marker all change per cell: coinciding curves stay visible
            ax.plot(
                steps,
                mean,
                color=color,
                ls=LINESTYLES[i % len(LINESTYLES)],
                lw=1.6,
                marker=MARKERS[i % len(MARKERS)],
                # few points (evaluations): every point marked, later cells smaller and on top, so
                # identical curves show nested markers; many points: markers staggered between cells
                ms=max(3.0, 8.0 - 1.5 * i) if len(steps) <= 6 else 4,
                markevery=1 if len(steps) <= 6 else (i % every, every),
                zorder=2 + i,
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
        bins = sorted(
            {
                int(c[len(prefix) :])
                for prefix in (
                    f"metrics.{ui_key(f'diag/{family}_bin_0')[:-1]}",
                    f"metrics.diag/{family}_bin_",
                )
                for c in cmp.df.columns
                if c.startswith(prefix) and c[len(prefix) :].isdigit()
            }
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
        fig = heatmap_figure(family, [(f"{c.label} (n={n})", st, g) for c, n, st, g in grids], len(bins))
        path = out_dir / f"heatmap_{family}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight", pad_inches=0.05)  # never cut a label
        plt.close(fig)
        written.append(path)
    return written


# the colour bar's label runs along the bar, which is as tall as one row of panels (3 in): one line of
# ~55 characters is ~4 in and was cut at the top and bottom of a one-row figure; two short lines fit
COLORBAR_LABELS = {
    "kl": "share of the step's KL(rollout‖updated)\nmean over seeds",
    "entropy": "entropy (nats)\nmean over seeds",
}


def heatmap_figure(family: str, panels: Sequence[tuple[str, Sequence[int], object]], n_bins: int):
    """One panel per cell on a shared colour scale, the colour bar at the right.

    Args:
        family: ``"kl"`` or ``"entropy"`` (the colour bar's label, :data:`COLORBAR_LABELS`).
        panels: ``(title, steps, grid)`` per cell; ``grid`` is ``[n_bins, len(steps)]`` (NaN = not logged).
        n_bins: trajectory-percentile bins (the y axis).
    Returns:
        The matplotlib figure (constrained layout; everything drawn lies inside it).
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    grids = [g for *_, g in panels]
    vmin = float(np.nanmin([np.nanmin(g) for g in grids]))
    vmax = float(np.nanmax([np.nanmax(g) for g in grids]))
    constant = vmax - vmin <= 1e-12 * max(1.0, abs(vmax))
    if constant:  # vmin == vmax maps values arbitrarily; widen so every panel shows the same color
        pad = max(abs(vmax) * 0.05, 1e-6)
        vmin, vmax = vmin - pad, vmax + pad
    ncols = min(3, math.ceil(math.sqrt(len(panels))))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(4.2 * ncols + 1.2, 3.0 * nrows),
        squeeze=False,
        sharey=True,
        constrained_layout=True,
    )
    mesh = None
    y_edges = np.linspace(0, 1, n_bins + 1)
    for ax, (title, steps, grid) in zip(axes.ravel(), panels):
        cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # steps a cell never logged
        mesh = ax.pcolormesh(
            _step_edges(steps), y_edges, np.ma.masked_invalid(grid), cmap=cmap, vmin=vmin, vmax=vmax
        )
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    for ax in axes[:, 0]:
        ax.set_ylabel("trajectory percentile t/L", fontsize=8)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    cbar = fig.colorbar(mesh, ax=axes.ravel().tolist())
    cbar.set_label(COLORBAR_LABELS.get(family, family), fontsize=8)
    fig.suptitle(
        f"{family} by trajectory percentile ({n_bins} bins; shared color scale)"
        + (f" — constant {vmin + (vmax - vmin) / 2:g} everywhere" if constant else ""),
        fontsize=9,
    )
    return fig


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
