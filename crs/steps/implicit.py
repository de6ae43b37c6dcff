"""The implicit process reward model that OPRL / iStar learn online (arXiv 2509.19199; Tongyi-ConvAI code).

Spec: docs/methods/steps.md §3 (code ``CharacterRL-iStar/`` @ dfee104). A second trainable copy π_φ of the
policy (initialised from it) is trained by trajectory-level DPO on outcome-ranked pairs, against the
rolling π_θold as reference; its log-ratio summed over a step is the step reward::

    q_s   = Σ_{t ∈ step s} (log π_φ(y_t|·) − log π_θold(y_t|·))          r_s = β·q_s,  β = 0.05
    Q_τ   = mean_s β·q_s  (code; ``traj_agg: sum`` = the paper's Σ)
    L_PRM = mean over all pairs (τ+, τ−) of a group with success(τ+) > 0 ≥ success(τ−) of −log σ(Q_τ+ − Q_τ−)
    A     = A^E + w·A^S,  A^E = the group-normalised outcome advantage, w = 1

One forward of π_φ gives both this rollout's step rewards and the DPO loss; one AdamW step follows, so
the rewards come from the PRM *before* its update (the code's ``update=after``).

Adaptation to single-turn RLVR [INF, documented]: the authors' step is an environment turn (one batch row);
on single-turn tasks a step is a segment of one completion (:mod:`crs.steps.segment`), the unit the issue
asks for; on crs's environments a step is an assistant turn (:func:`crs.steps.segment.segment_turns`,
tool results excluded) inside the one sequence TRL keeps per episode. The
step advantage follows the paper's form ``A^S = (r_s − mean R_s)/std R_s`` over all step rewards of the
group (the code's first-seen-row RLOO baseline assumes one step per row). ``norm: batch_max`` is the code's
``istar_norm=batch_norm`` (``r / (max_batch |reverse-cumsum r| + 1e-6)``). The token-level PPO ratio is
kept (the code's choice; the paper describes a step-level ratio).
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import Tensor

from crs.errors import ConfigError
from crs.steps.scorers import RolloutView, StepScorer
from crs.steps.segment import Steps


def step_log_ratios(logp_phi: Tensor, logp_old: Tensor, steps: Steps) -> Tensor:
    """``q[B,K] = Σ_{t∈step} (log π_φ − log π_old)`` (padding excluded)."""
    return steps.sum_over_steps((logp_phi - logp_old) * (steps.step_id >= 0))


def trajectory_scores(step_rewards: Tensor, valid: Tensor, agg: str = "mean") -> Tensor:
    """``Q_τ``: mean (code) or sum (paper) of the step rewards over valid steps (``[B]``)."""
    if agg not in ("mean", "sum"):
        raise ConfigError(f"implicit.traj_agg must be mean or sum, got {agg!r}")
    s = (step_rewards * valid).sum(-1)
    return s / valid.sum(-1).clamp(min=1) if agg == "mean" else s


def dpo_pair_loss(Q: Tensor, success: Tensor, group_size: int) -> tuple[Tensor, int, float]:
    """iStar's ``eto`` loss: mean over all in-group pairs (τ+ succeeded, τ− did not) of ``−log σ(Q+ − Q−)``.

    Returns:
        ``(loss, n_pairs, pair_accuracy)``; loss 0 (with grad) when there are no pairs.
    """
    Qg, sg = Q.view(-1, group_size), success.view(-1, group_size).bool()
    diffs = []
    for g in range(Qg.shape[0]):
        pos, neg = Qg[g][sg[g]], Qg[g][~sg[g]]
        if pos.numel() and neg.numel():
            diffs.append((pos.unsqueeze(1) - neg.unsqueeze(0)).reshape(-1))
    if not diffs:
        return Q.sum() * 0.0, 0, float("nan")
    d = torch.cat(diffs)
    return -F.logsigmoid(d).mean(), int(d.numel()), float((d > 0).float().mean())


class ImplicitPRM(StepScorer):
    """π_φ: a trainable copy of the policy, one DPO step per rollout (after scoring it)."""

    name = "implicit"
    kind = "reward"

    def __init__(self, beta: float = 0.05, lr: float = 1e-4, traj_agg: str = "mean", grad_clip: float = 10.0):
        super().__init__()
        if beta <= 0:
            raise ConfigError(f"method.steps.implicit.beta must be > 0, got {beta}")
        if lr <= 0:
            raise ConfigError(f"method.steps.implicit.lr must be > 0, got {lr}")
        trajectory_scores(torch.zeros(1, 1), torch.ones(1, 1), traj_agg)  # validates traj_agg
        self.beta, self.lr, self.traj_agg, self.grad_clip = beta, lr, traj_agg, grad_clip
        self.phi = None
        self.opt = None

    def _init(self, policy) -> None:
        self.phi = copy.deepcopy(policy)
        self.phi.train()
        for p in self.phi.parameters():
            p.requires_grad_(True)
        # iStar: AdamW, weight decay 0, constant lr (1e-6 for 7B models; toy models need more)
        self.opt = torch.optim.AdamW(self.phi.parameters(), lr=self.lr, weight_decay=0.0)

    def score(self, view: RolloutView) -> Tensor:
        from trl import GRPOTrainer

        tr = view.trainer
        if tr is None:
            raise RuntimeError("the implicit scorer needs the running trainer")
        t0 = time.perf_counter()
        if self.phi is None:
            self._init(tr.accelerator.unwrap_model(tr.model))
        T = view.completion_ids.shape[1]
        ids = torch.cat([view.prompt_ids, view.completion_ids], 1)
        att = torch.cat([view.prompt_mask, view.completion_mask], 1)
        old = view.extra.get("old_logps")
        if old is None:
            with torch.no_grad():
                old = GRPOTrainer._get_per_token_logps_and_entropies(tr, tr.model, ids, att, T)[0]
        dev = next(self.phi.parameters()).device
        logp_phi = GRPOTrainer._get_per_token_logps_and_entropies(tr, self.phi, ids.to(dev), att.to(dev), T)[
            0
        ]
        mask = view.completion_mask.to(dev).float()
        steps = view.steps.to(dev)  # segmentation tensors are built on the CPU (a CUDA index error on GPU)
        q = step_log_ratios(logp_phi * mask, old.to(dev).detach() * mask, steps)
        r = self.beta * q
        valid = steps.valid.float()
        Q = trajectory_scores(r, valid, self.traj_agg)
        loss, n_pairs, acc = dpo_pair_loss(Q, view.success.to(dev), view.group_size)
        self.opt.zero_grad(set_to_none=True)
        if n_pairs:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.phi.parameters(), self.grad_clip)
            self.opt.step()
        self.metrics = {
            "implicit/dpo_loss": float(loss.detach()),
            "implicit/pairs": float(n_pairs),
            "implicit/time_s": time.perf_counter() - t0,
        }
        if n_pairs:
            self.metrics["implicit/pair_acc"] = acc
        return (r.detach() * valid).cpu()
