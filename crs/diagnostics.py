"""Where in the trajectory does the policy change? Trajectory-percentile diagnostics.

The TP-Schedule paper explains its gains with two pictures: per-position ("stage") entropy staying
higher than GRPO's once a region starts being optimised, and KL to the rollout policy shifting from
late to early trajectory percentiles over training. crs logs the raw material for both on every run:

- ``diag/entropy_bin_<i>``: mean token entropy in percentile bin ``i`` (relative position
  ``u = t / L_i`` of token ``t`` in its own response, 10 bins), every ``diagnostics.every`` steps;
- ``diag/kl_bin_<i>``: mean per-token KL(π_rollout ‖ π_updated) (k3 estimator) in bin ``i``, measured on
  the step's last micro-batch right after the optimizer step;

and :func:`draw_heatmaps` turns their histories into percentile × step PNGs at the end of the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor


def percentile_bins(mask: Tensor, bins: int) -> Tensor:
    """Bin index of every token by relative position in its own response.

    Args:
        mask: ``[B,T]`` completion mask (1 on the response tokens, right-padded).
        bins: number of bins.
    Returns:
        ``[B,T]`` long, ``floor(t / L_i · bins)`` clipped to ``bins − 1``; ``−1`` on padding.
    """
    lengths = mask.sum(-1, keepdim=True).clamp(min=1).float()
    t = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0).float()
    idx = torch.floor(t / lengths * bins).long().clamp(max=bins - 1)
    return torch.where(mask > 0, idx, torch.full_like(idx, -1))


def binned_sums(values: Tensor, mask: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """Per-bin sum and count of ``values`` over valid tokens.

    Args:
        values: ``[B,T]``.
        mask: ``[B,T]`` completion mask.
    Returns:
        ``(sums[bins], counts[bins])`` float tensors (reduce them across processes, then divide).
    """
    idx = percentile_bins(mask, bins)
    valid = idx >= 0
    sums = torch.zeros(bins, device=values.device, dtype=torch.float32)
    counts = torch.zeros(bins, device=values.device, dtype=torch.float32)
    sums.index_add_(0, idx[valid], values[valid].float())
    counts.index_add_(0, idx[valid], torch.ones_like(values[valid], dtype=torch.float32))
    return sums, counts


def k3_kl(new_logps: Tensor, old_logps: Tensor) -> Tensor:
    """Per-token KL(π_old ‖ π_new) on tokens sampled from π_old: ``exp(Δ) − 1 − Δ``, ``Δ = new − old`` (≥ 0)."""
    delta = (new_logps - old_logps).float()
    return torch.exp(delta) - 1.0 - delta


def draw_heatmaps(
    histories: Mapping[str, Mapping[int, Sequence[float]]], out_dir: Path, title: str = ""
) -> list[Path]:
    """Draw one percentile × step heatmap per metric family.

    Args:
        histories: ``{"entropy": {step: [bin0, ..., bin9]}, "kl": {...}}``.
        out_dir: where PNGs go.
    Returns:
        Paths of the written PNGs.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for family, by_step in histories.items():
        if not by_step:
            continue
        steps = sorted(by_step)
        grid = np.array([by_step[s] for s in steps], dtype=float).T  # [bins, steps]
        bins = grid.shape[0]
        label = "KL(rollout‖updated)" if family == "kl" else "entropy (nats)"
        # raw values, and each step's share per bin: *where* in the trajectory the change/uncertainty sits
        # (the paper's "KL shifts from late to early percentiles" reads off the second panel)
        total = grid.sum(axis=0, keepdims=True)
        share = np.divide(grid, total, out=np.zeros_like(grid), where=total > 0)
        fig, axes = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True)
        extent = (steps[0] - 0.5, steps[-1] + 0.5, 0, 1)
        for ax, data, name in ((axes[0], grid, label), (axes[1], share, "share of the step's total")):
            im = ax.imshow(
                data, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest", extent=extent
            )
            ax.set_ylabel("percentile t/L")
            fig.colorbar(im, ax=ax, label=name, fraction=0.04, pad=0.01)
        axes[1].set_xlabel("optimizer step")
        axes[0].set_title(
            f"{family} by trajectory percentile ({bins} bins){' — ' + title if title else ''}", fontsize=9
        )
        fig.tight_layout()
        path = out_dir / f"{family}_by_percentile.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
