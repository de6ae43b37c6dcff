"""Credit-assignment methods as pure tensor functions, composed into a chain, driven by a schedule.

A *credit method* decides which tokens, sequences or groups get the learning signal and how much.
Each method here is a pure function over a :class:`CreditBatch` (tensors in, tensors out, no trainer
inside), registered by name with :func:`register_credit` — the verl ``core_algos`` pattern. A method
config (``conf/method/*.yaml``) is an ordered mapping ``credit: {step_name: {args..., drive: ...}}``
that the trainer applies in order, so methods compose where the papers compose them
(TP-Schedule on GSPO, a scheduled forking-token mask on DAPO, ...).

Two phases, because they act on different parts of TRL's loss:

``mask`` phase (before the policy forward pass)
    Steps that decide which tokens are *in the objective* at all (TP-Schedule's trained suffix).
    The result goes into TRL's loss-only ``tool_mask``: excluded tokens stay in the context
    (``completion_mask`` is never touched, TRL also uses it as the attention mask) but get no policy
    gradient, no KL term and do not count in the loss normaliser or GSPO's sequence ratio — exactly
    as if the prefix had been moved into the prompt, which is what the authors' verl code does.

``advantage`` phase (inside the loss, once the policy's entropies exist)
    Steps that reshape advantages — per sequence ``[B]`` or per token ``[B,T]`` — or put per-token
    policy-gradient weights on them (forking tokens). Weights ``w ≥ 0`` are folded into the advantage
    (``−min(r·wA, clip(r)·wA) = w·ℓ``), optionally renormalised so the loss is a mean over the
    *selected* tokens as the 80/20 authors' code does (:func:`fold_token_weights`).

A schedule value ``ρ`` drives one numeric argument of a step through its ``drive`` entry::

    credit:
      forking_tokens:
        keep_fraction: 0.0                            # full-strength value ("on")
        drive: {knob: keep_fraction, neutral: 1.0}    # keep_fraction = neutral + (value − neutral)·ρ = 1 − ρ

so ``ρ = 1`` is the configured full-strength criterion and ``ρ = 0`` the neutral value, where the
step reduces to plain GRPO.

Adding a method = one function in ``methods.py`` (its math in ``primitives.py``) + one yaml in ``conf/method/`` + one golden test::

    crs train method=forking_tokens schedule=linear
"""

from __future__ import annotations

from crs.credit.chain import CreditChain
from crs.credit.features import FEATURES, register_feature, rollout_features
from crs.credit.methods import (
    adora,
    entropy_adv,
    focal_grpo,
    forking_tokens,
    r3l_amplify,
    tp_schedule,
)
from crs.credit.primitives import (
    adora_advantageous,
    entropy_shaped_advantages,
    fold_token_weights,
    group_stats,
    top_entropy_mask,
    tp_prefix_cut,
    tp_suffix_mask,
)
from crs.credit.registry import CREDIT, CreditBatch, CreditStep, register_credit

__all__ = [
    "CREDIT",
    "FEATURES",
    "CreditBatch",
    "CreditChain",
    "CreditStep",
    "adora",
    "adora_advantageous",
    "entropy_adv",
    "entropy_shaped_advantages",
    "focal_grpo",
    "fold_token_weights",
    "forking_tokens",
    "group_stats",
    "r3l_amplify",
    "register_credit",
    "register_feature",
    "rollout_features",
    "top_entropy_mask",
    "tp_prefix_cut",
    "tp_schedule",
    "tp_suffix_mask",
]

# turn-level methods for multi-turn environments register their steps from their own package
# step-level methods (PURE, CAPO, OPRL) live in their own package and register themselves on import
import crs.steps.intervention  # noqa: E402,F401  (InT)
import crs.steps.methods  # noqa: E402,F401  (PURE, CAPO, OPRL)
from crs.envs import methods as _turn_methods  # noqa: E402, F401
