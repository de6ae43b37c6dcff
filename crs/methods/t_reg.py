"""T-REG (arXiv 2412.02685, ACL 2025): DPO plus a token-level reward regulariser.

DPO learns an implicit token reward ``β log π_θ(y_t)/π_ref(y_t)`` but nothing tells it *which* tokens
earned the sequence-level preference. T-REG has the reference model rate each response token itself by
contrastive prompting — ``r̂_t = σ(log π_ref(y_t | x_better, y_<t) − log π_ref(y_t | x_worse, y_<t)) − 0.5``
— and adds a weak, pair-weighted regulariser pulling the policy's token rewards towards ``r̂`` in *both*
responses (docs/methods/wave3.md §2, docs/t_reg.md)::

    L = L_DPO + α · w · (L_REG(y_w) + L_REG(y_l)),   L_REG(y) = −Σ_t β · r̂_t · log π_θ(y_t)
    w = σ(r_DPO(y_l) − r_DPO(y_w)),                   r_DPO(y) = β log π_θ(y)/π_ref(y)

    crs train trainer=dpo method=t_reg method.credit.t_reg.alpha=0.25

The token rewards ``r̂`` come from the evaluator substrate (:func:`crs.prefs.rewards.contrastive_token_rewards`,
built once per run); the functions here are the loss's pure tensor math; :class:`crs.trainers.dpo.CreditDPOTrainer` supplies the batch
(rows ``[chosen; rejected]`` as TRL concatenates them) and adds the returned ``pref_reg`` to TRL's loss.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError


def reg_loss(
    logps: Tensor, token_rewards: Tensor, mask: Tensor, beta: Tensor | float, normalize: str = "sum"
) -> Tensor:
    """``L_REG(y) = −Σ_t β · r̂_t · log π_θ(y_t)`` per row.

    Args:
        logps: ``[B,T]`` policy token log-probs (with gradient).
        token_rewards: ``[B,T]`` fixed ``r̂`` (no gradient).
        mask: ``[B,T]`` completion mask.
        beta: DPO β, a float or ``[B]``.
        normalize: ``sum`` over tokens (the paper's Σ_t) or ``mean`` (divided by the row's token count).

    Returns:
        ``[B]`` regulariser per response.
    """
    beta = torch.as_tensor(beta, dtype=logps.dtype, device=logps.device)
    beta = beta.unsqueeze(-1) if beta.dim() == 1 else beta
    per_row = -(beta * token_rewards.detach() * logps * mask).sum(-1)
    if normalize == "mean":
        per_row = per_row / mask.sum(-1).clamp(min=1.0)
    return per_row


def pair_weight(chosen_rewards: Tensor, rejected_rewards: Tensor, detach: bool = True) -> Tensor:
    """``w = σ(r_DPO(y_l) − r_DPO(y_w))`` per pair (``[N]`` in, ``[N]`` out); the DPO gradient coefficient."""
    w = torch.sigmoid(rejected_rewards - chosen_rewards)
    return w.detach() if detach else w


def t_reg(
    batch: CreditBatch,
    alpha: float = 0.25,
    detach_weight: bool = True,
    normalize: str = "sum",
    weighting: str = "dpo",
    better_template: str = "[+]{prompt}",
    worse_template: str = "[-]{prompt}",
) -> CreditBatch:
    """Add the T-REG regulariser ``α · mean_pairs[w · (L_REG(y_w) + L_REG(y_l))]`` as ``features["pref_reg"]``.

    ``batch``: ``2N`` rows ``[chosen; rejected]``; ``mask`` ``[2N,T]`` completion mask; ``logps`` ``[2N,T]`` policy
    token log-probs *with* gradient; ``features``: ``token_reward`` ``[2N,T]`` (r̂), ``implicit_reward`` ``[2N]``
    (``r_DPO``, with gradient) and ``beta`` ``[2N]``. Without them (outside DPO training) the batch is unchanged.
    Also returns ``t_reg/weight`` ``[N]`` and ``t_reg/reg`` ``[2N]`` (detached, for logging). The templates are
    read by the evaluator (:mod:`crs.prefs.rewards`), not here.
    """
    f = batch.features
    if batch.logps is None or "implicit_reward" not in f or "token_reward" not in f:
        return batch
    reg = reg_loss(batch.logps, f["token_reward"], batch.mask, f["beta"], normalize)
    chosen_r, rejected_r = f["implicit_reward"].chunk(2)
    if weighting == "dpo":
        w = pair_weight(chosen_r, rejected_r, detach_weight)
    else:  # "static": the paper's ablation (no w)
        w = torch.ones_like(chosen_r)
    reg_w, reg_l = reg.chunk(2)
    loss = alpha * (w * (reg_w + reg_l)).mean()
    prev = f.get("pref_reg")
    loss = loss if prev is None else prev + loss
    return batch.replace(
        features={**f, "pref_reg": loss, "t_reg/weight": w.detach(), "t_reg/reg": reg.detach()}
    )


def _check(cfg, args) -> None:
    for name, allowed in (("normalize", ("sum", "mean")), ("weighting", ("dpo", "static"))):
        if args[name] not in allowed:
            raise ConfigError(
                f"method.credit.t_reg.{name} must be one of {', '.join(allowed)} (got {args[name]!r})"
            )
    for name in ("better_template", "worse_template"):
        if "{prompt}" not in str(args[name]):
            raise ConfigError(f"method.credit.t_reg.{name} must contain {{prompt}} (got {args[name]!r})")
    if args["better_template"] == args["worse_template"]:
        raise ConfigError(
            "method.credit.t_reg: better_template and worse_template must differ (r̂ would be 0)"
        )


METHOD = Method(
    "t_reg",
    t_reg,
    help={
        "alpha": "α, weight of the token regulariser (T-REG arXiv 2412.02685 searched {0.1, 0.25, 0.5}; 0 = DPO). "
        "Larger pulls the policy's token rewards harder towards the self-rated r̂ at the cost of the DPO margin. "
        "The schedule drives it (drive: {knob: alpha, neutral: 0}).",
        "detach_weight": "Detach w = σ(r(y_l) − r(y_w)) [UNVERIFIED in the paper; crs default true]: w is a "
        "per-pair coefficient like DPO's own gradient weight; undetached, the regulariser also pushes the DPO "
        "margin (a second DPO-like term scaled by α·L_REG).",
        "normalize": "sum: L_REG = −Σ_t β r̂_t log π (the paper's equation; long responses weigh more); mean: "
        "divided by the response length (length-neutral, weaker per token) [UNVERIFIED which the authors ran].",
        "weighting": "dpo: w = σ(r_DPO(y_l) − r_DPO(y_w)) (the paper); static: w = 1 (the paper's ablation, "
        "48.0 vs 50.8 AlpacaEval LC) — the regulariser then also acts on pairs DPO already ranks right.",
        "better_template": "Prompt text that asks for a better response; {prompt} is the pair's prompt. The "
        "paper's revision prompt on a real model; on crs's embedded model the control prefix it learned in its "
        "contrastive warm start (crs/prefs/warmstart.py: '[+]' before correct solutions).",
        "worse_template": "Prompt text that asks for a worse response ({prompt} as above); embedded: '[-]', the "
        "prefix the warm start put before solutions with a wrong step.",
    },
    ranges={"alpha": "[0, inf)"},
    substrate="tokens",
    trainers=("dpo",),
    token_features=("token_reward",),
    check=_check,
)
