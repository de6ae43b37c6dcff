"""PURE — min-form credit assignment over process rewards (arXiv 2504.15275; CJReinforce/PURE).

Spec: docs/methods/steps.md §1 (code-grounded; OpenRLHF ``main`` @ 41f9363, verl branch @ 83f9869).
For one rollout batch, with step scores ``p_{i,k} ∈ [−1, 1]`` (a PRM's ``P(correct) − P(wrong)``, or a
rule/judge score ``2s − 1``):

``form: softmin`` (PURE, OpenRLHF ``turn_process_reward_logits_to_reward``)
    ``w_k = softmax_k(−p_k / T)`` over the response's steps, ``r_k = w_k·p_k`` on step k's last token, so
    ``Σ_k r_k → min_k p_k`` as ``T → 0`` (T = 0.1);
``form: sum`` (the sum-form ablation, verl ``gamma-decay``)
    ``r_k = p_k``;
then the **token baseline** (script ``--reward_baseline token``): ``R_i = Σ_k r_{i,k}``,
``b_i = Σ_{j≠i} R_j / Σ_{j≠i} L_j`` (leave-one-out over the group, ``L`` = valid tokens) and
``r_{i,c_k} −= b_i·n_{i,k}`` (``n`` = step tokens without the separator); the optional **verifiable
reward** ``v_i = solved_i − 1``, minus its leave-one-out mean, times ``vr_coef``, on the last token; the
return ``G_t = Σ_{t' ≥ t} r_{t'}`` (γ = 1); advantage 0 at every reward position (separators and the
last token) unless ``mask_separator`` is off; then whitening over the batch (mean over the non-zero
advantages, zeros stay zero; ``replay_buffer.py normalize``).

With ``mask_separator`` off (``--nomask_separator_adv``) nothing is zeroed and the whitening runs over
every valid token (mean and variance over all of them): ``normalize`` only excludes zeros in the masked
mode. OpenRLHF strips each sample's padding before ``normalize`` (``remove_padding_in_sequences``,
replay_buffer.py:115-148, 185), so its counts are over valid tokens, as crs's.

``form: strict`` (verl branch @ 83f9869, ``'strict min-form'``, ``compute_rloo_outcome_advantage``
core_algos.py:201-255, ``adv_norm: True``)
    ``r = p_k`` on step ends ``+ vr_coef·solved`` on the last token (VR ∈ {0, 1}, no baseline of its
    own: ray_trainer.py:1093, reward_manager/prime.py:152); ``G_t = min_{t' ≥ t} r_{t'}`` over the whole
    row padded to ``N`` = the max generation length (verl pads every response to ``response_length``,
    vllm_rollout.py:202), so the padding zeros count (non-reward tokens carry 0 too: ``G ≤ 0`` when
    every score is positive — the authors' code does exactly this); the return-level baseline
    ``G_i −= (Σ_{j∈g} Σ_t G_j − Σ_t G_i)/((n−1)·N)``; verl's ``masked_whiten`` (unbiased variance,
    ``rsqrt(var + 1e-8)``). verl has no separator masking: that is ``mask_separator: false``; with it on,
    crs also zeroes the reward positions and leaves them out of the whitening (a crs combination).

Example::

    crs train method=pure                                   # rule scores on the embedded task
    crs train method=pure method.steps.scorer=prm           # a PRM (built offline on first use)
    crs train method=pure method.credit.pure.form=sum       # the sum-form ablation that collapses
"""

from __future__ import annotations

import torch
from torch import Tensor

from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError
from crs.steps.mixing import as_signed, mix_token_advantages
from crs.steps.scorers import RolloutView
from crs.steps.segment import Steps


def softmin_step_rewards(p: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """``r_k = softmax_k(−p_k/T)·p_k`` over each row's valid steps (``[B,K]``; 0 on missing steps)."""
    if temperature <= 0:
        raise ConfigError(f"pure.temperature must be > 0, got {temperature}")
    logits = (-p / temperature).masked_fill(~valid, float("-inf"))
    w = torch.softmax(logits, dim=-1)
    w = torch.nan_to_num(w, nan=0.0)  # rows without steps
    return (w * p).masked_fill(~valid, 0.0)


def loo_mean(x: Tensor, group_size: int) -> Tensor:
    """Leave-one-out group mean ``(Σ_g x − x_i)/(n − 1)`` (``[N]``, groups contiguous)."""
    g = x.view(-1, group_size)
    return ((g.sum(1, keepdim=True) - g) / max(group_size - 1, 1)).reshape(-1)


def token_baseline(R: Tensor, lengths: Tensor, group_size: int) -> Tensor:
    """PURE's per-token baseline ``b_i = Σ_{j≠i} R_j / Σ_{j≠i} L_j`` (``[N]``)."""
    Rg, Lg = R.view(-1, group_size), lengths.float().view(-1, group_size)
    den = (Lg.sum(1, keepdim=True) - Lg).clamp(min=1.0)
    return ((Rg.sum(1, keepdim=True) - Rg) / den).reshape(-1)


def whiten_nonzero(A: Tensor, mask: Tensor, keep_zeros: bool = True) -> Tensor:
    """OpenRLHF ``ReplayBuffer.normalize`` (replay_buffer.py:213-254 @ 41f9363) over the batch.

    ``keep_zeros`` (``mask_separator_adv``): mean over the valid non-zero entries, var over all valid
    entries / that count, zeros stay 0; off: mean and var over all valid entries, every one whitened.
    """
    nz = (A != 0) & (mask > 0) if keep_zeros else mask > 0
    count = nz.sum().clamp(min=1)
    mean = (A * nz).sum() / count
    var = (((A - mean) ** 2) * mask).sum() / count
    out = (A - mean) * var.clamp(min=1e-8).rsqrt()
    return out.masked_fill(~nz, 0.0)


def reverse_cumsum(x: Tensor) -> Tensor:
    return x.flip(-1).cumsum(-1).flip(-1)


def masked_whiten(A: Tensor, mask: Tensor) -> Tensor:
    """verl ``masked_whiten`` (verl/utils/torch_functional.py:118-146 @ 83f9869), then ``·mask``.

    Mean and *unbiased* variance over ``mask``, ``(A − mean)·rsqrt(var + 1e-8)``; verl raises on fewer
    than 2 masked entries, crs skips the Bessel factor there.
    """
    m = mask.float()
    n = m.sum()
    mean = (A * m).sum() / n.clamp(min=1)
    var = (((A - mean) ** 2) * m).sum() / n.clamp(min=1)
    if n > 1:
        var = var * n / (n - 1)
    return (A - mean) * torch.rsqrt(var + 1e-8) * m


def strict_min_returns(r: Tensor, width: int) -> Tensor:
    """verl's strict min-form return (core_algos.py:227-230): ``G_t = min_{t' ≥ t} r_{t'}`` over the row
    padded with zeros to ``width`` columns (``r``: ``[B,T]``, 0 outside the completion; ``width ≥ T``)."""
    G = torch.cummin(r.flip(-1), dim=-1).values.flip(-1)
    if width > r.shape[-1]:
        G = G.clamp(max=0.0)  # every row has padding zeros after it in verl's [B, width] tensor
    return G


def pure_advantages(
    p: Tensor,
    steps: Steps,
    mask: Tensor,
    success: Tensor,
    group_size: int,
    form: str = "softmin",
    temperature: float = 0.1,
    baseline: str = "token",
    vr_coef: float = 1.0,
    mask_separator: bool = True,
    whiten: bool = True,
    width: int | None = None,
) -> Tensor:
    """PURE's per-token advantages for a rollout batch.

    Args:
        p: ``[B,K]`` step scores in ``[−1, 1]`` (0 on missing steps).
        steps: segmentation of the batch (:func:`crs.steps.segment.segment_batch`).
        mask: ``[B,T]`` valid completion tokens.
        success: ``[B]`` bool, the verifier's verdict (for the VR term).
        group_size: completions per prompt (groups contiguous).
        form: ``softmin`` | ``sum`` | ``strict``.
        temperature: softmin T (0.1 in both released codes).
        baseline: ``token`` (PURE's leave-one-out token baseline) | ``none``.
        vr_coef: weight of the verifiable reward (0 = PURE-PRM only).
        mask_separator: advantage 0 at reward positions (OpenRLHF default).
        whiten: normalise over the batch (both codes).
        width: ``N`` of the strict form (verl: the max generation length, the padded width of its
            rollouts); default ``T``.

    Returns:
        ``[B,T]`` advantages (0 outside ``mask``).
    """
    if form not in ("softmin", "sum", "strict"):
        raise ConfigError(f"pure.form must be softmin, sum or strict, got {form!r}")
    if baseline not in ("token", "none"):
        raise ConfigError(f"pure.baseline must be token or none, got {baseline!r}")
    B, T = mask.shape
    mask = mask.float()
    lengths = mask.sum(-1)
    valid = steps.valid
    p = p.float().masked_fill(~valid, 0.0)
    last = (lengths.long() - 1).clamp(min=0)
    rows = torch.arange(B)
    v = None
    if vr_coef:
        v = success.float() - 1.0
        v = (v - loo_mean(v, group_size)) * vr_coef
    if form == "strict":
        r = steps.scatter(p)
        if vr_coef:
            r[rows, last] += vr_coef * success.float()  # verl: VR ∈ {0, 1}, no LOO of its own
        N = max(int(width or T), T)
        G = strict_min_returns(r * mask, N)
        if baseline == "token":
            tot = G.sum(-1)
            b = (tot.view(-1, group_size).sum(1, keepdim=True) - tot.view(-1, group_size)).reshape(-1)
            G = G - (b / (max(group_size - 1, 1) * N)).unsqueeze(1)
        G = G * mask
    else:
        r_step = softmin_step_rewards(p, valid, temperature) if form == "softmin" else p
        if baseline == "token":
            b = token_baseline(r_step.sum(-1), lengths, group_size)
            r_step = (r_step - b.unsqueeze(1) * steps.n_content.float()).masked_fill(~valid, 0.0)
        r = steps.scatter(r_step)
        if v is not None:
            r[rows, last] += v
        G = reverse_cumsum(r * mask) * mask
    keep = mask
    if mask_separator:
        G = G * (1.0 - steps.end_mask())
        keep = mask * (1.0 - steps.end_mask())
    if whiten:
        G = masked_whiten(G, keep) if form == "strict" else whiten_nonzero(G, mask, keep_zeros=mask_separator)
    return G * mask


def produce(view: RolloutView, scores: Tensor, kind: str, args, outcome: Tensor) -> dict[str, Tensor]:
    """Rollout time, on the whole batch: PURE's ``[B,T]`` advantages from the step scores."""
    A = pure_advantages(
        as_signed(scores, kind) * view.steps.valid,
        view.steps,
        view.completion_mask.float().cpu(),
        view.success.cpu(),
        view.group_size,
        form=args["form"],
        temperature=args["temperature"],
        baseline=args["baseline"],
        vr_coef=args["vr_coef"],
        mask_separator=args["mask_separator"],
        whiten=args["whiten"],
        width=getattr(view.trainer, "max_completion_length", None),  # the strict form's N (verl)
    )
    return {"pure_adv": A}


def pure(
    batch: CreditBatch,
    form: str = "softmin",
    temperature: float = 0.1,
    baseline: str = "token",
    vr_coef: float = 1.0,
    mask_separator: bool = True,
    whiten: bool = True,
    mix: float = 1.0,
) -> CreditBatch:
    """PURE (arXiv 2504.15275): min-form (softmin, T = 0.1) process-reward returns with the token baseline.

    ``A = (1 − mix)·A_GRPO + mix·A_PURE``; the schedule drives ``mix`` (ρ = 0: GRPO). ``form``: softmin |
    sum (ablation) | strict (verl's reverse cumulative min). ``vr_coef`` mixes the verifiable reward in
    (PURE-PRM+VR; 0 = PRM only).
    """
    if form not in ("softmin", "sum", "strict"):
        raise ConfigError(f"pure.form must be softmin, sum or strict, got {form!r}")
    if baseline not in ("token", "none"):
        raise ConfigError(f"pure.baseline must be token or none, got {baseline!r}")
    if temperature <= 0:
        raise ConfigError(f"pure.temperature must be > 0, got {temperature}")
    return mix_token_advantages(batch, "pure_adv", mix)


METHOD = Method(
    "pure",
    pure,
    help={
        "form": "softmin (PURE: min-form credit, Σ_k r_k → min_k p_k as T → 0), sum (the ablation that "
        "reward-hacks), strict (verl branch: reverse cumulative min).",
        "temperature": "Softmin temperature T (both released codes: 0.1); smaller = closer to the hard min.",
        "baseline": "token: PURE's leave-one-out token baseline; none.",
        "vr_coef": "Weight of the verifiable reward on the last token (PURE-PRM+VR: 1; 0 = PRM only).",
        "mask_separator": "Advantage 0 at reward positions (separators, last token): OpenRLHF default.",
        "whiten": "Normalise the advantages over the batch (both codes).",
        "mix": "A = (1 − mix)·A_GRPO + mix·A_PURE: the schedule's knob (0 = GRPO).",
    },
    ranges={"temperature": "(0, inf)", "vr_coef": "[0, inf)", "mix": "[0, 1]"},
    substrate="steps",
    benchmarks=("single_turn",),
    token_features=("pure_adv",),
    produce=produce,
)
