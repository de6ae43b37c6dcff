"""Token- and group-level credit methods as registered steps: thin adapters from a
:class:`~crs.credit.registry.CreditBatch` to the math in :mod:`crs.credit.primitives`.

Step-level methods (PURE, CAPO, OPRL, InT) register from :mod:`crs.steps`, turn-level ones (GiGPO,
A²TGPO, MatchTIR, R³L) from :mod:`crs.envs`.

    crs train method=forking_tokens schedule=linear
"""

from __future__ import annotations

import torch
from torch import Tensor

from crs.credit.primitives import entropy_shaped_advantages, top_entropy_mask, tp_suffix_mask
from crs.credit.registry import CreditBatch, register_credit
from crs.errors import ConfigError


@register_credit("tp_schedule", phase="mask", ranges={"withhold": "[0, 1]"})
def tp_schedule(batch: CreditBatch, withhold: float = 1.0, reward_on: str = "suffix") -> CreditBatch:
    """TP-Schedule (arXiv 2605.25381): train only the tail ``1 − withhold`` of each response.

    ``withhold`` is ``ρ`` when driven (``drive: {knob: withhold, neutral: 0.0}``), fixed per rollout.
    ``reward_on`` is read by the trainer at rollout time: ``suffix`` (default) scores only the trained
    tail — the released code moves the prefix into the prompt and its reward manager decodes only the
    response (``agent_loop.py:667-687``, ``reward_manager/naive.py:37-56``); ``full`` scores the whole
    completion (the paper's prose). Evaluation never cuts (``agent_loop.py:654``).
    """
    if reward_on not in ("full", "suffix"):
        raise ConfigError(f"tp_schedule.reward_on must be 'full' or 'suffix', got {reward_on!r}")
    lengths = batch.features["length"] if "length" in batch.features else batch.lengths
    return batch.replace(mask=batch.mask * tp_suffix_mask(lengths, batch.mask.shape[1], withhold))


@register_credit("forking_tokens", needs_entropies=True, ranges={"keep_fraction": "[0, 1]"})
def forking_tokens(
    batch: CreditBatch,
    keep_fraction: float = 0.2,
    selection: str = "batch_topk",
    normalize: str = "selected",
) -> CreditBatch:
    """High-entropy minority tokens (Wang et al., arXiv 2506.01939): gradient only on forking tokens.

    ``normalize: selected`` divides the loss by the number of selected tokens (official code);
    ``normalize: all_tokens`` keeps TRL's normaliser and equals TRL's ``top_entropy_quantile`` with
    ``selection: batch_quantile``.
    """
    if normalize not in ("selected", "all_tokens"):
        raise ConfigError(f"forking_tokens.normalize must be 'selected' or 'all_tokens', got {normalize!r}")
    sel = top_entropy_mask(batch.entropies, batch.mask, keep_fraction, selection)
    w = sel if batch.token_weights is None else batch.token_weights * sel
    return batch.replace(token_weights=w, renormalize=batch.renormalize or normalize == "selected")


@register_credit(
    "entropy_adv",
    needs_entropies=True,
    ranges={"alpha": "[0, inf)", "kappa": "(0, inf)", "strength": "[0, inf)"},
)
def entropy_adv(
    batch: CreditBatch, alpha: float = 0.4, kappa: float = 2.0, strength: float = 1.0
) -> CreditBatch:
    """Entropy-shaped advantages (Cheng et al.): ``A + s·min(α·H, |A|/κ)``, α = 0.4, κ = 2."""
    if kappa <= 0:
        raise ConfigError(f"entropy_adv.kappa must be > 0, got {kappa}")
    adv = entropy_shaped_advantages(batch.advantages, batch.entropies, batch.mask, alpha, kappa, strength)
    return batch.replace(advantages=adv)


def _scale_rows(adv: Tensor, scale: Tensor) -> Tensor:
    return adv * (scale if adv.dim() == 1 else scale.unsqueeze(1))


@register_credit("focal_grpo", features=("group_success",), ranges={"gamma": "[0, inf)"})
def focal_grpo(batch: CreditBatch, gamma: float = 2.0) -> CreditBatch:
    """Focal GRPO (arXiv 2602.06717): scale a group's advantages by ``(1 − p̂)^γ``.

    Not the seed page's "F-GRPO", which is *Factorized* Group-Relative Policy Optimization (arXiv
    2605.12995: candidate generation + ranking), a different method not implemented yet.
    ``p̂`` is the group's success rate, so easy groups are down-weighted. The focal form is this
    project's reading of the abstract ([INF] in the spec); ``γ = 0`` is GRPO.
    """
    p = batch.features["group_success"].float()
    return batch.replace(advantages=_scale_rows(batch.advantages, (1.0 - p).clamp(min=0) ** gamma))


@register_credit("adora", features=("adora_tas",), ranges={"lam": "[0, 1]"})
def adora(batch: CreditBatch, lam: float = 0.1) -> CreditBatch:
    """ADORA (arXiv 2602.10019, length criterion of the released code): ``A·λ`` for disadvantageous groups
    (including groups with no correct answer, as in the code; :func:`adora_advantageous`)."""
    tas = batch.features["adora_tas"].bool()
    scale = torch.where(
        tas, torch.ones_like(tas, dtype=torch.float32), torch.full_like(tas, lam, dtype=torch.float32)
    )
    return batch.replace(advantages=_scale_rows(batch.advantages, scale))


@register_credit(
    "r3l_amplify",
    features=("reward", "group_mean"),
    ranges={"alpha": "[0, inf)", "full_reward": "(-inf, inf)"},
)
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
