"""Step-level credit methods as registered credit steps: ``pure``, ``capo``, ``oprl``.

Each method has two halves:

- a **producer** (:data:`PRODUCERS`), run by :class:`crs.steps.hook.StepHook` once per rollout at
  generation time on the whole rollout batch (groups contiguous): it turns step scores into per-token
  tensors ``[B,T]`` that travel in the batch as ``crs_<name>`` (group baselines need the whole group,
  which TRL's shuffled loss micro-batches no longer have);
- a **credit step** (:func:`crs.credit.register_credit`), run in the loss, that reads those tensors and
  mixes them into the advantages with a schedulable knob (``mix`` / ``w``: ρ = 0 gives GRPO back).

Outside training (evaluation loss) no step tensors exist and the steps leave GRPO's advantages as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from crs.credit import CreditBatch, register_credit
from crs.errors import ConfigError
from crs.steps.capo import VOTES, capo_advantages, capo_token_rewards
from crs.steps.oprl import batch_max_norm, step_advantages
from crs.steps.pure import pure_advantages
from crs.steps.scorers import RolloutView

# name -> producer(view, scores [B,K], scorer_kind, args, outcome_advantages [B]) -> {feature: [B,T]}
PRODUCERS: dict[str, Callable[..., dict[str, Tensor]]] = {}


def producer(name: str):
    def deco(fn):
        PRODUCERS[name] = fn
        return fn

    return deco


def _as_signed(scores: Tensor, kind: str) -> Tensor:
    """Scores as PURE's ``p ∈ [−1, 1]``: ``2s − 1`` for probabilities (= P(correct) − P(wrong)), raw for rewards."""
    return 2.0 * scores - 1.0 if kind == "prob" else scores


def _mix(batch: CreditBatch, name: str, mix: float) -> CreditBatch:
    tok = batch.features.get(name)
    if tok is None or tok.dim() != 2:
        return batch  # no step tensors (evaluation loss): GRPO's advantages
    adv = (1.0 - mix) * batch.token_advantages() + mix * tok.to(batch.mask.dtype) * batch.mask
    return batch.replace(advantages=adv)


# ------------------------------------------------------------------------------------------------- PURE


@producer("pure")
def _produce_pure(view: RolloutView, scores: Tensor, kind: str, args: Mapping[str, Any], outcome: Tensor):
    A = pure_advantages(
        _as_signed(scores, kind) * view.steps.valid,
        view.steps,
        view.completion_mask.float().cpu(),
        view.success.cpu(),
        view.group_size,
        form=args["form"],
        temperature=args["temperature"],
        baseline=args["baseline"],
        vr_coef=args["vr_coef"],
        mask_separator=args["mask_separator"],
        whiten=args["whiten"],
    )
    return {"pure_adv": A}


@register_credit(
    "pure",
    token_features=("pure_adv",),
    ranges={"temperature": "(0, inf)", "vr_coef": "[0, inf)", "mix": "[0, 1]"},
)
def pure(
    batch: CreditBatch,
    form: str = "softmin",
    temperature: float = 0.1,
    baseline: str = "token",
    vr_coef: float = 1.0,
    mask_separator: bool = True,
    whiten: bool = True,
    mix: float = 1.0,
) -> CreditBatch:
    """PURE (arXiv 2504.15275): min-form (softmin, T = 0.1) process-reward returns with the token baseline.

    ``A = (1 − mix)·A_GRPO + mix·A_PURE``; the schedule drives ``mix`` (ρ = 0: GRPO). ``form``: softmin |
    sum (ablation) | strict (verl's reverse cumulative min). ``vr_coef`` mixes the verifiable reward in
    (PURE-PRM+VR; 0 = PRM only). See :mod:`crs.steps.pure`.
    """
    if form not in ("softmin", "sum", "strict"):
        raise ConfigError(f"pure.form must be softmin, sum or strict, got {form!r}")
    if baseline not in ("token", "none"):
        raise ConfigError(f"pure.baseline must be token or none, got {baseline!r}")
    if temperature <= 0:
        raise ConfigError(f"pure.temperature must be > 0, got {temperature}")
    return _mix(batch, "pure_adv", mix)


# ------------------------------------------------------------------------------------------------- CAPO


@producer("capo")
def _produce_capo(view: RolloutView, scores: Tensor, kind: str, args: Mapping[str, Any], outcome: Tensor):
    # flags: 1 − score for judge/rule (the vote's result) and PRM probabilities; negative implicit rewards
    flagged = (1.0 - scores) if kind == "prob" else (scores < 0).float()
    flagged = flagged * view.steps.valid
    mask = view.completion_mask.float().cpu()
    R = capo_token_rewards(view.success.cpu(), flagged, view.steps, mask, args["w_whole"], args["w_process"])
    return {"capo_adv": capo_advantages(R, mask, view.group_size, args["norm"])}


@register_credit(
    "capo",
    token_features=("capo_adv",),
    ranges={"w_whole": "[0, inf)", "w_process": "[0, inf)", "mix": "[0, 1]"},
)
def capo(
    batch: CreditBatch,
    w_whole: float = 2.0,
    w_process: float = 1.0,
    norm: str = "loo_token_mean",
    mix: float = 1.0,
) -> CreditBatch:
    """CAPO (arXiv 2508.02298): ``R = r·W_whole − 1[step flagged]·W_process`` per token, group-normalised.

    W's, vote and normaliser are [3P]/[UNVERIFIED] (no released code): W_whole = 2, W_process = 1 from a
    paper note. ``A = (1 − mix)·A_GRPO + mix·A_CAPO``. See :mod:`crs.steps.capo`.
    """
    if norm not in ("loo_token_mean", "group_token_mean", "group_token_meanstd"):
        raise ConfigError(
            f"capo.norm must be loo_token_mean, group_token_mean or group_token_meanstd, got {norm!r}"
        )
    if w_process < 0:
        raise ConfigError(f"capo.w_process must be >= 0, got {w_process}")
    return _mix(batch, "capo_adv", mix)


# ------------------------------------------------------------------------------------------------- OPRL


@producer("oprl")
def _produce_oprl(view: RolloutView, scores: Tensor, kind: str, args: Mapping[str, Any], outcome: Tensor):
    valid = view.steps.valid.float()
    r = scores * valid
    if args["norm"] == "batch_max":
        r = batch_max_norm(r, valid)
    AS = step_advantages(r, view.steps.valid, view.group_size)
    return {"oprl_step_adv": view.steps.broadcast(AS) * view.completion_mask.float().cpu()}


@register_credit("oprl", token_features=("oprl_step_adv",), ranges={"w": "[0, inf)"})
def oprl(batch: CreditBatch, w: float = 1.0, norm: str = "batch_max") -> CreditBatch:
    """OPRL/iStar (arXiv 2509.19199): ``A = A^E + w·A^S`` — the outcome (GRPO) advantage plus the
    standardised implicit-PRM step advantage on every token of the step. The schedule drives ``w``."""
    if norm not in ("batch_max", "none"):
        raise ConfigError(f"oprl.norm must be batch_max or none, got {norm!r}")
    tok = batch.features.get("oprl_step_adv")
    if tok is None or tok.dim() != 2:
        return batch
    return batch.replace(advantages=batch.token_advantages() + w * tok.to(batch.mask.dtype) * batch.mask)


__all__ = ["PRODUCERS", "VOTES", "capo", "oprl", "pure"]
