"""Orchestration-trace credit: per-event advantages and annealed orchestration rewards (arXiv 2605.02801).

The survey "RL for LLM-based Multi-Agent Systems through Orchestration Traces" proposes no algorithm; this is
the crs design of ``methods-wave3.md`` §4.4 [INF], composed from three pieces:

- **reward** (the survey's R1 + R7, in Kimi K2.5 PARL's form):
  ``r = r_perf + λ1(ρ)·r_parallel + λ2(ρ)·r_finish`` with ``r_perf`` the exact final answer,
  ``r_parallel = 1[at least one sub-agent spawned]`` (the report's "instantiation reward", against serial
  collapse; ``parallel: fraction`` = distinct sub-problems spawned / #sub-problems) and
  ``r_finish = collected / spawned`` (1 if none spawned; against spurious parallelism). Both λ's are scaled
  by one driven knob ``aux`` (neutral 0): ``λ1(ρ) = aux(ρ)·lam_parallel``, ``λ2(ρ) = aux(ρ)·lam_finish``, so a
  decaying crs schedule (default ``linear``) reproduces PARL's "annealed to zero" (golden O5);
- **credit level** (``level``): ``trajectory`` — GRPO on ``r`` over all orchestrator tokens (the survey's
  uniform-credit baseline; with ``aux = 0`` it equals ``method=grpo``, O10); ``event`` — every orchestrator
  turn is an event unit typed by the tools it called (``spawn``, ``collect``, ``collect+spawn``, ``solve``,
  ``answer``, ``text``, ...) and its episode's score is normalised within its (prompt, event type) group;
  ``event+perf`` — ``A = A^team + w_event·A^event`` (levels combined as GiGPO does);
- **normalisation** as Dr. MAS (``langfengQ/DrMAS@19c632b``, O1–O3): agent-wise groups = (prompt, agent),
  here agent := event type; every unit is one sample of its group; singleton group → μ = 0, σ = 1;
  unbiased ``torch.std``; ``(s − μ)/(σ + 1e-6)`` (``std: false`` → ``s − μ``). Trajectory-wise: the units of
  a trajectory are averaged first and statistics run over trajectories (:func:`drmas_normalize`).

Sub-agents are frozen rule solvers whose outputs are tool results (masked by TRL's ``tool_mask``): their
tokens never get gradient (the survey's regime A). Deviation: Dr. MAS / verl-agent train each agent step
as its own row; crs trains all orchestrator turns inside one TRL sequence and broadcasts each turn's
advantage to its tokens.

    crs train benchmark=orchestra method=orch_credit
    crs train benchmark=orchestra method=orch_credit method.credit.orch_credit.level=trajectory schedule=constant
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from crs.credit.method import Method
from crs.envs.turns import TurnBatch, TurnCredit, grouped_norm, turn_advantages
from crs.errors import ConfigError

LEVELS = ("trajectory", "event", "event+perf")
PARALLEL = ("any", "fraction")


def drmas_normalize(
    scores: Tensor,
    prompt: Tensor,
    agent: Tensor,
    traj: Tensor,
    by_agent: bool = True,
    std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """Dr. MAS advantages of ``M`` agent rows (``core_algos.py`` l.539–566 semantics).

    Args:
        scores: ``[M]`` row scores.
        prompt: ``[M]`` long prompt-group ids. agent: ``[M]`` long agent ids. traj: ``[M]`` long trajectory ids.
        by_agent: ``True`` — groups (prompt, agent), each row a sample; ``False`` — rows averaged per
            (prompt, trajectory), statistics over trajectories, the result written back to every row.
        std: divide by ``σ + eps`` (``norm_adv_by_std_in_grpo``); else ``s − μ``.
    Returns:
        ``[M]`` advantages; a singleton group keeps its score (μ = 0, σ = 1).
    """
    mode = "mean_std_norm" if std else "mean_norm"
    ones = torch.ones_like(scores, dtype=torch.bool)
    if by_agent:
        key = prompt.long() * (int(agent.max()) + 1 if agent.numel() else 1) + agent.long()
        return grouped_norm(scores.float(), key, ones, mode, eps=eps, singleton="raw", unbiased=True)
    tkey = prompt.long() * (int(traj.max()) + 1 if traj.numel() else 1) + traj.long()
    uniq, inv = torch.unique(tkey, return_inverse=True)
    mean = torch.zeros(len(uniq)).index_add_(0, inv, scores.float())
    mean = mean / torch.zeros(len(uniq)).index_add_(0, inv, torch.ones_like(scores, dtype=torch.float32))
    t_prompt = torch.zeros(len(uniq), dtype=torch.long).index_copy_(0, inv, prompt.long())
    adv = grouped_norm(
        mean, t_prompt, torch.ones(len(uniq), dtype=torch.bool), mode, eps=eps, singleton="raw"
    )
    return adv[inv]


def orch_reward(
    r_perf: Tensor,
    spawned: Tensor,
    spawned_tasks: Tensor,
    collected: Tensor,
    n_tasks: Tensor,
    lam_parallel: float,
    lam_finish: float,
    parallel: str = "any",
) -> tuple[Tensor, Tensor, Tensor]:
    """``(r, r_parallel, r_finish)``, all ``[N]``: ``r = r_perf + λ1·r_parallel + λ2·r_finish`` (golden O5)."""
    if parallel == "any":
        r_par = (spawned > 0).float()
    else:
        r_par = spawned_tasks.float() / n_tasks.float().clamp(min=1)
    r_fin = torch.where(
        spawned > 0, collected.float() / spawned.float().clamp(min=1), torch.ones_like(r_perf)
    )
    return r_perf.float() + lam_parallel * r_par + lam_finish * r_fin, r_par, r_fin


def event_types(calls: list[list[list[tuple[str, dict[str, Any]]]]], K: int) -> tuple[Tensor, list[str]]:
    """``[N,K]`` long event-type id of each turn (its tool names, sorted and joined; ``text`` without a call)."""
    names: dict[str, int] = {}
    out = torch.full((len(calls), K), -1, dtype=torch.long)
    for i, row in enumerate(calls):
        for k, turn in enumerate(row[:K]):
            label = "+".join(sorted({n for n, _ in turn})) or "text"
            out[i, k] = names.setdefault(label, len(names))
    return out, list(names)


def orch_advantages(
    reward: Tensor,
    group: Tensor,
    event: Tensor,
    turn_mask: Tensor,
    level: str = "event",
    w_event: float = 1.0,
    std: bool = True,
    eps: float = 1e-6,
) -> Tensor:
    """``[N,K]`` turn advantages from episode rewards ``[N]`` (module docstring; 0 where no turn).

    Args:
        reward: ``[N]`` shaped episode reward ``r``. group: ``[N]`` prompt-group id.
        event: ``[N,K]`` event-type id per turn. turn_mask: ``[N,K]`` 1 where the turn exists.
    """
    if level not in LEVELS:
        raise ValueError(f"orch_credit.level must be one of {LEVELS}, got {level!r}")
    N, K = turn_mask.shape
    rows = torch.arange(N)
    A_team = drmas_normalize(
        reward, group, torch.zeros(N, dtype=torch.long), rows, by_agent=False, std=std, eps=eps
    )
    A_team = A_team.unsqueeze(1) * turn_mask
    if level == "trajectory":
        return A_team
    m = turn_mask > 0
    scores = reward.float().unsqueeze(1).expand(N, K)[m]
    prompt = group.unsqueeze(1).expand(N, K)[m]
    A_ev = torch.zeros(N, K)
    A_ev[m] = drmas_normalize(
        scores, prompt, event.clamp(min=0)[m], rows.unsqueeze(1).expand(N, K)[m], std=std, eps=eps
    )
    return A_ev if level == "event" else A_team + w_event * A_ev


# ---------------------------------------------------------------------------------------------------
# rollout time: per-episode counts from the environments' logs, then the turn credit


def orch_stats(rows: list[Mapping[str, Any]]) -> dict[str, Tensor]:
    """``spawned``, ``spawned_tasks`` (distinct), ``collected`` (distinct agents), ``n_tasks`` per episode ``[N]``
    from the rows the turn hook gathered (their :class:`~crs.envs.base.StepRecord` logs and dataset row)."""
    import json

    out = {k: torch.zeros(len(rows)) for k in ("spawned", "spawned_tasks", "collected", "n_tasks")}
    for i, r in enumerate(rows):
        steps = [s for s in r["steps"] if s.valid]
        out["spawned"][i] = sum(s.name == "spawn" for s in steps)
        out["spawned_tasks"][i] = len({s.args.get("task") for s in steps if s.name == "spawn"})
        out["collected"][i] = len({s.info.get("agent") for s in steps if s.name == "collect"})
        tasks = (r.get("row") or {}).get("tasks")
        out["n_tasks"][i] = len(json.loads(tasks)) if isinstance(tasks, str) else 1
    return out


def _prepare(trainer, out, rows, tok_turn, offset, args, turns: TurnBatch) -> None:
    turns.orch = orch_stats(rows)


def _orch_turns(
    turns: TurnBatch,
    group_size: int,
    level: str = "event",
    aux: float = 1.0,
    lam_parallel: float = 0.2,
    lam_finish: float = 0.2,
    parallel: str = "any",
    w_event: float = 1.0,
    std: bool = True,
    eps: float = 1e-6,
) -> TurnCredit:
    st = getattr(turns, "orch", None)
    if st is None:
        raise ValueError(
            "orch_credit needs the episodes' spawn/collect counts (turns.orch from its turn_prepare)"
        )
    lam1, lam2 = aux * lam_parallel, aux * lam_finish
    r, r_par, r_fin = orch_reward(
        turns.outcome,
        st["spawned"],
        st["spawned_tasks"],
        st["collected"],
        st["n_tasks"],
        lam1,
        lam2,
        parallel,
    )
    ev, labels = event_types(turns.calls, turns.turn_mask.shape[1])
    A = orch_advantages(r, turns.group, ev, turns.turn_mask, level, w_event, std, eps)
    m = turns.turn_mask > 0
    key = turns.group.unsqueeze(1).expand_as(ev)[m] * (len(labels) + 1) + ev[m]
    _, counts = torch.unique(key, return_counts=True) if key.numel() else (None, torch.zeros(0))
    return TurnCredit(
        A,
        metrics={
            "reward": float(r.mean()),
            "r_parallel": float(r_par.mean()),
            "r_finish": float(r_fin.mean()),
            "lam_parallel": lam1,
            "lam_finish": lam2,
            "event_types": float(len(labels)),
            "singleton_frac": float((counts == 1).sum()) / max(1, len(counts)),
        },
    )


def orch_credit(
    batch,
    level: str = "event",
    aux: float = 1.0,
    lam_parallel: float = 0.2,
    lam_finish: float = 0.2,
    parallel: str = "any",
    w_event: float = 1.0,
    std: bool = True,
    eps: float = 1e-6,
):
    """Orchestration-trace credit (crs design on arXiv 2605.02801): per-turn advantages computed at
    rollout time (:func:`orch_advantages` on :func:`orch_reward`), put into the loss here."""
    return turn_advantages(batch)


def check(cfg: Any, args: Mapping[str, Any]) -> None:
    """orchestra only (it reads the spawn/collect logs); level and parallel from their lists."""
    if cfg.benchmark.name != "orchestra":
        raise ConfigError(
            f"method orch_credit needs benchmark=orchestra (spawn/collect events); got benchmark={cfg.benchmark.name}"
        )
    if args.get("level") not in LEVELS:
        raise ConfigError(
            f"method.credit.orch_credit.level must be one of {', '.join(LEVELS)} (got {args.get('level')!r})"
        )
    if args.get("parallel") not in PARALLEL:
        raise ConfigError(
            f"method.credit.orch_credit.parallel must be one of {', '.join(PARALLEL)} (got {args.get('parallel')!r})"
        )
    from crs.envs.orchestra import OrchestraConfig

    OrchestraConfig.from_mapping(dict(cfg.benchmark))  # one ConfigError line for a bad benchmark value


METHOD = Method(
    "orch_credit",
    orch_credit,
    help={
        "level": "trajectory: GRPO on r over all orchestrator tokens (the survey's uniform credit; = grpo when "
        "aux = 0); event: each turn normalised in its (prompt, event type) group, Dr. MAS agent-wise (less "
        "credit diffusion as traces grow, Observation 1, but small groups are noisy); event+perf: A_team + "
        "w_event·A_event (as GiGPO combines levels).",
        "aux": "Scale of both orchestration rewards, the knob a schedule drives (neutral 0 = outcome only): "
        "λ1 = aux·lam_parallel, λ2 = aux·lam_finish. PARL anneals them to 0 (its schedule is unpublished).",
        "lam_parallel": "λ1 at aux = 1, weight of r_parallel (PARL's instantiation reward, against serial "
        "collapse; too strong → spawns for their own sake) [INF: 0.2].",
        "lam_finish": "λ2 at aux = 1, weight of r_finish = collected/spawned (against spurious parallelism: "
        "spawning without collecting) [INF: 0.2].",
        "parallel": "any: r_parallel = 1[≥ 1 spawn] (the K2.5 report's reading); fraction: distinct sub-problems "
        "spawned / #sub-problems (the survey's 'speedup' reading, denser).",
        "w_event": "Weight of the event level in event+perf (GiGPO's ω: 1).",
        "std": "Divide by σ + eps (Dr. MAS norm_adv_by_std_in_grpo: true); false = mean-centring only.",
        "eps": "ε of (s − μ)/(σ + ε) (Dr. MAS: 1e-6).",
    },
    ranges={
        "aux": "[0, inf)",
        "lam_parallel": "[0, inf)",
        "lam_finish": "[0, inf)",
        "w_event": "[0, inf)",
        "eps": "(0, 1]",
    },
    substrate="turns",
    benchmarks=("multi_turn",),
    turn_credit=_orch_turns,
    turn_prepare=_prepare,
    check=check,
)
