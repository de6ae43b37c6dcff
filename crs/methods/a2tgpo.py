"""A²TGPO — Agentic Turn-Group Policy Optimization with adaptive turn-level clipping (arXiv 2605.06200).

Turn rewards are the **information gain** (IGPO, arXiv 2510.14967) of each tool turn: how much the
policy's teacher-forced log-probability of the ground-truth answer rises once the turn's tool result
is in context, ``ig_t = log p̄(a | q, τ_{≤t}) − log p̄(a | q, τ_{≤t−1})`` (``log p̄`` = mean token
log-prob of the answer; ``ig_type: prob_diff`` uses ``exp`` of it, the paper's Eq. 3; the released
code uses ``log_prob_diff``). Then (paper Eq. 6-11, docs/methods/turns.md §2):

1. **turn-group normalisation** — ``îg_{i,t}`` = z-score of ``ig`` within the ``(prompt, turn index)``
   group (population std ``sqrt(var + 1e-8)``, eps 1e-6; groups of one ⇒ 0), turn index = the order of
   the row's tool turns;
2. **variance-rescaled discounted accumulation** — ``D_{i,t} = Σ_{k≥t} γ^{k−t} îg_{i,k}`` over the row's
   tool turns, divided by ``√n_{i,t}`` (``n`` = number of accumulated terms); the tool turn's advantage
   is ``α·D/√n + R̂_i`` and the answer turn's ``R̂_i`` (``R̂`` = the outcome z-scored per prompt);
3. **adaptive clipping** — each tool turn's PPO clip range is scaled by ``c = 1 + β(2σ(îg) − 1)``
   (wider for informative turns), ``[1 − c·ε_low, 1 + c·ε_high]``; the answer turn keeps ``c = 1``.

Choices and deviations (knobs in ``conf/method/a2tgpo.yaml``): γ = 1, α = 0.3, β = 0.3 as the released
script (the paper's Eq. 9 has no α; ``alpha: 1.0`` gives it). The query-only baseline ``p̄(a|q)``
follows the paper (the code has none). The ratio stays per token (TRL's); the paper's turn-level
ratio has the same value and gradient on-policy (``num_iterations = 1``), so the clip ranges only
matter off-policy, and crs keeps the trainer's ε instead of the paper's 3e-3/4e-3 (tuned for turn
ratios). Ground truth: ``calc_tool`` uses ``Answer: <gold>``; the maze has no answer text, so its
target is the policy's episode-ending reply ``done`` [INF: an assumption of this port].

    crs train benchmark=calc_tool method=a2tgpo
"""

from __future__ import annotations

import torch
from torch import Tensor

from crs.credit.method import Method
from crs.envs.turns import TurnBatch, TurnCredit, turn_advantages


def turn_positions(turns: TurnBatch) -> Tensor:
    """``[N,K]`` long: the order of each tool turn within its row (0, 1, ...), −1 for other turns."""
    proc = (turns.has_call * turns.turn_mask) > 0
    idx = proc.long().cumsum(-1) - 1
    return torch.where(proc, idx, torch.full_like(idx, -1))


def turn_group_norm(ig: Tensor, turns: TurnBatch, eps: float = 1e-6) -> Tensor:
    """``îg``: z-score within (prompt group, tool-turn index); population std ``sqrt(var+1e-8)``; singleton ⇒ 0."""
    pos = turn_positions(turns)
    out = torch.zeros_like(ig, dtype=torch.float32)
    valid = pos >= 0
    keys = turns.group.unsqueeze(1).expand_as(pos) * (pos.shape[1] + 1) + pos
    for key in torch.unique(keys[valid]):
        sel = valid & (keys == key)
        x = ig[sel].float()
        if x.numel() <= 1:
            continue
        out[sel] = (x - x.mean()) / ((x.var(unbiased=False) + 1e-8).sqrt() + eps)
    return out


def rescaled_accumulation(ig_hat: Tensor, turns: TurnBatch, gamma: float = 1.0) -> tuple[Tensor, Tensor]:
    """``(D [N,K], n [N,K])``: ``D_t = Σ_{k≥t} γ^{k−t} îg_k`` over the row's tool turns, ``n_t`` = number of terms."""
    pos = turn_positions(turns)
    D = torch.zeros_like(ig_hat, dtype=torch.float32)
    n = torch.zeros_like(ig_hat, dtype=torch.float32)
    for i in range(ig_hat.shape[0]):
        ks = [k for k in range(ig_hat.shape[1]) if pos[i, k] >= 0]
        run, cnt = 0.0, 0
        for k in reversed(ks):
            run = float(ig_hat[i, k]) + gamma * run
            cnt += 1
            D[i, k], n[i, k] = run, cnt
    return D, n


def clip_scale(ig_hat: Tensor, beta: float) -> Tensor:
    """``c = 1 + β(2σ(îg) − 1) ∈ (1 − β, 1 + β)`` (paper Eq. 11)."""
    return 1.0 + beta * (2.0 * torch.sigmoid(ig_hat.float()) - 1.0)


def outcome_norm(outcome: Tensor, group: Tensor, eps: float = 1e-6) -> Tensor:
    """``R̂``: outcome z-scored per prompt group (population std ``sqrt(var+1e-8)``; a group of one ⇒ 0)."""
    out = torch.zeros_like(outcome, dtype=torch.float32)
    for g in torch.unique(group):
        sel = group == g
        x = outcome[sel].float()
        if x.numel() > 1:
            out[sel] = (x - x.mean()) / ((x.var(unbiased=False) + 1e-8).sqrt() + eps)
    return out


def a2tgpo_advantages(
    turns: TurnBatch, ig: Tensor, gamma: float = 1.0, alpha: float = 0.3, beta: float = 0.3
) -> tuple[Tensor, Tensor, Tensor]:
    """``(A [N,K], clip scale [N,K], îg [N,K])`` (paper Eq. 7-11 with the code's α)."""
    m = turns.turn_mask
    pos = turn_positions(turns)
    proc = (pos >= 0).float()
    ig_hat = turn_group_norm(ig, turns) * proc
    D, n = rescaled_accumulation(ig_hat, turns, gamma)
    R_hat = outcome_norm(turns.outcome, turns.group).unsqueeze(1)
    A = (R_hat + alpha * D / n.clamp(min=1).sqrt() * proc) * m
    c = torch.where(proc > 0, clip_scale(ig_hat, beta), torch.ones_like(ig_hat))
    return A, c * m + (1 - m), ig_hat


# ---------------------------------------------------------------------------------------------------
# information gain: teacher-forced forwards of the ground-truth answer after every tool turn


@torch.no_grad()
def answer_logprob(
    model,
    contexts: list[list[int]],
    target: list[list[int]],
    pad_id: int,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> Tensor:
    """Mean log-prob of ``target[j]`` tokens after ``contexts[j]`` (right-padded batches, no grad)."""
    out = []
    device = next(model.parameters()).device
    for s in range(0, len(contexts), batch_size):
        ctx, tgt = contexts[s : s + batch_size], target[s : s + batch_size]
        seqs = [c + t for c, t in zip(ctx, tgt)]
        W = max(map(len, seqs))
        ids = torch.full((len(seqs), W), pad_id, dtype=torch.long)
        att = torch.zeros((len(seqs), W), dtype=torch.long)
        for j, x in enumerate(seqs):
            ids[j, : len(x)] = torch.tensor(x)
            att[j, : len(x)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=att.to(device)).logits.float() / temperature
        logp = (
            torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)
        )
        for j, (c, t) in enumerate(zip(ctx, tgt)):
            out.append(logp[j, len(c) - 1 : len(c) - 1 + len(t)].mean().item() if t else 0.0)
    return torch.tensor(out)


def information_gain(
    trainer, out, rows, tok_turn: Tensor, off: int, ig_type: str = "log_prob_diff"
) -> Tensor:
    """``[N,K]`` IG of every tool turn of the gathered batch (0 elsewhere); computed on this process's rows."""
    from accelerate.utils import gather_object

    tok = trainer._tokenizer
    envs = trainer.environments
    pm, pids = out["prompt_mask"].cpu(), out["prompt_ids"].cpu()
    cids = out["completion_ids"].cpu()
    cm = out["completion_mask"].cpu()
    B = cids.shape[0]
    ctxs, tgts, where = [], [], []
    for i in range(B):
        env = envs[i]
        target_text = env._ig_target() if hasattr(env, "_ig_target") else None
        if not target_text:
            continue
        tgt = tok(target_text, add_special_tokens=False)["input_ids"]
        prompt = pids[i][pm[i] > 0].tolist()
        comp = cids[i][cm[i] > 0].tolist()
        r = rows[off + i]
        n_turns = r["n_turns"]
        call_turns = sorted(set(k for k in r["step_turns"] if k < n_turns))
        ctxs.append(prompt)
        tgts.append(tgt)
        where.append((i, -1))
        for k in call_turns:
            nxt = (tok_turn[i] == k + 1).nonzero()
            end = int(nxt[0]) if len(nxt) else len(comp)
            ctxs.append(prompt + comp[:end])
            tgts.append(tgt)
            where.append((i, k))
    K = max(r["n_turns"] for r in rows) if rows else 1
    local = torch.zeros(B, max(K, 1))
    if ctxs:
        lp = answer_logprob(trainer.model, ctxs, tgts, tok.pad_token_id, trainer.temperature)
        val = lp.exp() if ig_type == "prob_diff" else lp
        prev: dict[int, float] = {}
        for (i, k), v in zip(where, val.tolist()):
            if k >= 0:
                local[i, k] = v - prev[i]
            prev[i] = v
    if trainer.accelerator.num_processes > 1:
        return torch.tensor([row for part in gather_object([local.tolist()]) for row in part])
    return local


def _a2tgpo_turns(
    turns: TurnBatch,
    group_size: int,
    gamma: float = 1.0,
    alpha: float = 0.3,
    beta: float = 0.3,
    ig_type: str = "log_prob_diff",
) -> TurnCredit:
    ig = turns.ig if turns.ig is not None else torch.zeros_like(turns.turn_mask)
    A, c, ig_hat = a2tgpo_advantages(turns, ig, gamma, alpha, beta)
    proc = turn_positions(turns) >= 0
    return TurnCredit(
        A,
        clip_scale=c,
        metrics={
            "ig_mean": float(ig[proc].mean()) if proc.any() else 0.0,
            "clip_scale_mean": float(c[proc].mean()) if proc.any() else 1.0,
        },
    )


def a2tgpo(batch, gamma: float = 1.0, alpha: float = 0.3, beta: float = 0.3, ig_type: str = "log_prob_diff"):
    """A²TGPO (arXiv 2605.06200): information-gain turn advantages, turn-group normalisation, rescaled
    accumulation, adaptive per-turn clip ranges (computed at rollout time, :func:`a2tgpo_advantages`)."""
    if ig_type not in ("log_prob_diff", "prob_diff") or not 0 <= beta < 1:
        from crs.errors import ConfigError

        raise ConfigError("a2tgpo: ig_type must be log_prob_diff|prob_diff and 0 <= beta < 1")
    return turn_advantages(batch)


def _prepare(trainer, out, rows, tok_turn, offset, args, turns: TurnBatch) -> None:
    """Rollout time, before the turn credit: each turn's information gain (one extra no-grad forward)."""
    turns.ig = information_gain(trainer, out, rows, tok_turn, offset, args.get("ig_type", "log_prob_diff"))


METHOD = Method(
    "a2tgpo",
    a2tgpo,
    help={
        "gamma": "Discount of the rescaled information-gain accumulation over turns (authors: 1).",
        "alpha": "Weight α of the turn (information-gain) advantage on the outcome one; 0 = outcome only.",
        "beta": "Adaptive clip: a turn's clip range is scaled by 1 + β·(normalised IG) (authors: 0.3).",
        "ig_type": "log_prob_diff (log-prob gain of the gold answer, authors' default) or prob_diff.",
    },
    ranges={"gamma": "[0, 1]", "alpha": "[0, inf)", "beta": "[0, 1)"},
    substrate="turns",
    benchmarks=("multi_turn",),
    turn_credit=_a2tgpo_turns,
    turn_prepare=_prepare,
)
