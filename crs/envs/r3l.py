"""R³L pivotal credit (arXiv 2601.03715; ``shiweijiezero/R3L`` Trinity-RFT workflows): masks and the step.

R³L reflects on a failed attempt, retries from the diagnosed pivot step, and trains **only the
diverging suffix** of both attempts: in the authors' trajectory-level workflow
(``R3L_workflow.py`` l.149-188, 272-279) the first ``pivot`` assistant segments — maximal runs of
``action_mask == 1``, i.e. turns — get ``action_mask = 0`` in the first attempt *and* in the retry, so
the shared prefix gets no gradient. :func:`pivot_suffix_mask` is that rule on crs's turn layout
(turn k = k-th run of ``completion_mask·tool_mask``); :func:`pivot_token_mask` is the single-turn
analogue (a token position instead of a turn). Positive amplification is the existing
``r3l_amplify`` step.

The ``r3l`` credit step (mask phase) multiplies the rollout's ``r3l_keep`` ``[B,T]`` tensor into the
loss mask; the reflect-then-retry *generation* that produces it is :mod:`crs.steps.retry` (single-turn,
the embedded arithmetic and bifurcation tasks: :func:`pivot_token_mask`) and :mod:`crs.envs.retry`
(multi-turn, maze / calc_tool: the first attempt's actions before the pivot turn replayed in a fresh
environment; :func:`pivot_suffix_mask`)::

    crs train method=r3l
    crs train method=r3l benchmark=calc_tool

Not implemented: the step-level variant's asymmetric mask (base steps < pivot kept, one experience per
step) — TRL keeps an episode in one sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crs.credit import CreditBatch, register_credit
from crs.envs.turns import turn_index


def pivot_suffix_mask(loss_mask: Tensor, pivot: Tensor) -> Tensor:
    """Zero the first ``pivot[b]`` turns of each row (turns = runs of ``loss_mask == 1``).

    Args:
        loss_mask: ``[B,T]`` ``completion_mask·tool_mask``.
        pivot: ``[B]`` long, the retry step (0 = train everything; ≥ #turns = train nothing).
    Returns:
        ``[B,T]`` float mask, ≤ ``loss_mask``.
    """
    ti = turn_index(loss_mask)
    return ((ti >= pivot.long().unsqueeze(1)) & (ti >= 0)).float()


def pivot_token_mask(loss_mask: Tensor, pivot_pos: Tensor) -> Tensor:
    """Single-turn analogue: train only tokens at or after ``pivot_pos[b]`` (the retried step's first token)."""
    t = torch.arange(loss_mask.shape[1], device=loss_mask.device).unsqueeze(0)
    return (loss_mask > 0).float() * (t >= pivot_pos.long().unsqueeze(1)).float()


@register_credit(
    "r3l",
    phase="mask",
    token_features=("r3l_keep",),
    ranges={"rate": "[0, 1]", "retry_share": "(0, 1)"},
)
def r3l(
    batch: CreditBatch,
    rate: float = 1.0,
    retry_share: float = 0.5,
    guidance: str | None = None,
    pivotal: bool = True,
) -> CreditBatch:
    """R³L reflect-then-retry with pivotal credit (arXiv 2601.03715).

    The retries are generated at rollout time (:mod:`crs.steps.retry`, which reads ``rate``,
    ``retry_share`` and ``guidance``); this step only applies the pivotal mask: ``mask·r3l_keep``,
    where ``r3l_keep`` ``[B,T]`` is 0 on the shared prefix of each retry and of its first attempt
    (absent outside training rollouts: the mask is unchanged). ``pivotal: false`` = the authors'
    ``w/o_credit`` ablation (``r3l_keep`` is then all ones).
    """
    keep = batch.features.get("r3l_keep")
    if keep is None or not pivotal:
        return batch
    return batch.replace(mask=batch.mask * keep[:, : batch.mask.shape[1]].to(batch.mask))
