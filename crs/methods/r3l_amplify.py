"""R³L positive amplification (arXiv 2601.03715, ``opmd_reweight_adv``): full-reward answers get ``A = 1``,
other positive advantages ``α·s``, negative ones ``s`` (``s = r − mean_group r``)::

    crs train method=r3l_amplify loss=opmd
"""

from __future__ import annotations

import torch

from crs.credit.method import CreditBatch, Method


def r3l_amplify(batch: CreditBatch, alpha: float = 3.0, full_reward: float = 1.0) -> CreditBatch:
    """R³L positive amplification (arXiv 2601.03715, ``opmd_reweight_adv``).

    ``s = r − mean_group(r)``; ``A = 1`` if ``r ≥ full_reward``, ``α·s`` if ``s ≥ 0``, else ``s``.
    Replaces the (std-normalised) GRPO advantage. R³L trains it with the OPMD loss
    (``−A·log π``, token-mean, ×1/(1+τ); ``loss=opmd``, the method's default); the PPO-clip losses
    remain available as another option.
    """
    r = batch.features["reward"].float()
    s = r - batch.features["group_mean"].float()
    adv = torch.where(r >= full_reward, torch.ones_like(s), torch.where(s >= 0, alpha * s, s))
    if batch.advantages.dim() == 2:
        adv = adv.unsqueeze(1) * batch.mask
    return batch.replace(advantages=adv)


METHOD = Method(
    "r3l_amplify",
    r3l_amplify,
    help={
        "alpha": "Amplification α of positive (not full-reward) advantages (authors: 3).",
        "full_reward": "Reward at or above which A = 1 (the verifier's full reward).",
    },
    ranges={"alpha": "[0, inf)", "full_reward": "(-inf, inf)"},
    features=("reward", "group_mean"),
)
