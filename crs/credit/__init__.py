"""The credit layer every method builds on: the batch a step sees, the method interface, shared math.

- :mod:`crs.credit.method` — :class:`CreditBatch` (one micro-batch: advantages, mask, token weights,
  rollout features, entropies) and :class:`Method` (a step + its declared arguments + hooks);
- :mod:`crs.credit.primitives` — pure tensor math shared by methods (group statistics, TP's suffix
  mask, top-entropy selection, entropy shaping, folding token weights into advantages);
- :mod:`crs.credit.features` — per-row rollout features computed once per rollout on whole groups.

Nothing here names a method: the methods live in :mod:`crs.methods`, one module each.
"""

from __future__ import annotations

from crs.credit.features import FEATURES, register_feature, rollout_features
from crs.credit.method import CreditBatch, Method
from crs.credit.primitives import (
    adora_advantageous,
    entropy_shaped_advantages,
    fold_token_weights,
    group_stats,
    top_entropy_mask,
    tp_prefix_cut,
    tp_suffix_mask,
)

__all__ = [
    "FEATURES",
    "CreditBatch",
    "Method",
    "adora_advantageous",
    "entropy_shaped_advantages",
    "fold_token_weights",
    "group_stats",
    "register_feature",
    "rollout_features",
    "top_entropy_mask",
    "tp_prefix_cut",
    "tp_suffix_mask",
]
