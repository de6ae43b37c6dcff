"""ADORA (arXiv 2602.10019, length criterion of the released code): attenuate the advantages of
*disadvantageous* groups — those whose correct answers are not longer than the wrong ones (and groups with
no correct answer) — by ``λ``::

    crs train method=adora schedule=constant
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from crs.credit.features import register_feature
from crs.credit.method import CreditBatch, Method
from crs.credit.primitives import adora_advantageous, scale_rows


@register_feature("adora_tas")
def advantageous(base: Mapping[str, Tensor], group_size: int) -> Tensor:
    """Rollout feature ``adora_tas`` ``[N]``: whether the row's group is advantageous (whole groups)."""
    return adora_advantageous(base["success"], base["length"], base["truncated"], group_size)


def adora(batch: CreditBatch, lam: float = 0.1) -> CreditBatch:
    """ADORA (arXiv 2602.10019, length criterion of the released code): ``A·λ`` for disadvantageous groups
    (including groups with no correct answer, as in the code; :func:`crs.credit.primitives.adora_advantageous`)."""
    tas = batch.features["adora_tas"].bool()
    scale = torch.where(
        tas, torch.ones_like(tas, dtype=torch.float32), torch.full_like(tas, lam, dtype=torch.float32)
    )
    return batch.replace(advantages=scale_rows(batch.advantages, scale))


METHOD = Method(
    "adora",
    adora,
    help={"lam": "Scale λ of disadvantageous groups' advantages (released code: 0.1); 1 = GRPO."},
    ranges={"lam": "[0, 1]"},
    features=("adora_tas",),
)
