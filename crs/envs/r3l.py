"""R³L pivotal credit (arXiv 2601.03715; ``shiweijiezero/R3L`` Trinity-RFT workflows) — the mask only.

R³L reflects on a failed attempt, retries from the diagnosed pivot step, and trains **only the
diverging suffix** of both attempts: in the authors' trajectory-level workflow
(``R3L_workflow.py`` l.149-188, 272-279) the first ``pivot`` assistant segments — maximal runs of
``action_mask == 1``, i.e. turns — get ``action_mask = 0`` in the first attempt *and* in the retry, so
the shared prefix gets no gradient. :func:`pivot_suffix_mask` is that rule on crs's turn layout
(turn k = k-th run of ``completion_mask·tool_mask``); :func:`pivot_token_mask` is the single-turn
analogue (a token position instead of a turn). Positive amplification is the existing
``r3l_amplify`` step.

Not implemented yet: the reflect-then-retry *generation* (a reflection pass that names
``retry_from_step``, replay of the prefix in a re-created environment, regeneration from the pivot,
guidance distilled out) — it needs a ``rollout_func`` with three generations per slot; and the
step-level variant's asymmetric mask (base steps < pivot kept).
"""

from __future__ import annotations

import torch
from torch import Tensor

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
