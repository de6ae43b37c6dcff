"""CAPO — generative credit assignment (arXiv 2508.02298; no released code, spec methods-steps.md §2).

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

from collections.abc import Sequence

import torch
from torch import Tensor

from crs.errors import ConfigError
from crs.steps.segment import Steps

VOTES = ("majority", "intersection", "union", "average")


def vote(critiques: Sequence[Sequence[set[int]]], K: int, rule: str = "majority") -> Tensor:
    """Aggregate per-completion critiques into a ``[B,K]`` flag matrix.

    Args:
        critiques: for each completion, ``k`` sets of 0-based wrong-step indices.
        K: number of step columns.
        rule: ``majority`` (count > k/2), ``intersection``, ``union``, ``average`` (fraction).
    Returns:
        ``[B,K]`` float: 1/0 flags, or fractions for ``average``.
    """
    if rule not in VOTES:
        raise ConfigError(f"capo vote must be one of {', '.join(VOTES)}, got {rule!r}")
    out = torch.zeros(len(critiques), K)
    for b, sets in enumerate(critiques):
        k = len(sets)
        if k == 0:
            continue
        counts = torch.zeros(K)
        for s in sets:
            for j in s:
                if 0 <= j < K:
                    counts[j] += 1
        if rule == "majority":
            out[b] = (counts > k / 2).float()
        elif rule == "intersection":
            out[b] = (counts == k).float()
        elif rule == "union":
            out[b] = (counts > 0).float()
        else:
            out[b] = counts / k
    return out


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
