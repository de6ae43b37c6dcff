"""PURE against the authors' two code paths, each transcribed here step by step (never from crs).

OpenRLHF ``main`` @ 41f9363 (``CJReinforce/PURE``):
    ``experience_maker.py:244-249`` returns = reverse cumsum of the token rewards, zeroed at the reward
    positions unless ``--nomask_separator_adv``; ``replay_buffer.py:178-186`` each sample's padding is
    stripped (``remove_padding_in_sequences``, :115-148) before ``normalize`` (:213-254): the mean is
    ``Σ A / (Σ action_mask − #(A == 0))`` in the masked mode and ``Σ A / Σ action_mask`` otherwise, the
    variance ``Σ (A − mean)²·action_mask`` over the same count, ``rstd = clamp(var, 1e-8)^−½``, and only
    the masked mode puts the zeros back (``masked_fill(A == 0, 0)``, :249-254).

verl branch @ 83f9869 (``credit_assignment: 'strict min-form'``, ``adv_norm: True``):
    ``ray_trainer.py:1093`` ``token_level_scores = VR·vr_coef + rm_scores`` (VR ∈ {0, 1} at the last valid
    token, ``workers/reward_manager/prime.py:152``; rm_scores = ``p_k`` at step ends, no softmin weights,
    ``fsdp_workers.py:1206-1211, 1528-1537``); responses are padded to ``response_length`` = the max
    generation length (``workers/rollout/vllm_rollout/vllm_rollout.py:202``); ``core_algos.py:201-255``
    ``compute_rloo_outcome_advantage``: ``returns = r·eos_mask`` then, column by column from the right,
    ``returns[:, c] = min(returns[:, c], returns[:, c+1])`` over the whole padded width (:227-230);
    ``returns[i] −= (Σ_group Σ returns − Σ returns[i]) / ((n−1)·response_length)`` (:246-247);
    ``returns *= eos_mask``; ``masked_whiten`` (``verl/utils/torch_functional.py:118-146``: masked mean,
    unbiased masked variance, ``(x − mean)·rsqrt(var + 1e-8)``), ``·eos_mask``. The KL-in-reward term
    (``apply_kl_penalty``) is left out on both sides: crs puts the KL in the loss (``trainer.beta``).

    pytest tests/test_pure_fidelity.py
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.testing import assert_close

from crs.methods.pure import produce, pure_advantages
from crs.steps.segment import segment_batch

SEP = frozenset({9})
EOS, PAD = 2, 0


# ------------------------------------------------------------------------------ the authors' code


def openrlhf_normalize(A: torch.Tensor, mask: torch.Tensor, mask_separator_adv: bool) -> torch.Tensor:
    """``ReplayBuffer.normalize`` on the rows of ``A`` after ``remove_padding_in_sequences`` (one process)."""
    items = [A[b, : int(mask[b].sum())].float() for b in range(A.shape[0])]  # right padding stripped
    action_masks = [torch.ones_like(x) for x in items]
    zero_masks = [x == 0 for x in items]
    items_vector = torch.cat(items)
    action_masks_vector = torch.cat(action_masks)
    num_actions = action_masks_vector.sum()
    if mask_separator_adv:
        num_actions = num_actions - torch.cat(zero_masks).sum()
    mean = items_vector.sum() / num_actions
    std = ((items_vector - mean).pow(2) * action_masks_vector).sum()
    rstd = (std / num_actions).clamp(min=1e-8).rsqrt()
    out = torch.zeros_like(A, dtype=torch.float32)
    for b, x in enumerate(items):
        target = (x - mean) * rstd
        out[b, : x.numel()] = target.masked_fill(zero_masks[b], 0) if mask_separator_adv else target
    return out


def verl_strict_min_form(p, ends, valid, mask, solved, group, response_length, vr_coef=1.0):
    """verl branch: token scores → strict min-form RLOO returns → ``masked_whiten`` on ``[B, N]``."""
    B, T = mask.shape
    N = response_length
    eos_mask = torch.zeros(B, N)
    eos_mask[:, :T] = mask.float()
    rm_scores = torch.zeros(B, N)
    for b in range(B):
        for k in range(p.shape[1]):
            if valid[b, k]:
                rm_scores[b, int(ends[b, k])] = float(p[b, k])
    verifiable = torch.zeros(B, N)
    for b in range(B):
        verifiable[b, int(mask[b].sum()) - 1] = float(solved[b])
    token_level_rewards = verifiable * vr_coef + rm_scores
    returns = token_level_rewards * eos_mask
    for col in range(N - 2, -1, -1):
        returns[:, col] = torch.min(returns[:, col], returns[:, col + 1])
    sums = [returns[i].sum() for i in range(B)]
    for i in range(B):
        g = i // group
        group_sum = sum(sums[g * group : (g + 1) * group])
        returns[i] -= (group_sum - sums[i]) / ((group - 1) * N)
    returns *= eos_mask
    m = eos_mask
    mean = (returns * m).sum() / m.sum()
    var = (((returns - mean) ** 2) * m).sum() / m.sum()
    var = var * m.sum() / (m.sum() - 1)
    adv = (returns - mean) * torch.rsqrt(var + 1e-8) * eos_mask
    return adv[:, :T]


# ------------------------------------------------------------------------------------- batches


def toy_batch():
    """test_steps.py's shared batch: row 0 [5,5,9,6,6,2], row 1 [5,9,6,2,pad,pad], one group of 2."""
    ids = torch.tensor([[5, 5, 9, 6, 6, 2], [5, 9, 6, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return ids, mask, torch.tensor([[0.5, -0.5], [1.0, 0.2]]), torch.tensor([True, False])


def random_batch(seed, B=8, T=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((B, T), PAD)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b in range(B):
        L = int(torch.randint(2, T + 1, (1,), generator=g))
        row = torch.randint(3, 9, (L,), generator=g)
        row[torch.rand(L, generator=g) < 0.3] = 9  # separators
        row[L - 1] = EOS if torch.rand(1, generator=g) < 0.8 else row[L - 1]  # some truncated
        ids[b, :L], mask[b, :L] = row, 1
    mask[0] = 1  # one row fills the batch width (no padding after it inside T)
    ids[0, -1] = EOS
    steps = segment_batch(ids, mask, SEP)
    p = (torch.rand(steps.valid.shape, generator=g) * 2 - 1) * steps.valid
    solved = torch.rand(B, generator=g) < 0.5
    return ids, mask, p, solved


# ----------------------------------------------------------------------------- mask_separator


def test_no_separator_mask_whitens_every_token_smallest_case():
    """One completion [sep, EOS], sum form, p = [−1, 1]: returns [0, 1]; the authors whiten both tokens."""
    ids, mask = torch.tensor([[9, 2]]), torch.tensor([[1, 1]])
    steps = segment_batch(ids, mask, SEP)
    kw = dict(form="sum", baseline="none", vr_coef=0.0, mask_separator=False)
    p = torch.tensor([[-1.0, 1.0]])
    G = pure_advantages(p, steps, mask.float(), torch.tensor([False]), 1, whiten=False, **kw)
    assert_close(G, torch.tensor([[0.0, 1.0]]))
    want = openrlhf_normalize(G, mask, mask_separator_adv=False)
    assert_close(want, torch.tensor([[-1.0, 1.0]]))
    A = pure_advantages(p, steps, mask.float(), torch.tensor([False]), 1, **kw)
    assert_close(A, want)  # the old crs (zeros kept out, zeros stay zero) gave [[0, 0]]


@pytest.mark.parametrize("form", ["softmin", "sum"])
@pytest.mark.parametrize("mask_separator", [True, False])
@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_whitening_matches_openrlhf_normalize(form, mask_separator, seed):
    ids, mask, p, solved = toy_batch() if seed is None else random_batch(seed)
    steps = segment_batch(ids, mask, SEP)
    group = 2
    kw = dict(form=form, mask_separator=mask_separator)
    G = pure_advantages(p, steps, mask.float(), solved, group, whiten=False, **kw)
    want = openrlhf_normalize(G, mask, mask_separator_adv=mask_separator)
    A = pure_advantages(p, steps, mask.float(), solved, group, **kw)
    assert_close(A, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_separator", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whitening_with_zero_returns_matches_openrlhf_normalize(mask_separator, seed):
    """Valid tokens with a zero return (last step scored 0, no baseline, no VR): whitened too when the
    separators are not masked (the old crs left every zero at 0 in both modes)."""
    ids, mask, p, solved = random_batch(seed)
    steps = segment_batch(ids, mask, SEP)
    last = steps.valid.long().cumsum(-1).argmax(-1)
    p = p.clone()
    p[torch.arange(p.shape[0]), last] = 0.0
    kw = dict(form="sum", baseline="none", vr_coef=0.0, mask_separator=mask_separator)
    G = pure_advantages(p, steps, mask.float(), solved, 2, whiten=False, **kw)
    assert ((G == 0) & (mask > 0)).any()
    want = openrlhf_normalize(G, mask, mask_separator_adv=mask_separator)
    assert_close(pure_advantages(p, steps, mask.float(), solved, 2, **kw), want, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------- strict


@pytest.mark.parametrize("seed", [None, 0, 1, 2, 3])
@pytest.mark.parametrize("N", [None, 16])
def test_strict_form_matches_the_verl_branch(seed, N):
    """``form: strict`` with ``mask_separator: false`` == verl's strict min-form RLOO + masked_whiten."""
    ids, mask, p, solved = toy_batch() if seed is None else random_batch(seed)
    steps = segment_batch(ids, mask, SEP)
    width = N or ids.shape[1]
    want = verl_strict_min_form(p, steps.ends, steps.valid, mask, solved, 2, width)
    A = pure_advantages(p, steps, mask.float(), solved, 2, form="strict", mask_separator=False, width=N)
    assert_close(A, want, rtol=1e-5, atol=1e-6)


def test_strict_min_runs_over_padding_and_uses_the_max_generation_length():
    """The toy batch written out (vr_coef = 0, no whitening): row 1 is padded, so its last token's
    return is min(0.2, 0) = 0 (the old crs: 0.2); N = 10 (max generation length), not T = 6."""
    ids, mask, p, solved = toy_batch()
    steps = segment_batch(ids, mask, SEP)
    G0 = [-0.5] * 6  # r = [0, 0, .5, 0, 0, −.5]
    G1 = [0.0, 0.0, 0.0, 0.0]  # r = [0, 1, 0, .2] then padding zeros
    N = 10
    b0, b1 = sum(G1) / N, sum(G0) / N
    expected = torch.tensor([[g - b0 for g in G0], [g - b1 for g in G1] + [0.0, 0.0]])
    A = pure_advantages(
        p,
        steps,
        mask.float(),
        solved,
        2,
        form="strict",
        vr_coef=0.0,
        mask_separator=False,
        whiten=False,
        width=N,
    )
    assert_close(A, expected)


def test_produce_gives_the_strict_form_the_max_generation_length():
    """At rollout time N is the trainer's ``max_completion_length`` (verl's padded ``response_length``)."""
    ids, mask, p, solved = random_batch(4)
    steps = segment_batch(ids, mask, SEP)
    view = SimpleNamespace(
        steps=steps,
        completion_mask=mask,
        success=solved,
        group_size=2,
        trainer=SimpleNamespace(max_completion_length=32),
    )
    args = dict(
        form="strict", temperature=0.1, baseline="token", vr_coef=1.0, mask_separator=False, whiten=True
    )
    got = produce(view, p, "reward", args, None)["pure_adv"]
    want = verl_strict_min_form(p, steps.ends, steps.valid, mask, solved, 2, 32)
    assert_close(got, want, rtol=1e-5, atol=1e-6)
