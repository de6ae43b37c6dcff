"""Focal GRPO (arXiv 2602.06717): scale a group's advantages by ``(1 − p̂)^γ``, ``p̂`` its success rate,
so groups the policy already solves weigh less::

    crs train method=focal_grpo schedule=constant
"""

from __future__ import annotations

from crs.credit.method import CreditBatch, Method
from crs.credit.primitives import scale_rows


def focal_grpo(batch: CreditBatch, gamma: float = 2.0) -> CreditBatch:
    """Focal GRPO (arXiv 2602.06717): scale a group's advantages by ``(1 − p̂)^γ``.

    Not the seed page's "F-GRPO", which is *Factorized* Group-Relative Policy Optimization (arXiv
    2605.12995: candidate generation + ranking), a different method not implemented yet.
    ``p̂`` is the group's success rate, so easy groups are down-weighted. The focal form is this
    project's reading of the abstract ([INF] in the spec); ``γ = 0`` is GRPO.
    """
    p = batch.features["group_success"].float()
    return batch.replace(advantages=scale_rows(batch.advantages, (1.0 - p).clamp(min=0) ** gamma))


METHOD = Method(
    "focal_grpo",
    focal_grpo,
    help={"gamma": "Focal exponent γ of (1 − success rate)^γ; 0 = GRPO, larger = easy groups count less."},
    ranges={"gamma": "[0, inf)"},
    features=("group_success",),
)
