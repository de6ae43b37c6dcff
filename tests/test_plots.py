"""The heatmaps of ``crs compare --plot`` draw everything inside the figure: no clipped colour-bar label.

The colour bar's label runs along the bar, as tall as one row of panels; on a one-row figure the KL
label ("share of the step's KL(rollout‖updated), mean over seeds", one line) stuck out at the top and
bottom and the PNG showed it cut. Checked on the real figure: after drawing, the label's extent and
the figure's tight bounding box (every artist) lie inside the figure's own box, for 1 to 6 panels.

    python -m pytest tests/test_plots.py -q
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from crs.compare.plots import heatmap_figure  # noqa: E402


def _panels(n: int, n_bins: int = 10, n_steps: int = 12):
    rng = np.random.default_rng(n)
    grid = rng.random((n_bins, n_steps))
    grid /= grid.sum(axis=0, keepdims=True)
    return [(f"tp_schedule · linear (n={i + 2})", list(range(1, n_steps + 1)), grid) for i in range(n)]


def _inside(inner, outer, tol: float = 1.0) -> bool:
    """``inner`` within ``outer`` (display pixels), up to ``tol`` px of rounding."""
    return (
        inner.x0 >= outer.x0 - tol
        and inner.y0 >= outer.y0 - tol
        and inner.x1 <= outer.x1 + tol
        and inner.y1 <= outer.y1 + tol
    )


@pytest.mark.parametrize("family", ["kl", "entropy"])
@pytest.mark.parametrize("n", [1, 2, 4, 6])
def test_colorbar_label_lies_inside_the_figure(family, n):
    fig = heatmap_figure(family, _panels(n), 10)
    try:
        fig.set_dpi(120)  # what plot() saves at
        fig.canvas.draw()  # constrained layout runs at draw time
        renderer = fig.canvas.get_renderer()
        cbar_ax = fig.axes[-1]
        label = cbar_ax.yaxis.label
        assert label.get_text().startswith("share of the step's KL" if family == "kl" else "entropy")
        extent = label.get_window_extent(renderer)
        assert extent.height > 20, "the label was not drawn"
        assert _inside(extent, fig.bbox), f"colour-bar label {extent} outside the figure {fig.bbox}"
        tight = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # inches → pixels
        assert _inside(tight, fig.bbox), f"something drawn outside the figure: {tight} vs {fig.bbox}"
    finally:
        plt.close(fig)
