"""Entropy-shaped advantages (Cheng et al., "Reasoning with Exploration: An Entropy Perspective"):
``A + s·min(α·H, |A|/κ)`` — a clipped entropy bonus on every token's advantage::

    crs train method=entropy_adv schedule=linear
"""

from __future__ import annotations

from crs.credit.method import CreditBatch, Method
from crs.credit.primitives import entropy_shaped_advantages
from crs.errors import ConfigError


def entropy_adv(
    batch: CreditBatch, alpha: float = 0.4, kappa: float = 2.0, strength: float = 1.0
) -> CreditBatch:
    """Entropy-shaped advantages (Cheng et al.): ``A + s·min(α·H, |A|/κ)``, α = 0.4, κ = 2."""
    if kappa <= 0:
        raise ConfigError(f"entropy_adv.kappa must be > 0, got {kappa}")
    adv = entropy_shaped_advantages(batch.advantages, batch.entropies, batch.mask, alpha, kappa, strength)
    return batch.replace(advantages=adv)


METHOD = Method(
    "entropy_adv",
    entropy_adv,
    help={
        "alpha": "Entropy coefficient α of the bonus α·H (paper: 0.4).",
        "kappa": "Clip κ: the bonus never exceeds |A|/κ, so it cannot flip an advantage's sign (paper: 2).",
        "strength": "Scale s of the bonus; 0 = GRPO (the knob a schedule drives).",
    },
    ranges={"alpha": "[0, inf)", "kappa": "(0, inf)", "strength": "[0, inf)"},
    needs_entropies=True,
)
