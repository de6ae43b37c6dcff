"""The policy's own per-token log-probs and entropies on a rollout (TRL's forward, no gradient)."""

from __future__ import annotations

import torch
from trl import GRPOTrainer


def policy_logps_and_entropies(tr, inputs):
    """``(logps[B,T], entropies[B,T])`` of ``tr.model`` on ``inputs``' prompt + completion."""
    with torch.no_grad():
        logps, ent, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            tr,
            tr.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            inputs["completion_ids"].shape[1],
            compute_entropy=True,
        )
    return logps, ent
