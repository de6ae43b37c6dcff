"""The pure tensor math of the token- and group-level credit methods (each function has a golden test in
``tests/test_credit.py``); the method modules of :mod:`crs.methods` adapt them to :class:`~crs.credit.method.CreditBatch`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crs.errors import ConfigError


def tp_suffix_mask(lengths: Tensor, T: int, withhold: float) -> Tensor:
    """TP-Schedule's trained window: the tail of each response.

    ``c_i = min(floor(L_i·withhold), L_i − 1)``; tokens ``t ∈ [c_i, L_i)`` are trained, so at least the
    last token always is (RLVR-Schedule ``agent_loop.py``).

    Args:
        lengths: ``[B]`` response lengths ``L_i`` (tokens, EOS included).
        T: padded completion width.
        withhold: ``ρ`` ∈ [0, 1], the withheld prefix fraction.

    Returns:
        ``[B,T]`` float mask.
    """
    L = lengths.to(torch.float64)
    cut = torch.minimum(torch.floor(L * float(withhold)), L - 1)
    t = torch.arange(T, dtype=torch.float64, device=lengths.device).unsqueeze(0)
    return ((t >= cut.unsqueeze(1)) & (t < L.unsqueeze(1))).to(torch.float32)


def tp_prefix_cut(lengths: Tensor, withhold: float) -> Tensor:
    """``[B]`` long: ``c_i``, the number of withheld prefix tokens (for ``reward_on: suffix``)."""
    L = lengths.to(torch.float64)
    return torch.minimum(torch.floor(L * float(withhold)), L - 1).clamp(min=0).long()


def top_entropy_mask(
    entropies: Tensor, mask: Tensor, keep_fraction: float, selection: str = "per_sequence"
) -> Tensor:
    """High-entropy ("forking") token selection.

    Args:
        entropies: ``[B,T]`` token entropies.
        mask: ``[B,T]`` 1 on candidate tokens.
        keep_fraction: fraction of tokens kept (the 80/20 paper: 0.2).
        selection:
            ``per_sequence`` — top ``k_i = ceil(L_i·keep)`` tokens of each response, computed in float32
            (RLVR-Schedule's scheduled forking-token baseline, ``compute_entropy_topk_response_mask``);
            ``batch_topk`` — top ``k = max(1, int(keep·|S| + 0.9999))`` over all valid tokens ``S`` of the
            micro-batch (the 80/20 authors' ``get_global_entropy_top_mask``; with several processes the
            trainer pools ``S`` over all of them);
            ``batch_quantile`` — ``H ≥ quantile(H_S, 1 − keep)`` (TRL's ``top_entropy_quantile``).

    Returns:
        ``[B,T]`` float 0/1 selection, zero outside ``mask``.
    """
    valid = mask > 0
    H = entropies.detach().float()
    if selection == "per_sequence":
        # float32, as the authors' ``(n.float() * r).ceil()`` (RLVR-Schedule ray_trainer.py:150): in float64
        # ρ = 0.99, L = 100 gives k = 2 instead of their 1
        r = min(max(float(keep_fraction), 0.0), 1.0)
        k = (valid.sum(-1).to(torch.float32) * r).ceil().long()  # [B]
        # rank tokens inside each row by entropy; invalid tokens go last
        scores = H.masked_fill(~valid, float("-inf"))
        order = scores.argsort(dim=-1, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(H.shape[-1], device=H.device).expand_as(order))
        return ((ranks < k.unsqueeze(1)) & valid).float()
    flat = H[valid]
    if flat.numel() == 0:
        return torch.zeros_like(H)
    if selection == "batch_topk":
        # the 80/20 authors' count: max(1, int(n·r + 0.9999)) (get_global_entropy_top_mask); keep = 0 selects none
        if keep_fraction <= 0:
            return torch.zeros_like(H)
        k = min(max(1, int(flat.numel() * keep_fraction + 0.9999)), flat.numel())
        thr = flat.topk(k).values[-1]
        sel = valid & (H >= thr)
        # ties at the threshold could exceed k; keep exactly the first k in row-major order of rank
        if int(sel.sum()) > k:
            scores = H.masked_fill(~valid, float("-inf")).flatten()
            idx = scores.argsort(descending=True, stable=True)[:k]
            sel = torch.zeros_like(scores, dtype=torch.bool)
            sel[idx] = True
            sel = sel.view_as(H)
        return sel.float()
    if selection == "batch_quantile":
        thr = torch.quantile(flat, 1.0 - keep_fraction)
        return (valid & (H >= thr)).float()
    raise ConfigError(
        f"forking_tokens.selection must be per_sequence, batch_topk or batch_quantile, got {selection!r}"
    )


def entropy_shaped_advantages(
    advantages: Tensor, entropies: Tensor, mask: Tensor, alpha: float, kappa: float, strength: float
) -> Tensor:
    """Cheng et al. (arXiv 2506.14758): ``A' = (A + s·min(α·H.detach(), |A|/κ))·mask``.

    The clip at ``|A|/κ`` (κ > 1) keeps the sign of ``A``; ``s`` is the schedulable strength
    (RLVR-Schedule's ``apply_entropy_soft_weight_to_advantage`` uses ``s = ρ``).

    Args:
        advantages: ``[B]`` or ``[B,T]``.
        entropies: ``[B,T]``.
        mask: ``[B,T]``.
    Returns:
        ``[B,T]`` per-token advantages.
    """
    A = advantages if advantages.dim() == 2 else advantages.unsqueeze(1).expand_as(mask)
    bonus = torch.minimum(alpha * entropies.detach().float(), A.abs() / kappa)
    return (A + strength * bonus) * mask


def group_stats(values: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Per-row mean and (Bessel-corrected, like TRL's ``nanstd``) std of contiguous groups.

    Args:
        values: ``[N]`` with ``N = n_groups·group_size``, groups contiguous (TRL's gathered order).
    Returns:
        ``(mean[N], std[N])`` broadcast back to rows.
    """
    g = values.float().view(-1, group_size)
    mean = g.mean(1)
    std = g.std(1, unbiased=True) if group_size > 1 else torch.zeros_like(mean)
    return mean.repeat_interleave(group_size), std.repeat_interleave(group_size)


def adora_advantageous(success: Tensor, lengths: Tensor, truncated: Tensor, group_size: int) -> Tensor:
    """ADORA's length criterion (``compute_grpo_outcome_advantage_ADORA``): is a group advantageous?

    As the released code (``ADORA/verl/trainer/ppo/core_algos.py:150-179``): ``max_pos`` is the longest
    correct response (``−inf`` when none is correct), ``mean_neg`` the mean length of the incorrect,
    non-truncated ones (``−inf`` when there are none); the group is advantageous iff
    ``max_pos > mean_neg``. So a group with **no correct answer is scaled by λ** (``−inf > x`` is
    false), and a group whose incorrect answers are all truncated keeps weight 1.

    Args:
        success: ``[N]`` bool, the verifier's verdict.
        lengths: ``[N]`` response lengths.
        truncated: ``[N]`` bool, hit ``max_completion_length`` without EOS (the code's length threshold).
    Returns:
        ``[N]`` bool, broadcast per row.
    """
    ok = success.bool().view(-1, group_size)
    L = lengths.float().view(-1, group_size)
    wrong = (~ok) & (~truncated.bool().view(-1, group_size))
    neg_inf = torch.full_like(L[:, 0], float("-inf"))
    max_pos = torch.where(ok.any(1), L.masked_fill(~ok, float("-inf")).max(1).values, neg_inf)
    n_wrong = wrong.sum(1)
    mean_neg = torch.where(n_wrong > 0, (L * wrong).sum(1) / n_wrong.clamp(min=1), neg_inf)
    return (max_pos > mean_neg).repeat_interleave(group_size)


def fold_token_weights(
    advantages: Tensor, weights: Tensor, mask: Tensor, loss_type: str, renormalize: bool
) -> Tensor:
    """Fold per-token weights into advantages so TRL's loss becomes the weighted objective.

    TRL multiplies advantages into ``−min(r·A, clip(r)·A)`` and divides by ``Σ mask`` (per sequence
    for ``grpo``/``sapo``, per micro-batch otherwise). With ``w ≥ 0``, ``A·w`` gives ``w·ℓ``. When
    ``renormalize`` the result is rescaled so the normaliser becomes ``Σ w`` — the mean over selected
    tokens (80/20 official code: ``agg_loss(mask=response_mask·M, "token-mean")``). ``dapo``'s global
    token count is rescaled per micro-batch (exact when ``gradient_accumulation_steps = 1``).

    Args:
        advantages: ``[B]`` or ``[B,T]``.
        weights: ``[B,T]`` ≥ 0.
        mask: ``[B,T]`` TRL's loss mask (``completion_mask·tool_mask``).
        loss_type: TRL ``loss_type``.
        renormalize: divide by ``Σ w`` instead of ``Σ mask``.
    Returns:
        ``[B,T]`` advantages.
    """
    A = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)
    w = weights * mask
    out = A * w
    if not renormalize:
        return out
    if loss_type in ("grpo", "sapo"):
        factor = mask.sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp(min=1e-12)
        factor = torch.where(w.sum(-1, keepdim=True) > 0, factor, torch.zeros_like(factor))
    else:
        total = w.sum()
        factor = mask.sum() / total if total > 0 else torch.zeros((), device=w.device)
    return out * factor


def scale_rows(adv: Tensor, scale: Tensor) -> Tensor:
    """Multiply ``[B]`` or ``[B,T]`` advantages by a per-row ``[B]`` scale."""
    return adv * (scale if adv.dim() == 1 else scale.unsqueeze(1))


def reverse_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> Tensor:
    """Token mean of the full-vocabulary ``KL(π_S ‖ π_T) = Σ_v p_S (log p_S − log p_T)`` (a scalar).

    Args:
        student_logits: ``[B,T,V]`` student logits at the positions of (student-sampled) tokens.
        teacher_logits: ``[B,T,V]`` teacher logits at the same positions (same vocabulary).
        mask: ``[B,T]`` 1 on the completion tokens that count.

    The sparse-to-dense condition C2 (the teacher within a small KL of the student) measured on student
    samples; OPD's expected per-token reward is its negative (S3).
    """
    ls = torch.log_softmax(student_logits.float(), dim=-1)
    lt = torch.log_softmax(teacher_logits.float(), dim=-1)
    per_token = (ls.exp() * (ls - lt)).sum(-1)
    m = mask.float()
    return (per_token * m).sum() / m.sum().clamp_min(1.0)
