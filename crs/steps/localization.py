"""Credit localization: which share of the learning signal lands on the tokens that decide success.

On a task whose decisive tokens are known per completion (:mod:`crs.benchmarks.bifurcation`), every
optimizer step logs

``loc/adv_share``
    ``Σ_decisive |A_t·w_t| / Σ_all |A_t·w_t|`` — the per-token advantage after the credit method, times the
    token's weight in the loss (trained-token mask × method weights × the loss normaliser: ``1/L_i`` for
    TRL's per-sequence ``grpo``/``sapo`` aggregation, uniform otherwise);
``loc/kl_share``
    ``Σ_decisive KL_t / Σ_all KL_t`` — the per-token policy change, k3-KL(rollout policy ‖ updated policy)
    measured right after the optimizer step on the same micro-batch (every ``diagnostics.every`` steps);
``loc/decisive_frac``
    ``Σ decisive / Σ valid`` tokens — the share a method that spreads credit uniformly would get.

A share near ``decisive_frac`` means credit is spread evenly; near 1 means it lands where it belongs.
``crs compare`` shows them per method.
"""

from __future__ import annotations

from torch import Tensor


def loss_weights(mask: Tensor, token_weights: Tensor | None, loss_type: str) -> Tensor:
    """``[B,T]`` weight of each token in the loss (up to a batch constant)."""
    w = mask.float() * (token_weights.float() if token_weights is not None else 1.0)
    if loss_type in ("grpo", "sapo"):
        w = w / mask.float().sum(-1, keepdim=True).clamp(min=1.0)
    return w


def share(values: Tensor, decisive: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(Σ |v|·decisive·mask, Σ |v|·mask)``: numerator and denominator (reduce across processes, then divide)."""
    v = values.abs().float() * mask.float()
    return (v * decisive.float()).sum(), v.sum()


def shares_from_sums(num: float, den: float) -> float | None:
    return None if den <= 0 else num / den


__all__ = ["loss_weights", "share", "shares_from_sums"]
