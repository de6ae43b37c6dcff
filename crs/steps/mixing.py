"""What the step-level methods share at loss time: signed step scores and the GRPO/step-advantage mix.

Step methods (PURE, CAPO, OPRL) produce per-token advantages at rollout time and mix them into GRPO's
with a schedulable knob, so that ρ = 0 gives GRPO back.
"""

from __future__ import annotations

from torch import Tensor

from crs.credit.method import CreditBatch


def as_signed(scores: Tensor, kind: str) -> Tensor:
    """Scores as PURE's ``p ∈ [−1, 1]``: ``2s − 1`` for probabilities (= P(correct) − P(wrong)), raw for rewards."""
    return 2.0 * scores - 1.0 if kind == "prob" else scores


def mix_token_advantages(batch: CreditBatch, name: str, mix: float) -> CreditBatch:
    """``A = (1 − mix)·A_GRPO + mix·batch.features[name]``; unchanged without step tensors (evaluation loss)."""
    tok = batch.features.get(name)
    if tok is None or tok.dim() != 2:
        return batch
    adv = (1.0 - mix) * batch.token_advantages() + mix * tok.to(batch.mask.dtype) * batch.mask
    return batch.replace(advantages=adv)
