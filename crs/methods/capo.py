"""CAPO — generative credit assignment (arXiv 2508.02298; no released code, spec docs/methods/steps.md §2).

An LLM judge ("GenPRM") critiques the whole response once per call and lists the wrong steps
(``Wrong step list:[1,3]`` in the authors' figure); ``k`` critiques are voted per step, and the tokens of
the steps the vote flags get a penalty on top of the rule-based outcome reward::

    R_{i,t} = r_i·W_whole − 1[t ∈ T_err(i)]·W_process          r_i ∈ {0, 1}

then normalised per token inside the group. Every number here is [3P] or [UNVERIFIED] (no code, no
judge prompt): defaults W_whole = 2, W_process = 1, k = 4 come from a third-party paper note; the
normaliser ("subtract the mean of R across all tokens in all other rollouts", an OpenReview reviewer's
paraphrase of Eq. 2) is crs's reading — ``norm: loo_token_mean`` (default), ``group_token_mean`` or
``group_token_meanstd``. The vote rules: ``majority`` (flagged by *more than* k/2 critiques: the authors'
figure votes ``[1,3] [1,2,3] [1,3] [2,3]`` into ``[1,3]``, which a third-party note's "≥ k/2" would
not give), ``intersection``
(all), ``union`` (any) and ``average`` (penalty × fraction of critiques that flag the step — the paper
names it without a definition; this is crs's reading).

Example::

    crs train method=capo                                   # the built judge, 4 critiques, majority vote
    crs train method=capo method.steps.judge.vote=intersection
"""

from __future__ import annotations

from torch import Tensor

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError
from crs.steps.mixing import mix_token_advantages
from crs.steps.scorers import RolloutView
from crs.steps.segment import Steps


def capo_token_rewards(
    outcome: Tensor, flagged: Tensor, steps: Steps, mask: Tensor, w_whole: float = 2.0, w_process: float = 1.0
) -> Tensor:
    """``R_{i,t} = r_i·W_whole − flag(step(t))·W_process`` on valid tokens (``[B,T]``).

    A flagged step's penalty covers all of its tokens, its end token (separator / EOS) included.
    """
    mask = mask.float()
    pen = steps.broadcast(flagged.float())
    return (outcome.float().unsqueeze(1) * w_whole - pen * w_process) * mask


def capo_advantages(
    R: Tensor, mask: Tensor, group_size: int, norm: str = "loo_token_mean", eps: float = 1e-4
) -> Tensor:
    """Group-normalise token rewards (``[B,T]``, groups of ``group_size`` contiguous rows).

    ``loo_token_mean``: ``R_{i,t} − mean of R over all valid tokens of the group's *other* rollouts``;
    ``group_token_mean``: minus the mean over all valid tokens of the group;
    ``group_token_meanstd``: that, divided by the group's token std (+eps).
    """
    if norm not in ("loo_token_mean", "group_token_mean", "group_token_meanstd"):
        raise ConfigError(
            f"capo.norm must be loo_token_mean, group_token_mean or group_token_meanstd, got {norm!r}"
        )
    mask = mask.float()
    B, T = R.shape
    s = (R * mask).sum(-1).view(-1, group_size)
    n = mask.sum(-1).view(-1, group_size)
    if norm == "loo_token_mean":
        base = (s.sum(1, keepdim=True) - s) / (n.sum(1, keepdim=True) - n).clamp(min=1.0)
        return (R - base.reshape(B, 1)) * mask
    mean = s.sum(1, keepdim=True) / n.sum(1, keepdim=True).clamp(min=1.0)
    A = (R - mean.expand(-1, group_size).reshape(B, 1)) * mask
    if norm == "group_token_meanstd":
        sq = (A**2).sum(-1).view(-1, group_size).sum(1, keepdim=True) / n.sum(1, keepdim=True).clamp(min=1.0)
        A = A / (sq.sqrt().expand(-1, group_size).reshape(B, 1) + eps)
    return A * mask


def produce(view: RolloutView, scores: Tensor, kind: str, args, outcome: Tensor) -> dict[str, Tensor]:
    """Rollout time: flagged steps → CAPO's token rewards → group-normalised ``[B,T]`` advantages."""
    # flags: 1 − score for judge/rule (the vote's result) and PRM probabilities; negative implicit rewards
    flagged = (1.0 - scores) if kind == "prob" else (scores < 0).float()
    flagged = flagged * view.steps.valid
    mask = view.completion_mask.float().cpu()
    R = capo_token_rewards(view.success.cpu(), flagged, view.steps, mask, args["w_whole"], args["w_process"])
    return {"capo_adv": capo_advantages(R, mask, view.group_size, args["norm"])}


def capo(
    batch: CreditBatch,
    w_whole: float = 2.0,
    w_process: float = 1.0,
    norm: str = "loo_token_mean",
    mix: float = 1.0,
) -> CreditBatch:
    """CAPO (arXiv 2508.02298): ``R = r·W_whole − 1[step flagged]·W_process`` per token, group-normalised.

    W's, vote and normaliser are [3P]/[UNVERIFIED] (no released code): W_whole = 2, W_process = 1 from a
    paper note. ``A = (1 − mix)·A_GRPO + mix·A_CAPO``.
    """
    if norm not in ("loo_token_mean", "group_token_mean", "group_token_meanstd"):
        raise ConfigError(
            f"capo.norm must be loo_token_mean, group_token_mean or group_token_meanstd, got {norm!r}"
        )
    if w_process < 0:
        raise ConfigError(f"capo.w_process must be >= 0, got {w_process}")
    return mix_token_advantages(batch, "capo_adv", mix)


METHOD = Method(
    "capo",
    capo,
    help={
        "w_whole": "Weight of the outcome reward on every token (paper note: 2).",
        "w_process": "Penalty on the tokens of a step the judge's vote flags (paper note: 1).",
        "norm": "loo_token_mean (crs's reading of Eq. 2), group_token_mean, group_token_meanstd.",
        "mix": "A = (1 − mix)·A_GRPO + mix·A_CAPO: the schedule's knob (0 = GRPO).",
    },
    ranges={"w_whole": "[0, inf)", "w_process": "[0, inf)", "mix": "[0, 1]"},
    substrate="steps",
    benchmarks=("single_turn",),
    token_features=("capo_adv",),
    produce=produce,
)
