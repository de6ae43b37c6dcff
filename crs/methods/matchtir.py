"""MatchTIR — turn rewards from bipartite matching of predicted and gold tool calls (arXiv 2601.10712).

For tool-integrated reasoning with a gold call trace, MatchTIR scores each predicted call by its best
*one-to-one* match to a gold call and turns the scores into turn rewards, then adds a turn-level
advantage to the trajectory-level one. Port of the official code (``quchangle1/MatchTIR@f614ce1``,
``verl/utils/reward_score/tool.py`` and ``core_algos.py``; docs/methods/turns.md §3):

- similarity ``S(p,g) = 1[name_p = name_g]·(1 + J(K_g,K_p) + Σ_{k∈K_g} 1[p.args[k] = g.args[k]])/(2 + |K_g|)``,
  ``J`` = 1 if the parameter-name lists are equal, 0 if either is empty, else multiset Jaccard;
- assignment over the whole trajectory's calls (in order) vs the gold calls (order irrelevant):
  ``hard`` = one-to-one (``assignment: hungarian`` — scipy ``linear_sum_assignment``, the paper's
  "KM"; ``greedy`` — the released code's greedy max-score matching), a call's reward is its matched
  ``S`` (pairs with ``S = 0`` and unmatched calls get ``unmatched_penalty``, 0 in the released run);
  ``soft`` = Sinkhorn transport (POT ``ot.sinkhorn``, ``reg`` 0.1), reward ``Σ_j T_ij S_ij``. A gold
  call is matched at most once, so a duplicated call earns nothing the second time;
- turn reward = mean reward of the turn's calls; the final answer turn gets the outcome (exact match
  here; F1 of token sets in the authors' QA data); other turns without calls 0;
- ``A^traj = (R − μ)/(σ + 1e-6)`` over the prompt group with ``R = Σ`` turn rewards;
  ``G_j = r_j + λ·G_{j+1}`` (λ = 0.9, hard-coded in the code); ``A^turn`` = ``G`` normalised within
  (prompt, turn index) groups (singleton ⇒ raw ``G``); ``A = (A^traj + A^turn)/2`` per turn.

Deviation: ``assignment`` defaults to ``hungarian`` (paper and this project's issue); ``greedy``
reproduces the released code. Turns are the assistant messages of TRL's loop (the authors split the
decoded text on the assistant header — the same boundaries).

    crs train benchmark=calc_tool method=matchtir
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crs.credit.method import Method
from crs.envs.turns import (
    TurnBatch,
    TurnCredit,
    discounted_returns,
    grouped_norm,
    turn_advantages,
)

Call = tuple[str, dict[str, Any]]


def _name_score(kg: list[str], kp: list[str]) -> float:
    if kg == kp:
        return 1.0
    if not kg or not kp:
        return 0.0
    inter = sum((Counter(kg) & Counter(kp)).values())
    return inter / (len(kg) + len(kp) - inter)


def call_similarity(pred: Call, gold: dict[str, Any]) -> float:
    """MatchTIR's ``S(p, g) ∈ [0, 1]`` (``tool.py`` l.198-212, 320-332)."""
    name_p, args_p = pred
    name_g, args_g = gold["name"], dict(gold.get("arguments", gold.get("parameters", {})))
    if str(name_p).lower() != str(name_g).lower():
        return 0.0
    kg, kp = list(args_g), list(args_p)
    values = sum(1 for k in kg if k in args_p and args_p[k] == args_g[k])
    return (1.0 + _name_score(kg, kp) + values) / (2.0 + len(kg))


def similarity_matrix(pred: list[Call], gold: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[call_similarity(p, g) for g in gold] for p in pred], dtype=np.float64).reshape(
        len(pred), len(gold)
    )


def match_rewards(
    pred: list[Call],
    gold: list[dict[str, Any]],
    kind: str = "hard",
    assignment: str = "hungarian",
    unmatched_penalty: float = 0.0,
    reg: float = 0.1,
) -> list[float]:
    """Reward of each predicted call (in order) from its match to the gold calls.

    Args:
        pred: predicted calls ``(name, args)`` of the whole trajectory, in order.
        gold: gold calls ``{"name", "arguments"}``.
        kind: ``hard`` (one-to-one) or ``soft`` (Sinkhorn transport).
        assignment: hard only — ``hungarian`` (scipy ``linear_sum_assignment``, maximal total S) or
            ``greedy`` (the released code: pairs by S descending, ties to the lower indices).
        unmatched_penalty: reward of an unmatched predicted call (hard).
        reg: Sinkhorn entropic regularisation (soft).
    """
    P, G = len(pred), len(gold)
    if P == 0:
        return []
    S = similarity_matrix(pred, gold)
    if kind == "soft":
        if G == 0:
            return [0.0] * P
        import ot

        T = ot.sinkhorn(np.full(P, 1.0 / P), np.full(G, 1.0 / G), -S, reg)
        return [float(x) for x in (T * S).sum(1)]
    if kind != "hard":
        raise ValueError(f"matchtir.kind must be hard or soft, got {kind!r}")
    return assign(S, assignment, unmatched_penalty)


def assign(S: np.ndarray, assignment: str = "hungarian", unmatched_penalty: float = 0.0) -> list[float]:
    """Hard one-to-one assignment on a ``[P,G]`` similarity matrix; the reward of each row (predicted call)."""
    P, G = S.shape
    out = [float(unmatched_penalty)] * P
    if G == 0 or P == 0:
        return out
    if assignment == "hungarian":
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(S, maximize=True)
        for i, j in zip(rows, cols):
            if S[i, j] > 0:
                out[i] = float(S[i, j])
        return out
    if assignment != "greedy":
        raise ValueError(f"matchtir.assignment must be hungarian or greedy, got {assignment!r}")
    pairs = sorted(((S[i, j], i, j) for i in range(P) for j in range(G)), key=lambda x: (-x[0], x[1], x[2]))
    used_i, used_j = set(), set()
    for s, i, j in pairs:
        if s > 0 and i not in used_i and j not in used_j:
            out[i] = float(s)
            used_i.add(i)
            used_j.add(j)
    return out


def turn_rewards(
    turns: TurnBatch,
    kind: str = "hard",
    assignment: str = "hungarian",
    unmatched_penalty: float = 0.0,
    reg: float = 0.1,
) -> Tensor:
    """``[N,K]`` MatchTIR turn rewards: mean matched score of a turn's calls; the final turn without
    calls gets the outcome (1/0)."""
    N, K = turns.turn_mask.shape
    r = torch.zeros(N, K)
    for i in range(N):
        calls = turns.calls[i] if i < len(turns.calls) else []
        flat = [c for turn in calls for c in turn]
        scores = match_rewards(flat, turns.gold_calls[i], kind, assignment, unmatched_penalty, reg)
        pos = 0
        n = int(turns.turn_mask[i].sum())
        for k in range(n):
            cs = calls[k] if k < len(calls) else []
            if cs:
                r[i, k] = sum(scores[pos : pos + len(cs)]) / len(cs)
                pos += len(cs)
            elif k == n - 1:
                r[i, k] = float(turns.success[i])
    return r


def matchtir_advantages(
    turns: TurnBatch,
    kind: str = "hard",
    assignment: str = "hungarian",
    lam: float = 0.9,
    unmatched_penalty: float = 0.0,
    reg: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """``(A [N,K], turn rewards [N,K])``: ``(A^traj + A^turn)/2`` per turn (``core_algos.py`` l.111-243)."""
    m = turns.turn_mask
    r = turn_rewards(turns, kind, assignment, unmatched_penalty, reg) * m
    R = r.sum(1)
    has = (m.sum(1) > 0).float()
    A_traj = grouped_norm(R, turns.group, has, "mean_std_norm", singleton="raw")
    G = discounted_returns(r, m, lam)
    K = m.shape[1]
    key = turns.group.unsqueeze(1) * K + torch.arange(K).unsqueeze(0)
    A_turn = grouped_norm(G, key, m, "mean_std_norm", singleton="raw")
    return (A_traj.unsqueeze(1) + A_turn) / 2 * m, r


def _matchtir_turns(turns: TurnBatch, group_size: int, **args) -> TurnCredit:
    A, r = matchtir_advantages(turns, **args)
    m = turns.turn_mask
    call_turns = turns.has_call * m
    return TurnCredit(
        A,
        metrics={
            "call_reward": float((r * call_turns).sum() / call_turns.sum().clamp(min=1)),
            "traj_reward": float(r.sum(1).mean()),
        },
    )


def matchtir(
    batch,
    kind: str = "hard",
    assignment: str = "hungarian",
    lam: float = 0.9,
    unmatched_penalty: float = 0.0,
    reg: float = 0.1,
):
    """MatchTIR (arXiv 2601.10712): turn rewards from matching predicted to gold tool calls; dual-level advantage."""
    if kind not in ("hard", "soft") or assignment not in ("hungarian", "greedy") or reg <= 0:
        from crs.errors import ConfigError

        raise ConfigError("matchtir: kind must be hard|soft, assignment hungarian|greedy, reg > 0")
    return turn_advantages(batch)


METHOD = Method(
    "matchtir",
    matchtir,
    help={
        "kind": "hard: bipartite matching of predicted to gold tool calls (authors' default); soft: Sinkhorn.",
        "assignment": "hungarian (optimal, authors) or greedy matching of calls.",
        "lam": "Dual-level mix λ of the turn-level and trajectory-level advantages (authors: 0.9).",
        "unmatched_penalty": "Reward of a call matched to no gold call (authors: 0; ≤ 0).",
        "reg": "Entropic regulariser of the soft (Sinkhorn) matching.",
    },
    ranges={"lam": "[0, 1]", "unmatched_penalty": "[-1, 0]", "reg": "(0, inf)"},
    substrate="turns",
    benchmarks=("multi_turn",),
    turn_credit=_matchtir_turns,
)
