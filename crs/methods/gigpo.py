"""GiGPO — Group-in-Group Policy Optimization (Feng et al., arXiv 2505.10978; ``langfengQ/verl-agent``).

Two critic-free levels of group-relative advantage for multi-turn agents:

- **episode level**: the episode return ``R_i`` against the group of rollouts of the same task
  (``A^E``);
- **step level**: every turn whose *anchor state* (the observation it acted on) also occurs in other
  rollouts of the task forms an anchor group; the discounted return from that turn
  ``G_{i,t} = r_{i,t} + γ·G_{i,t+1}`` is compared within the group (``A^S``);

``A_{i,t} = A^E + ω·A^S``, broadcast to the tokens of turn t (tool tokens get nothing). Defaults as in
verl-agent's scripts: ω = 1, γ = 0.95, ``mode = mean_norm`` (config default; ALFWorld uses
``mean_std_norm``), invalid-action penalty 0.1 subtracted from the step return *after* discounting
and from that step's episode score.

Port of ``gigpo/core_gigpo.py`` (verl-agent HEAD, read via a public copy; docs/methods/turns.md §1):
``compute_step_discounted_returns``, ``episode_norm_reward`` (statistics over all step rows of the
group, ``compute_mean_std_cross_steps=True``; singleton group ⇒ μ = 0, σ = 1), ``build_step_group``
(exact equality of the anchor within the task group), ``step_norm_reward`` (singleton anchor ⇒ 0).
Deviations: (1) verl-agent trains each env step as its own sequence with a 2-step history; TRL keeps
the whole episode in one sequence and the advantage is broadcast per turn span. (2) The final
text-only turn (no env step) is a unit with r = 0 and the last observation as anchor. (3) Similarity
grouping (``enable_similarity``) is not ported (exact match only, the default).

    crs train benchmark=maze method=gigpo
"""

from __future__ import annotations

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

MODES = ("mean_norm", "mean_std_norm")


def gigpo_advantages(
    turns: TurnBatch,
    omega: float = 1.0,
    gamma: float = 0.95,
    mode: str = "mean_norm",
    episode_stats: str = "steps",
    invalid_penalty: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    """GiGPO's two-level advantage on turns.

    Args:
        turns: the batch's turn view (``turn_mask``, ``reward``, ``valid``, ``anchor``, ``outcome``, ``group``).
        omega: weight ω of the step level.
        gamma: discount γ of the step returns.
        mode: ``mean_norm`` or ``mean_std_norm`` (both levels).
        episode_stats: ``steps`` — group mean/std over all (episode, turn) units, so long episodes weigh
            more (verl-agent default); ``trajectories`` — one score per episode (textbook GRPO).
        invalid_penalty: subtracted from the return of an invalid step and from its episode score.
    Returns:
        ``(A [N,K], A^E [N,K], A^S [N,K])``, 0 where there is no turn.
    """
    if mode not in MODES:
        raise ValueError(f"gigpo.mode must be one of {MODES}, got {mode!r}")
    if episode_stats not in ("steps", "trajectories"):
        raise ValueError(f"gigpo.episode_stats must be steps or trajectories, got {episode_stats!r}")
    m = turns.turn_mask
    invalid = (1.0 - turns.valid) * m
    G = discounted_returns(turns.reward, m, gamma) - invalid_penalty * invalid
    group = turns.group.unsqueeze(1).expand_as(m)
    if episode_stats == "steps":
        score = (turns.outcome.unsqueeze(1) - invalid_penalty * invalid) * m
        A_E = grouped_norm(score, group, m, mode, singleton="raw")
    else:
        has = m.sum(1) > 0
        A_ep = grouped_norm(turns.outcome, turns.group, has.float(), mode, singleton="raw")
        A_E = A_ep.unsqueeze(1) * m
    A_S = grouped_norm(G, _anchor_key(turns), m, mode, singleton="zero")
    return (A_E + omega * A_S) * m, A_E, A_S


def _anchor_key(turns: TurnBatch) -> Tensor:
    """``[N,K]`` anchor-group id: units with the same anchor state within the same task group (ids of
    different tasks never collide: ``group · n_anchor + anchor``; a batch without turns has one group)."""
    n_anchor = int(turns.anchor.max().item()) + 1 if turns.anchor.numel() else 1
    group = turns.group.unsqueeze(1).expand_as(turns.turn_mask)
    return group * max(n_anchor, 1) + turns.anchor.clamp(min=0)


def _gigpo_turns(turns: TurnBatch, group_size: int, **args) -> TurnCredit:
    A, A_E, A_S = gigpo_advantages(turns, **args)
    m = turns.turn_mask
    # anchor-group sizes: how often a unit shares its state with another rollout of the task
    keys = _anchor_key(turns)[m > 0]
    _, counts = torch.unique(keys, return_counts=True)
    shared = float((counts[counts > 1]).sum()) / max(1, keys.numel())
    return TurnCredit(
        A,
        metrics={
            "shared_anchor_frac": shared,
            "step_adv_abs": float(A_S[m > 0].abs().mean()) if m.sum() else 0.0,
            "episode_adv_abs": float(A_E[m > 0].abs().mean()) if m.sum() else 0.0,
        },
    )


def gigpo(
    batch,
    omega: float = 1.0,
    gamma: float = 0.95,
    mode: str = "mean_norm",
    episode_stats: str = "steps",
    invalid_penalty: float = 0.1,
):
    """GiGPO (arXiv 2505.10978): ``A^E + ω·A^S`` per turn, computed at rollout time (:func:`gigpo_advantages`)."""
    if mode not in MODES or episode_stats not in ("steps", "trajectories"):
        from crs.errors import ConfigError

        raise ConfigError(f"gigpo: mode must be one of {MODES} and episode_stats steps|trajectories")
    return turn_advantages(batch)


METHOD = Method(
    "gigpo",
    gigpo,
    help={
        "omega": "Weight ω of the step (anchor-state) level: A = A^E + ω·A^S (authors: 1); 0 = episode level only.",
        "gamma": "Discount γ of the step returns inside an episode (authors: 0.95).",
        "mode": "mean_norm (x − μ, the authors' default) or mean_std_norm ((x − μ)/σ) at both levels.",
        "episode_stats": "steps: episode statistics over all turns of the group (verl-agent); trajectories: one per episode.",
        "invalid_penalty": "Reward subtracted for an illegal action, after discounting (verl-agent: 0.1).",
    },
    ranges={"omega": "[0, inf)", "gamma": "[0, 1]", "invalid_penalty": "[0, inf)"},
    substrate="turns",
    benchmarks=("multi_turn",),
    turn_credit=_gigpo_turns,
)
