"""R³L's pivotal-credit masks: only the diverging suffix of a retry and of its first attempt is trained.

:func:`pivot_suffix_mask` is the authors' rule (``R3L_workflow.py`` l.149-188, 272-279) on crs's turn
layout (turn k = k-th run of ``completion_mask·tool_mask``); :func:`pivot_token_mask` its single-turn
analogue (a token position instead of a turn).
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
