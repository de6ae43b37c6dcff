"""Turn structure of an environment rollout batch, and the rollout-time hook for turn-level credit.

TRL 1.16's ``environment_factory`` loop returns one row per episode: ``completion_ids`` = assistant
turn 1 (with its EOS), the rendered tool result(s) and the next assistant header, assistant turn 2,
...; ``tool_mask`` is 0 on the tool tokens. crs reads the turns back from that layout:

- **turn k** of a row = the k-th maximal run of ``completion_mask·tool_mask == 1`` (one assistant
  message each; the last run is usually the final text-only answer);
- **env steps → turns**: the environment logged one :class:`~crs.envs.base.StepRecord` per tool call,
  in call order; the j-th tool message of the completion belongs to the assistant message before it,
  so step j is mapped to that turn (several calls in one turn are summed; steps whose results TRL
  rolled back for length are dropped);
- a turn's **anchor** = the anchor of its first call (the state *before* it); a text-only turn's anchor is
  the environment's current observation (docs/methods/turns.md §1.5).

The per-turn tensors form a :class:`TurnBatch` over the **gathered** batch (groups contiguous), where
the chain's turn method (a :class:`~crs.credit.method.Method` with a ``turn_credit`` hook) computes
``[N,K]`` turn advantages (and optionally clip scales); :func:`turn_hook` broadcasts them to the process's tokens as
``crs_turn_adv`` / ``crs_clip_scale`` ``[B,T]`` (tool tokens 0). The matching credit step
(``method.credit.<name>``, same arguments) then puts them into the loss. Metrics logged every step:
``env/turns`` (assistant turns per episode), ``env/tool_calls`` (calls per episode),
``env/valid_calls`` (fraction of calls that were legal actions), ``env/success``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class TurnBatch:
    """Per-turn view of ``N`` episodes with at most ``K`` turns (groups of ``group_size`` contiguous rows).

    Attributes:
        group: ``[N]`` long, prompt-group index.
        turn_mask: ``[N,K]`` 1 where turn k exists.
        reward: ``[N,K]`` step reward of the turn (sum of its calls' env rewards; 0 for text turns).
        valid: ``[N,K]`` 1 if all of the turn's calls were legal (text turns: 1).
        has_call: ``[N,K]`` 1 if the turn issued at least one tool call.
        anchor: ``[N,K]`` long anchor-state ids (equal id ⇔ identical anchor string), −1 where no turn.
        outcome: ``[N]`` episode reward (the trainer's summed reward).
        success: ``[N]`` the verifier's verdict.
        calls: per row, per turn, the ``(name, args)`` tool calls.
        gold_calls: per row, gold ``{"name", "arguments"}`` calls (tool task) or ``[]``.
        ig: ``[N,K]`` information gain of each turn (A²TGPO), when computed.
    """

    group: Tensor
    turn_mask: Tensor
    reward: Tensor
    valid: Tensor
    has_call: Tensor
    anchor: Tensor
    outcome: Tensor
    success: Tensor
    calls: list[list[list[tuple[str, dict[str, Any]]]]] = field(default_factory=list)
    gold_calls: list[list[dict[str, Any]]] = field(default_factory=list)
    ig: Tensor | None = None

    @property
    def n_turns(self) -> Tensor:
        return self.turn_mask.sum(-1).long()


@dataclass
class TurnCredit:
    """What a turn method returns: ``[N,K]`` turn advantages, optional ``[N,K]`` clip-range scales, metrics."""

    advantages: Tensor
    clip_scale: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------
# layout helpers (pure)


def turn_index(loss_mask: Tensor) -> Tensor:
    """``[B,T]`` long: the turn of each completion token (k-th run of ``loss_mask == 1``), −1 elsewhere.

    >>> turn_index(torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1]])).tolist()
    [[0, 0, -1, -1, 1, -1, 2, 2]]
    """
    m = (loss_mask > 0).long()
    prev = torch.nn.functional.pad(m[:, :-1], (1, 0))
    starts = (m == 1) & (prev == 0)
    idx = starts.long().cumsum(-1) - 1
    return torch.where(m == 1, idx, torch.full_like(idx, -1))


def broadcast_turns(values: Tensor, tok_turn: Tensor, fill: float = 0.0) -> Tensor:
    """``[B,K]`` per-turn values → ``[B,T]`` per token (``fill`` where ``tok_turn == −1``)."""
    if values.shape[1] == 0:
        return torch.full(
            tok_turn.shape,
            fill,
            dtype=values.dtype if values.numel() else torch.float32,
            device=tok_turn.device,
        )
    k = tok_turn.clamp(min=0, max=values.shape[1] - 1)
    out = values.gather(1, k)
    return torch.where(tok_turn >= 0, out, torch.full_like(out, fill))


def steps_to_turns(messages: list[dict[str, Any]] | None) -> list[int]:
    """Turn index of each tool message, in order, from a TRL conversational completion.

    >>> steps_to_turns([{"role": "assistant"}, {"role": "tool"}, {"role": "assistant"}, {"role": "tool"}, {"role": "tool"}])
    [0, 1, 1]
    """
    out, turn = [], -1
    for m in messages or []:
        if m.get("role") == "assistant":
            turn += 1
        elif m.get("role") == "tool":
            out.append(max(turn, 0))
    return out


def build_turn_batch(rows: list[dict[str, Any]], group_size: int) -> TurnBatch:
    """:class:`TurnBatch` from per-row dicts ``{n_turns, steps, step_turns, final_anchor, outcome, success, gold_calls}``."""
    N = len(rows)
    K = max([r["n_turns"] for r in rows] + [1])
    turn_mask = torch.zeros(N, K)
    reward = torch.zeros(N, K)
    valid = torch.ones(N, K)
    has_call = torch.zeros(N, K)
    anchor = torch.full((N, K), -1, dtype=torch.long)
    ids: dict[str, int] = {}
    calls: list[list[list[tuple[str, dict[str, Any]]]]] = []
    for i, r in enumerate(rows):
        n = r["n_turns"]
        turn_mask[i, :n] = 1
        row_calls: list[list[tuple[str, dict[str, Any]]]] = [[] for _ in range(n)]
        first_anchor: dict[int, str] = {}
        for step, k in zip(r["steps"], r["step_turns"]):
            if k >= n:
                continue
            reward[i, k] += float(step.reward)
            valid[i, k] *= float(step.valid)
            has_call[i, k] = 1
            row_calls[k].append((step.name, dict(step.args)))
            first_anchor.setdefault(k, step.anchor)
        for k in range(n):
            a = first_anchor.get(k, r["final_anchor"])
            anchor[i, k] = ids.setdefault(a, len(ids))
        calls.append(row_calls)
    return TurnBatch(
        group=torch.arange(N) // group_size,
        turn_mask=turn_mask,
        reward=reward,
        valid=valid,
        has_call=has_call,
        anchor=anchor,
        outcome=torch.tensor([float(r["outcome"]) for r in rows]),
        success=torch.tensor([bool(r["success"]) for r in rows]),
        calls=calls,
        gold_calls=[list(r.get("gold_calls") or []) for r in rows],
    )


# ---------------------------------------------------------------------------------------------------
# statistics shared by the methods (pure)


def grouped_norm(
    values: Tensor,
    keys: Tensor,
    valid: Tensor,
    mode: str,
    eps: float = 1e-6,
    singleton: str = "zero",
    unbiased: bool = True,
) -> Tensor:
    """Normalise ``values`` within groups of equal ``keys`` over entries where ``valid``.

    ``mode``: ``mean_norm`` (``x − μ``) or ``mean_std_norm`` (``(x − μ)/(σ + eps)``). ``singleton``:
    what a group of one gets — ``zero`` (μ = x: GiGPO's step level), ``raw`` (μ = 0, σ = 1: verl's
    episode level and MatchTIR). σ is the Bessel-corrected std when ``unbiased`` (torch.std, as verl).
    Returns 0 where not ``valid``.
    """
    if mode not in ("mean_norm", "mean_std_norm"):
        raise ValueError(f"mode must be mean_norm or mean_std_norm, got {mode!r}")
    out = torch.zeros_like(values, dtype=torch.float32)
    v = valid.bool()
    flat_keys = keys[v]
    flat_vals = values[v].float()
    res = torch.zeros_like(flat_vals)
    for key in torch.unique(flat_keys):
        sel = flat_keys == key
        x = flat_vals[sel]
        if x.numel() == 1:
            res[sel] = 0.0 if singleton == "zero" else x
            continue
        mu = x.mean()
        if mode == "mean_norm":
            res[sel] = x - mu
        else:
            sd = x.std(unbiased=unbiased) if unbiased else (x.var(unbiased=False) + 1e-8).sqrt()
            res[sel] = (x - mu) / (sd + eps)
    out[v] = res
    return out


def discounted_returns(reward: Tensor, turn_mask: Tensor, gamma: float) -> Tensor:
    """``G_k = r_k + γ·G_{k+1}`` backwards over each row's turns (0 outside ``turn_mask``)."""
    G = torch.zeros_like(reward, dtype=torch.float32)
    run = torch.zeros(reward.shape[0])
    for k in range(reward.shape[1] - 1, -1, -1):
        m = turn_mask[:, k]
        run = torch.where(m > 0, reward[:, k].float() + gamma * run, torch.zeros_like(run))
        G[:, k] = run
    return G


# ---------------------------------------------------------------------------------------------------
# the hook the trainer calls right after TRL's generation and scoring


def _row_record(
    env, messages, tm_row: Tensor, cm_row: Tensor, outcome: float, success: bool
) -> dict[str, Any]:
    n_turns = int(turn_index((cm_row * tm_row).unsqueeze(0)).max().item()) + 1
    step_turns = steps_to_turns(messages if isinstance(messages, list) else None)
    steps = list(getattr(env, "steps", []))[: len(step_turns)]
    obs_now = getattr(env, "_observation", None)
    return {
        "n_turns": max(n_turns, 0),
        "steps": steps,
        "step_turns": step_turns[: len(steps)],
        "final_anchor": obs_now() if callable(obs_now) else f"end{len(steps)}",
        "outcome": outcome,
        "success": success,
        "gold_calls": list(getattr(env, "gold_calls", []) or []),
        "row": dict(getattr(env, "row", {})),
    }


def turn_hook(trainer, inputs: list[dict[str, Any]], out: dict[str, Any]) -> dict[str, Tensor]:
    """Read the episodes' turn structure, run the chain's turn method, log ``env/*``; returns batch extras."""
    from accelerate.utils import gather_object

    mode = "train" if trainer.model.training else "eval"
    rollout = trainer._crs_rollout
    cm = out["completion_mask"].float()
    tm = out["tool_mask"].float() if "tool_mask" in out else torch.ones_like(cm)
    local_b = cm.shape[0]
    rpf = rollout["rewards_per_func"]
    rewards = (rpf * trainer.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
    success = torch.nan_to_num(rpf[:, 0], nan=0.0) > 0.5
    rank = trainer.accelerator.process_index
    off = rank * local_b
    comps = rollout.get("completions") or [None] * local_b
    local = [
        _row_record(
            trainer.environments[i],
            comps[i],
            tm[i].cpu(),
            cm[i].cpu(),
            float(rewards[off + i]),
            bool(success[off + i]),
        )
        for i in range(local_b)
    ]
    rows = gather_object(local) if trainer.accelerator.num_processes > 1 else local
    group = trainer.num_generations if mode == "train" else trainer.num_generations_eval
    turns = build_turn_batch(rows, group)
    metrics = trainer._metrics[mode]
    n_calls = torch.tensor([float(len(r["steps"])) for r in rows])
    n_valid = sum(float(s.valid) for r in rows for s in r["steps"])
    metrics["env/turns"].append(turns.n_turns.float().mean().item())
    metrics["env/tool_calls"].append(n_calls.mean().item())
    metrics["env/valid_calls"].append(n_valid / max(1.0, n_calls.sum().item()))
    metrics["env/success"].append(turns.success.float().mean().item())
    extras: dict[str, Tensor] = {}
    device = out["completion_ids"].device
    tok_turn = turn_index(cm * tm).cpu()
    extras["crs_turn_index"] = tok_turn.to(device)
    rho = getattr(trainer, "_crs_rho", None)
    rho = trainer.rho() if rho is None else rho  # fixed once per rollout by the trainer
    planned = trainer.credit.hooked("turn_credit", rho)
    if not planned or mode != "train":
        return extras
    if len(planned) > 1:
        raise ValueError(f"at most one turn-level method per chain, got {[m.name for m, _ in planned]}")
    method, args = planned[0]
    if method.turn_prepare is not None:  # extra per-turn quantities (A²TGPO: information gain)
        method.turn_prepare(trainer, out, rows, tok_turn, off, args, turns)
    credit = method.turn_credit(turns, group, **args)
    for k, v in credit.metrics.items():
        metrics[f"credit/{method.name}/{k}"].append(float(v))
    sl = slice(off, off + local_b)
    extras["crs_turn_adv"] = broadcast_turns(credit.advantages[sl].float(), tok_turn).to(device)
    if credit.clip_scale is not None:
        extras["crs_clip_scale"] = broadcast_turns(credit.clip_scale[sl].float(), tok_turn, fill=1.0).to(
            device
        )
    return extras


def turn_advantages(batch):
    """Shared body of the turn methods' credit steps: replace advantages with the rollout-time ``turn_adv``.

    Without an environment rollout (the config-time dry run) the batch is returned unchanged; a real
    run on a single-turn benchmark is refused earlier (a turn method declares ``benchmarks=("multi_turn",)``).
    """
    adv = batch.features.get("turn_adv") if hasattr(batch.features, "get") else None
    if adv is None:
        return batch
    return batch.replace(advantages=adv.float() * batch.mask)
