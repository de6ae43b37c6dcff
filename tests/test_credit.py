"""Golden tests for the credit methods (spec: /work/shared/docs/methods.md §1.3, §2, §3, §7, §9, §10.2).

Every batch is hand-made (B = 2–4 rows, T = 5–10 positions, a few bigger groups for the rollout
features) and every expected number is written out in the test from the spec's formula — by hand or
with plain Python arithmetic — never obtained from the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from crs.credit import (
    CreditBatch,
    adora_advantageous,
    entropy_shaped_advantages,
    fold_token_weights,
    group_stats,
    rollout_features,
    top_entropy_mask,
    tp_prefix_cut,
    tp_suffix_mask,
)
from crs.errors import ConfigError
from crs.methods import METHODS as CREDIT
from crs.methods.chain import CreditChain


def f32(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _mask_from_lengths(lengths, T):
    return f32([[1.0 if t < L else 0.0 for t in range(T)] for L in lengths])


# ===================================================================================================
# §1.3(a) TP-Schedule: c_i = min(floor(L_i·ρ), L_i − 1), trained tokens t ∈ [c_i, L_i)

LENGTHS = [10, 4, 1, 7]


@pytest.mark.parametrize(
    "rho, expected",
    [
        # c = [0, 0, 0, 0]: every valid token
        (
            0.0,
            [
                [1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
                [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
            ],
        ),
        # c = [floor(3.0)=3, floor(1.2)=1, 0, floor(2.1)=2]
        (
            0.3,
            [
                [0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
                [0, 1, 1, 1, 0, 0, 0, 0, 0, 0],
                [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 1, 1, 1, 1, 1, 0, 0, 0],
            ],
        ),
        # c = [5, 2, 0, floor(3.5)=3]
        (
            0.5,
            [
                [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
                [0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
                [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
            ],
        ),
        # c = [floor(7.0)=7, floor(2.8)=2, 0, floor(4.9)=4]
        (
            0.7,
            [
                [0, 0, 0, 0, 0, 0, 0, 1, 1, 1],
                [0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
                [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 1, 1, 1, 0, 0, 0],
            ],
        ),
        # c = [min(9, 9), min(3, 3), min(0, 0), min(6, 6)]: only the last token
        (
            0.99,
            [
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            ],
        ),
        # c = min(L, L − 1) = L − 1: at least one token is always trained
        (
            1.0,
            [
                [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                [0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
            ],
        ),
    ],
)
def test_tp_suffix_mask(rho, expected):
    got = tp_suffix_mask(torch.tensor(LENGTHS), 10, rho)
    assert got.shape == (4, 10)
    assert_close(got, f32(expected))


def test_tp_suffix_mask_empty_row_and_float_lengths():
    # a zero-length row trains nothing; float lengths (mask sums) work like integer ones
    got = tp_suffix_mask(f32([0.0, 6.0]), 6, 0.5)
    assert_close(got, f32([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]]))


@pytest.mark.parametrize(
    "rho, expected",
    [
        (0.0, [0, 0, 0, 0]),
        (0.3, [3, 1, 0, 2]),
        (0.5, [5, 2, 0, 3]),
        (0.7, [7, 2, 0, 4]),
        (0.99, [9, 3, 0, 6]),
        (1.0, [9, 3, 0, 6]),
    ],
)
def test_tp_prefix_cut(rho, expected):
    got = tp_prefix_cut(torch.tensor(LENGTHS), rho)
    assert got.dtype == torch.long
    assert_close(got, torch.tensor(expected))


def test_tp_suffix_mask_python_float_semantics():
    # same cut as the authors' Python-float `int(L·ρ)`: 100·0.29 → 28 and 90·0.7 = 62.99… → 62
    # (a float32 product would round up to 29 and 63)
    assert int(100 * 0.29) == 28 and int(90 * 0.7) == 62
    got = tp_suffix_mask(torch.tensor([100]), 100, 0.29)
    assert int(got[0].argmax()) == 28 and int(got.sum()) == 72
    got = tp_suffix_mask(torch.tensor([90]), 100, 0.7)
    assert int(got[0].argmax()) == 62 and int(got.sum()) == 28


def test_tp_prefix_cut_python_float_semantics_and_empty_row():
    # The authors' code is `min(int(len(response_ids) * prefix_ratio), len − 1)` on Python floats:
    # 100·0.29 = 28.999999999999996 → 28 (exact arithmetic would say 29), 10·0.3 = 3.0 → 3.
    assert int(100 * 0.29) == 28 and int(10 * 0.3) == 3  # the arithmetic the expectation rests on
    assert_close(tp_prefix_cut(torch.tensor([100, 10, 0]), 0.29), torch.tensor([28, 2, 0]))
    assert_close(tp_prefix_cut(torch.tensor([100, 10]), 0.3), torch.tensor([30, 3]))


# ===================================================================================================
# §1.3(b) / §2 forking tokens

# three rows; padding carries very large entropies that must never be selected
H = f32(
    [
        [0.1, 0.9, 0.5, 0.3, 0.7, 5.0],
        [0.2, 0.05, 0.8, 9.0, 9.0, 9.0],
        [0.6, 0.4, 0.15, 0.35, 0.25, 0.45],
    ]
)
M = f32([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])  # L = 5, 3, 6; |S| = 14


@pytest.mark.parametrize(
    "keep, expected",
    [
        # k_i = ceil(L_i·0.5) = [3, 2, 3]
        (0.5, [[0, 1, 1, 0, 1, 0], [1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]]),
        # k_i = ceil(L_i·0.2) = [ceil(1.0)=1, ceil(0.6)=1, ceil(1.2)=2]
        (0.2, [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 1]]),
        # k_i = ceil(L_i·0.01) = 1 each: the top token of every row
        (0.01, [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]),
        (0.0, [[0] * 6, [0] * 6, [0] * 6]),
        # every valid token, no padding
        (1.0, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]),
    ],
)
def test_top_entropy_per_sequence(keep, expected):
    got = top_entropy_mask(H, M, keep, "per_sequence")
    assert_close(got, f32(expected))


@pytest.mark.parametrize(
    "keep, L, k",
    [
        (0.3, 100, 31),  # float32(100)·0.3 = 30.000002 → 31 (float64 gives 30)
        (1 - 0.99, 100, 1),  # the case: ρ = 0.99 → keep 0.010000000000000009; float64 gives 2
        (0.5, 7, 4),
        (1.0, 5, 5),
    ],
)
def test_top_entropy_per_sequence_float32_ceil_as_authors(keep, L, k):
    """k_i = (n.float() * r).ceil() in float32, as RLVR-Schedule ray_trainer.py:150."""
    assert int((torch.tensor([float(L)], dtype=torch.float32) * keep).ceil()) == k  # the authors' expression
    ent = torch.linspace(1.0, 2.0, L).unsqueeze(0)
    got = top_entropy_mask(ent, torch.ones(1, L), keep, "per_sequence")
    assert int(got.sum()) == k
    assert_close(got[0, L - k :], torch.ones(k))  # the k largest entropies are the last k


@pytest.mark.parametrize(
    "keep, expected",
    [
        # k = ceil(0.2·14) = 3: entropies 0.9, 0.8, 0.7
        (0.2, [[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),
        # k = ceil(0.3·14) = ceil(4.2) = 5: 0.9, 0.8, 0.7, 0.6, 0.5
        (0.3, [[0, 1, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]),
        # k = 7: 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4 (row 1's 0.2 is not among them, unlike per_sequence)
        (0.5, [[0, 1, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]]),
        (0.0, [[0] * 6, [0] * 6, [0] * 6]),
        (1.0, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]),
    ],
)
def test_top_entropy_batch_topk(keep, expected):
    got = top_entropy_mask(H, M, keep, "batch_topk")
    assert_close(got, f32(expected))


def test_top_entropy_batch_topk_ties_keep_exactly_k():
    # all valid tokens tie: k = ceil(0.5·5) = 3 tokens exactly, all valid
    ent = f32([[1.0, 1.0, 1.0, 7.0, 7.0], [1.0, 1.0, 7.0, 7.0, 7.0]])
    mask = f32([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    got = top_entropy_mask(ent, mask, 0.5, "batch_topk")
    assert int(got.sum()) == 3
    assert bool(((got > 0) <= (mask > 0)).all())


@pytest.mark.parametrize(
    "keep, expected",
    [
        # sorted S = [.05 .1 .15 .2 .25 .3 .35 .4 .45 .5 .6 .7 .8 .9], n = 14, linear interpolation:
        # q = 0.8: position 0.8·13 = 10.4 → 0.6 + 0.4·(0.7 − 0.6) = 0.64 → {0.7, 0.8, 0.9}
        (0.2, [[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),
        # q = 0.7: position 9.1 → 0.5 + 0.1·(0.6 − 0.5) = 0.51 → {0.6, 0.7, 0.8, 0.9}: 4 tokens,
        # where batch_topk keeps ceil(4.2) = 5
        (0.3, [[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]]),
        # q = 0.5: position 6.5 → (0.35 + 0.4)/2 = 0.375 → {0.4 … 0.9}: 7 tokens
        (0.5, [[0, 1, 1, 0, 1, 0], [0, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]]),
        # q = 0: threshold = min(S) → every valid token, padding excluded
        (1.0, [[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]),
    ],
)
def test_top_entropy_batch_quantile(keep, expected):
    got = top_entropy_mask(H, M, keep, "batch_quantile")
    assert_close(got, f32(expected))


def test_top_entropy_batch_quantile_threshold_is_inclusive():
    # H ≥ threshold (TRL): with S = [1, 2, 3, 4, 5] and q = 0.5 the threshold is 3 itself
    ent = f32([[1.0, 2.0, 3.0, 4.0, 5.0]])
    got = top_entropy_mask(ent, torch.ones(1, 5), 0.5, "batch_quantile")
    assert_close(got, f32([[0, 0, 1, 1, 1]]))


@pytest.mark.parametrize("selection", ["per_sequence", "batch_topk", "batch_quantile"])
def test_top_entropy_padding_never_selected(selection):
    for keep in (0.1, 0.5, 0.9, 1.0):
        got = top_entropy_mask(H, M, keep, selection)
        assert float((got * (1 - M)).sum()) == 0.0
    # a fully padded batch selects nothing
    assert float(top_entropy_mask(H, torch.zeros_like(M), 0.5, selection).sum()) == 0.0


def test_top_entropy_unknown_selection():
    with pytest.raises(ConfigError, match="selection"):
        top_entropy_mask(H, M, 0.2, "per_token")


# ===================================================================================================
# §3 / §1.3(c) entropy-shaped advantages: (A + s·min(α·H, |A|/κ))·mask

EA_H = f32([[0.5, 2.0, 1.0, 3.0], [0.1, 1.0, 0.5, 0.625], [2.0, 2.0, 2.0, 2.0]])
EA_M = f32([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])


def test_entropy_shaped_sequence_advantages():
    A = f32([1.0, -0.5, 0.0])
    got = entropy_shaped_advantages(A, EA_H, EA_M, alpha=0.4, kappa=2.0, strength=1.0)
    # row 0: cap |A|/κ = 0.5, αH = [0.2, 0.8, 0.4, ·] → bonus [0.2, 0.5, 0.4]; last token masked
    # row 1: cap 0.25, αH = [0.04, 0.4, 0.2, 0.25] → bonus [0.04, 0.25, 0.2, 0.25]
    # row 2: A = 0 → cap 0 → no bonus
    expected = f32([[1.2, 1.5, 1.4, 0.0], [-0.46, -0.25, -0.3, -0.25], [0.0, 0.0, 0.0, 0.0]])
    assert_close(got, expected)


def test_entropy_shaped_strength_scales_the_bonus():
    A = f32([1.0, -0.5, 0.0])
    got = entropy_shaped_advantages(A, EA_H, EA_M, alpha=0.4, kappa=2.0, strength=0.5)
    expected = f32([[1.1, 1.25, 1.2, 0.0], [-0.48, -0.375, -0.4, -0.375], [0.0, 0.0, 0.0, 0.0]])
    assert_close(got, expected)
    # s = 0 is plain GRPO: A broadcast and masked
    got0 = entropy_shaped_advantages(A, EA_H, EA_M, alpha=0.4, kappa=2.0, strength=0.0)
    assert_close(got0, f32([[1.0, 1.0, 1.0, 0.0], [-0.5, -0.5, -0.5, -0.5], [0.0, 0.0, 0.0, 0.0]]))


def test_entropy_shaped_other_alpha_kappa():
    A = f32([1.0, -0.5, 0.0])
    got = entropy_shaped_advantages(A, EA_H, EA_M, alpha=1.0, kappa=4.0, strength=1.0)
    # row 0: cap 0.25, αH = [0.5, 2, 1] → 0.25 each; row 1: cap 0.125, αH = [0.1, 1, 0.5, 0.625]
    expected = f32([[1.25, 1.25, 1.25, 0.0], [-0.4, -0.375, -0.375, -0.375], [0.0, 0.0, 0.0, 0.0]])
    assert_close(got, expected)


def test_entropy_shaped_token_advantages():
    A = f32([[1.0, -1.0, 0.2, 4.0], [-2.0, 0.0, 0.5, -0.1], [3.0, -3.0, 1.0, 1.0]])
    got = entropy_shaped_advantages(A, EA_H, EA_M, alpha=0.4, kappa=2.0, strength=1.0)
    # per token: cap |A_t|/2, αH_t
    # row 0: caps [0.5, 0.5, 0.1, 2.0], αH [0.2, 0.8, 0.4, 1.2] → bonus [0.2, 0.5, 0.1, (masked)]
    # row 1: caps [1.0, 0.0, 0.25, 0.05], αH [0.04, 0.4, 0.2, 0.25] → bonus [0.04, 0, 0.2, 0.05]
    # row 2: caps [1.5, 1.5, ·, ·], αH 0.8 → bonus [0.8, 0.8]; tokens 2, 3 masked
    expected = f32([[1.2, -0.5, 0.3, 0.0], [-1.96, 0.0, 0.7, -0.05], [3.8, -2.2, 0.0, 0.0]])
    assert_close(got, expected)


def test_entropy_shaped_preserves_sign_for_kappa_above_one():
    # κ > 1: A < 0 stays < 0 (|A'| ≥ |A|·(1 − 1/κ)); A > 0 only grows; huge entropies hit the cap
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 8, generator=g)
    ent = torch.rand(4, 8, generator=g) * 50.0
    mask = torch.ones(4, 8)
    for kappa in (1.5, 2.0, 4.0):
        got = entropy_shaped_advantages(A, ent, mask, alpha=0.4, kappa=kappa, strength=1.0)
        assert bool((torch.sign(got) == torch.sign(A)).all())
        assert bool((got.abs() >= A.abs() * (1 - 1 / kappa) - 1e-6).all())
        assert bool((got >= A - 1e-6).all())  # the bonus is never negative


def test_entropy_shaped_is_detached():
    ent = EA_H.clone().requires_grad_(True)
    got = entropy_shaped_advantages(f32([1.0, -0.5, 0.0]), ent, EA_M, alpha=0.4, kappa=2.0, strength=1.0)
    assert not got.requires_grad


# ===================================================================================================
# group statistics (TRL: Bessel-corrected std)


def test_group_stats():
    values = f32([1, 0, 0, 1, 1, 1, 1, 0])
    mean, std = group_stats(values, 4)
    # group 0: mean 0.5, Σ(x−x̄)² = 4·0.25 = 1 → std = √(1/3); group 1: mean 0.75, Σ = 0.75 → √0.25
    s0 = math.sqrt(1.0 / 3.0)
    assert_close(mean, f32([0.5] * 4 + [0.75] * 4))
    assert_close(std, f32([s0] * 4 + [0.5] * 4))


def test_group_stats_pairs():
    mean, std = group_stats(f32([3.0, 1.0, 2.0, 2.0]), 2)
    # (3, 1): mean 2, Σ = 2 → √2 (population std would be 1); (2, 2): std 0
    assert_close(mean, f32([2.0, 2.0, 2.0, 2.0]))
    assert_close(std, f32([math.sqrt(2.0)] * 2 + [0.0] * 2))


# ===================================================================================================
# §7 ADORA: TAS ⇔ max(len of correct) > mean(len of incorrect, non-truncated)


def test_adora_advantageous():
    G = 4
    groups = [
        # (success, lengths, truncated, expected TAS)
        ([1, 0, 0, 1], [10, 6, 8, 4], [0, 0, 0, 0], True),  # max C = 10 > mean W = 7
        ([1, 0, 0, 0], [5, 6, 8, 7], [0, 0, 0, 0], False),  # 5 > 7 is false → λ
        # no correct response: scaled by λ, as the released code (max over no correct = −inf) — the old
        # crs kept it at 1
        ([0, 0, 0, 0], [3, 4, 5, 6], [0, 0, 0, 0], False),
        (
            [0, 0, 0, 0],
            [20, 20, 20, 20],
            [1, 1, 1, 1],
            False,
        ),  # nothing correct, all truncated: −inf > −inf false
        ([0, 1, 0, 0], [20, 3, 20, 20], [1, 0, 1, 1], True),  # all wrong ones truncated: not comparable, kept
        # truncated wrong ones are excluded: 9 > (4 + 6)/2; counting the truncated 20 would give 9 > 10
        ([1, 0, 0, 0], [9, 20, 4, 6], [0, 1, 0, 0], True),
        ([1, 0, 0, 0], [6, 5, 7, 6], [0, 0, 0, 0], False),  # tie 6 > 6 is false (strict)
        ([1, 1, 1, 1], [3, 4, 5, 6], [0, 0, 0, 0], True),  # all correct: kept
    ]
    success = torch.tensor([s for g in groups for s in g[0]], dtype=torch.bool)
    lengths = torch.tensor([v for g in groups for v in g[1]])
    truncated = torch.tensor([v for g in groups for v in g[2]], dtype=torch.bool)
    got = adora_advantageous(success, lengths, truncated, G)
    expected = torch.tensor([g[3] for g in groups for _ in range(G)])
    assert got.dtype == torch.bool
    assert got.tolist() == expected.tolist()


# ===================================================================================================
# registered steps through CreditBatch


ADV = f32([1.0, -1.0, 2.0, -0.5])
MASK4 = _mask_from_lengths([5, 3, 5, 2], 5)


@pytest.mark.parametrize(
    "gamma, expected",
    [
        # p̂ = [0.5, 0.5, 0.75, 0.0] → (1 − p̂)^2 = [0.25, 0.25, 0.0625, 1]
        (2.0, [0.25, -0.25, 0.125, -0.5]),
        (1.0, [0.5, -0.5, 0.5, -0.5]),
        (0.0, [1.0, -1.0, 2.0, -0.5]),
    ],
)
def test_focal_grpo_step(gamma, expected):
    feats = {"group_success": f32([0.5, 0.5, 0.75, 0.0])}
    out = CREDIT["focal_grpo"].fn(CreditBatch(advantages=ADV, mask=MASK4, features=feats), gamma=gamma)
    assert_close(out.advantages, f32(expected))
    # per-token advantages are scaled row-wise
    tok = ADV.unsqueeze(1) * MASK4
    out2 = CREDIT["focal_grpo"].fn(CreditBatch(advantages=tok, mask=MASK4, features=feats), gamma=gamma)
    assert_close(out2.advantages, f32(expected).unsqueeze(1) * MASK4)


@pytest.mark.parametrize("lam, expected", [(0.1, [1.0, -0.1, 2.0, -0.05]), (0.3, [1.0, -0.3, 2.0, -0.15])])
def test_adora_step(lam, expected):
    feats = {"adora_tas": torch.tensor([True, False, True, False])}
    out = CREDIT["adora"].fn(CreditBatch(advantages=ADV, mask=MASK4, features=feats), lam=lam)
    assert_close(out.advantages, f32(expected))


def test_r3l_amplify_step():
    # group 0: r = [1, 0.5, 0, 0.3], mean 0.45, s = [0.55, 0.05, −0.45, −0.15]
    #   → A = [1 (r ≥ 1), 3·0.05, −0.45, −0.15]
    # group 1: r = [1.2, 0.5, 0.5, 0.2], mean 0.6, s = [0.6, −0.1, −0.1, −0.4] → [1, −0.1, −0.1, −0.4]
    # group 2: r = [0.5]·4, s = 0 → α·0 = 0
    r = f32([1.0, 0.5, 0.0, 0.3, 1.2, 0.5, 0.5, 0.2, 0.5, 0.5, 0.5, 0.5])
    gm = f32([0.45] * 4 + [0.6] * 4 + [0.5] * 4)
    feats = {"reward": r, "group_mean": gm}
    mask = torch.ones(12, 5)
    out = CREDIT["r3l_amplify"].fn(
        CreditBatch(advantages=torch.zeros(12), mask=mask, features=feats), alpha=3.0
    )
    expected = f32([1.0, 0.15, -0.45, -0.15, 1.0, -0.1, -0.1, -0.4, 0.0, 0.0, 0.0, 0.0])
    assert_close(out.advantages, expected)
    # α = 2, full_reward = 1.1: r = 1.0 is no longer "full" → 2·0.55
    out = CREDIT["r3l_amplify"].fn(
        CreditBatch(advantages=torch.zeros(12), mask=mask, features=feats), alpha=2.0, full_reward=1.1
    )
    assert_close(out.advantages[:5], f32([1.1, 0.1, -0.45, -0.15, 1.0]))


def test_r3l_amplify_token_advantages():
    feats = {"reward": f32([1.0, 0.5, 0.0, 0.3]), "group_mean": f32([0.45] * 4)}
    out = CREDIT["r3l_amplify"].fn(CreditBatch(advantages=torch.zeros(4, 5), mask=MASK4, features=feats))
    assert_close(out.advantages, f32([1.0, 0.15, -0.45, -0.15]).unsqueeze(1) * MASK4)


def test_tp_schedule_step_uses_rollout_lengths_and_keeps_mask():
    # completion mask of the micro-batch; features carry the true lengths
    mask = _mask_from_lengths([6, 4], 6)
    batch = CreditBatch(advantages=f32([1.0, -1.0]), mask=mask, features={"length": torch.tensor([6, 4])})
    out = CREDIT["tp_schedule"].fn(batch, withhold=0.5)
    # c = [3, 2]
    assert_close(out.mask, f32([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]]))
    assert_close(out.advantages, f32([1.0, -1.0]))
    with pytest.raises(ConfigError, match="reward_on"):
        CREDIT["tp_schedule"].fn(batch, withhold=0.5, reward_on="middle")


def test_tp_schedule_step_cut_uses_response_length_not_mask_sum():
    # a loss-masked hole inside the response (e.g. a tool token) does not change L_i = |o_i| = 6:
    # c = floor(6·0.5) = 3 (with the mask sum 5 it would be 2)
    mask = f32([[1, 0, 1, 1, 1, 1]])
    batch = CreditBatch(advantages=f32([1.0]), mask=mask, features={"length": torch.tensor([6])})
    out = CREDIT["tp_schedule"].fn(batch, withhold=0.5)
    assert_close(out.mask, f32([[0, 0, 0, 1, 1, 1]]))
    # without the feature the mask sum is the length
    out = CREDIT["tp_schedule"].fn(
        CreditBatch(advantages=f32([1.0]), mask=_mask_from_lengths([4], 6)), withhold=0.5
    )
    assert_close(out.mask, f32([[0, 0, 1, 1, 0, 0]]))


def test_forking_tokens_step_sets_weights_and_normaliser():
    batch = CreditBatch(advantages=f32([1.0, -1.0, 0.5]), mask=M, entropies=H)
    out = CREDIT["forking_tokens"].fn(batch, keep_fraction=0.2, selection="batch_topk", normalize="selected")
    assert_close(out.token_weights, f32([[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))
    assert out.renormalize is True
    out = CREDIT["forking_tokens"].fn(
        batch, keep_fraction=0.2, selection="batch_topk", normalize="all_tokens"
    )
    assert out.renormalize is False
    # existing weights are multiplied, not replaced
    prior = torch.full_like(M, 0.5)
    out = CREDIT["forking_tokens"].fn(
        batch.replace(token_weights=prior), keep_fraction=0.2, selection="batch_topk"
    )
    assert_close(out.token_weights, 0.5 * f32([[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]]))
    with pytest.raises(ConfigError, match="normalize"):
        CREDIT["forking_tokens"].fn(batch, normalize="tokens")


def test_entropy_adv_step_rejects_nonpositive_kappa():
    batch = CreditBatch(advantages=f32([1.0, -0.5, 0.0]), mask=EA_M, entropies=EA_H)
    with pytest.raises(ConfigError, match="kappa"):
        CREDIT["entropy_adv"].fn(batch, kappa=0.0)


# ===================================================================================================
# fold_token_weights: weights (and the selected-token normaliser) folded into advantages

FOLD_A = f32([2.0, -1.0])
FOLD_M = f32([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])  # Σ = 4, 3; total 7
FOLD_W = f32([[1, 0, 1, 0, 1], [0, 0, 1, 0, 0]])  # the padded 1 must not count: Σ(w·m) = 2, 1; total 3


def test_fold_without_renormalisation():
    for loss_type in ("grpo", "bnpo", "dapo"):
        got = fold_token_weights(FOLD_A, FOLD_W, FOLD_M, loss_type, renormalize=False)
        assert_close(got, f32([[2, 0, 2, 0, 0], [0, 0, -1, 0, 0]]))


def test_fold_grpo_per_sequence_renormalisation():
    got = fold_token_weights(FOLD_A, FOLD_W, FOLD_M, "grpo", renormalize=True)
    # row factors Σm/Σw = 4/2, 3/1
    assert_close(got, f32([[4, 0, 4, 0, 0], [0, 0, -3, 0, 0]]))
    # TRL's grpo loss averages Σ_t(A'·ℓ)/Σ_t m per row: with ℓ ∝ 1 that is the mean A over selected tokens
    assert_close(got.sum(-1) / FOLD_M.sum(-1), f32([2.0, -1.0]))


@pytest.mark.parametrize("loss_type", ["bnpo", "dapo"])
def test_fold_batch_scalar_renormalisation(loss_type):
    got = fold_token_weights(FOLD_A, FOLD_W, FOLD_M, loss_type, renormalize=True)
    # one factor for the micro-batch: Σm/Σw = 7/3
    assert_close(got, f32([[14 / 3, 0, 14 / 3, 0, 0], [0, 0, -7 / 3, 0, 0]]))
    # Σ A' / Σ m equals Σ w·A / Σ w = (2 + 2 − 1)/3
    assert_close(got.sum() / FOLD_M.sum(), torch.tensor(1.0))


def test_fold_real_weights_token_advantages_and_empty_row():
    A = f32([[1.0, 2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    w = f32([[0.5, 0.5, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    m = f32([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    # grpo: row 0 factor 4/2 = 2 → [0.5·1·2, 0.5·2·2, 1·3·2, 0, 0]; row 1 has no selected token → 0
    got = fold_token_weights(A, w, m, "grpo", renormalize=True)
    assert_close(got, f32([[1.0, 2.0, 6.0, 0.0, 0.0], [0.0] * 5]))
    # dapo: factor Σm/Σw = 6/2 = 3
    got = fold_token_weights(A, w, m, "dapo", renormalize=True)
    assert_close(got, f32([[1.5, 3.0, 9.0, 0.0, 0.0], [0.0] * 5]))
    # nothing selected anywhere → all zeros, not NaN
    got = fold_token_weights(A, torch.zeros_like(w), m, "dapo", renormalize=True)
    assert_close(got, torch.zeros(2, 5))


# ===================================================================================================
# CreditChain: validation, drive mapping, phases


@pytest.mark.parametrize(
    "credit, match",
    [
        ({"nope": {}}, "unknown step"),
        ({"focal_grpo": {"gama": 1.0}}, "unknown argument"),
        ({"tp_schedule": {"withold": 0.5}}, "unknown argument"),
        ({"focal_grpo": {"gamma": 2.0, "drive": {"knob": "beta", "neutral": 0.0}}}, "drive.knob"),
        ({"focal_grpo": {"gamma": 2.0, "drive": {"neutral": 0.0}}}, "drive"),
        ({"focal_grpo": {"gamma": 2.0, "drive": {"knob": "gamma", "neutral": 0.0, "slope": 1}}}, "drive"),
        ({"forking_tokens": {"drive": {"knob": "selection", "neutral": 1.0}}}, "numeric"),
        ({"tp_schedule": {"drive": {"knob": "reward_on", "neutral": 0.0}}}, "numeric"),
        ({"focal_grpo": {"gamma": "two", "drive": {"knob": "gamma", "neutral": 0.0}}}, "numeric"),
    ],
)
def test_chain_validation_errors(credit, match):
    with pytest.raises(ConfigError, match=match):
        CreditChain(credit)


def test_chain_empty_is_identity():
    for credit in (None, {}):
        chain = CreditChain(credit)
        assert chain.is_identity and not chain.has_mask_phase and not chain.has_advantage_phase
        assert chain.knobs(0.5) == {}


FORKING = {
    "forking_tokens": {
        "keep_fraction": 0.0,
        "selection": "per_sequence",
        "drive": {"knob": "keep_fraction", "neutral": 1.0},
    }
}


@pytest.mark.parametrize("rho, keep", [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.99, 0.01), (1.0, 0.0)])
def test_chain_drive_forking_keep_is_one_minus_rho(rho, keep):
    chain = CreditChain(FORKING)
    [(planned, args)] = chain.args_at(rho)
    assert planned.method.name == "forking_tokens"
    assert_close(args["keep_fraction"], keep, rtol=0.0, atol=1e-12)
    # undriven arguments: configured value or the step's default
    assert args["selection"] == "per_sequence" and args["normalize"] == "selected"
    assert set(chain.knobs(rho)) == {"forking_tokens/keep_fraction"}
    assert_close(chain.knobs(rho)["forking_tokens/keep_fraction"], keep, rtol=0.0, atol=1e-12)


def test_chain_drive_other_knobs():
    chain = CreditChain(
        {
            "tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}},
            "adora": {"lam": 0.1, "drive": {"knob": "lam", "neutral": 1.0}},
            # neutral omitted → 0
            "focal_grpo": {"gamma": 2.0, "drive": {"knob": "gamma"}},
            "entropy_adv": {"alpha": 0.4},  # not driven
        }
    )
    knobs = chain.knobs(0.5)
    assert set(knobs) == {"tp_schedule/withhold", "adora/lam", "focal_grpo/gamma"}
    assert_close(knobs["tp_schedule/withhold"], 0.5, rtol=0.0, atol=1e-12)
    assert_close(knobs["adora/lam"], 0.55, rtol=0.0, atol=1e-12)  # 1 + (0.1 − 1)·0.5
    assert_close(knobs["focal_grpo/gamma"], 1.0, rtol=0.0, atol=1e-12)
    args = dict((p.method.name, a) for p, a in chain.args_at(0.5))
    assert args["entropy_adv"] == {"alpha": 0.4, "kappa": 2.0, "strength": 1.0}
    # steps keep config order
    assert [p.method.name for p, _ in chain.args_at(0.5)] == [
        "tp_schedule",
        "adora",
        "focal_grpo",
        "entropy_adv",
    ]
    assert chain.features == {"adora_tas", "group_success"}
    assert chain.has_mask_phase and chain.has_advantage_phase


def test_chain_verifier_cut():
    chain = CreditChain(
        {"tp_schedule": {"withhold": 1.0, "reward_on": "suffix", "drive": {"knob": "withhold"}}}
    )
    assert_close(chain.verifier_cut(0.3), 0.3, rtol=0.0, atol=1e-12)
    # suffix is the default (the released code); full never cuts
    assert (
        CreditChain({"tp_schedule": {"withhold": 1.0}}).verifier_cut(0.3) == 1.0
    )  # undriven: the value itself
    driven = {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}
    assert_close(CreditChain({"tp_schedule": driven}).verifier_cut(0.3), 0.3, rtol=0.0, atol=1e-12)
    assert CreditChain({"tp_schedule": {"withhold": 1.0, "reward_on": "full"}}).verifier_cut(0.3) is None


CHAIN = {
    "tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}},
    "entropy_adv": {
        "alpha": 0.4,
        "kappa": 2.0,
        "strength": 1.0,
        "drive": {"knob": "strength", "neutral": 0.0},
    },
    "focal_grpo": {"gamma": 2.0, "drive": {"knob": "gamma", "neutral": 0.0}},
}
# two completions of lengths 6 and 4 from two groups; the prefix carries large entropies that the TP
# mask must hide from the entropy bonus
CH_MASK = _mask_from_lengths([6, 4], 6)
CH_H = f32([[9.0, 9.0, 9.0, 0.5, 2.0, 1.0], [9.0, 9.0, 0.5, 1.0, 9.0, 9.0]])
CH_FEATS = {"length": torch.tensor([6, 4]), "group_success": f32([0.5, 0.25])}
CH_A = f32([1.0, -1.0])


def _run_chain(credit, rho):
    chain = CreditChain(credit)
    batch = CreditBatch(advantages=CH_A, mask=CH_MASK, features=CH_FEATS)
    mask = chain.mask_phase(batch, rho)
    out = chain.advantage_phase(batch.replace(mask=mask, entropies=CH_H), rho)
    return mask, out


def test_chain_phases_tp_entropy_focal():
    # ρ = 0.5 → withhold 0.5, strength 0.5, γ = 1
    mask, out = _run_chain(CHAIN, 0.5)
    # TP: c = [3, 2]
    assert_close(mask, f32([[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]]))
    # entropy_adv: row 0 A = 1, cap 0.5, αH = [0.2, 0.8, 0.4] → 1 + 0.5·[0.2, 0.5, 0.4] = [1.1, 1.25, 1.2]
    #              row 1 A = −1, cap 0.5, αH = [0.2, 0.4] → −1 + 0.5·[0.2, 0.4] = [−0.9, −0.8]
    # focal γ = 1: × (1 − 0.5) = 0.5 and × (1 − 0.25) = 0.75
    expected = f32([[0, 0, 0, 0.55, 0.625, 0.6], [0, 0, -0.675, -0.6, 0, 0]])
    assert_close(out.advantages, expected)
    assert_close(out.mask, mask)


def test_chain_phases_order_matters():
    # focal first: A = [0.5, −0.75] → caps [0.25, 0.375]
    #   row 0: 0.5 + 0.5·[0.2, 0.25, 0.25] = [0.6, 0.625, 0.625]
    #   row 1: −0.75 + 0.5·[0.2, 0.375] = [−0.65, −0.5625]
    reordered = {k: CHAIN[k] for k in ("tp_schedule", "focal_grpo", "entropy_adv")}
    _, out = _run_chain(reordered, 0.5)
    assert_close(out.advantages, f32([[0, 0, 0, 0.6, 0.625, 0.625], [0, 0, -0.65, -0.5625, 0, 0]]))


def test_chain_phases_rho_zero_is_grpo():
    mask, out = _run_chain(CHAIN, 0.0)
    assert_close(mask, CH_MASK)
    assert_close(out.advantages, f32([[1, 1, 1, 1, 1, 1], [-1, -1, -1, -1, 0, 0]]))


def test_chain_phases_rho_one_full_strength():
    # withhold 1 → last token only; strength 1; γ = 2
    mask, out = _run_chain(CHAIN, 1.0)
    assert_close(mask, f32([[0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]))
    # row 0: (1 + min(0.4, 0.5))·0.25 = 0.35; row 1: (−1 + min(0.4, 0.5))·0.5625 = −0.3375
    assert_close(out.advantages, f32([[0, 0, 0, 0, 0, 0.35], [0, 0, 0, -0.3375, 0, 0]]))


def test_chain_mask_phase_leaves_advantages_and_advantage_phase_leaves_mask():
    chain = CreditChain(CHAIN)
    batch = CreditBatch(advantages=CH_A, mask=CH_MASK, features=CH_FEATS, entropies=CH_H)
    out = chain.advantage_phase(batch, 0.5)  # mask phase not run: the full completion mask stays
    assert_close(out.mask, CH_MASK)
    # row 0: (1 + 0.5·min(0.4·[9, 9, 9, 0.5, 2, 1], 0.5))·0.5
    assert_close(out.advantages[0], f32([0.625, 0.625, 0.625, 0.55, 0.625, 0.6]))
    with pytest.raises(RuntimeError, match="entropies"):
        chain.advantage_phase(batch.replace(entropies=None), 0.5)


def test_chain_forking_then_fold():
    # scheduled forking tokens at ρ = 0.5: keep 0.5, per_sequence k = [3, 2, 3] (see test_top_entropy_per_sequence)
    chain = CreditChain(FORKING)
    batch = CreditBatch(advantages=f32([1.0, -1.0, 0.5]), mask=M, entropies=H)
    out = chain.advantage_phase(batch, 0.5)
    sel = f32([[0, 1, 1, 0, 1, 0], [1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 1]])
    assert_close(out.token_weights, sel)
    assert out.renormalize is True
    # dapo: Σm/Σw = 14/8 = 1.75
    folded = fold_token_weights(out.advantages, out.token_weights, out.mask, "dapo", out.renormalize)
    assert_close(folded, f32([1.75, -1.75, 0.875]).unsqueeze(1) * sel)


# ===================================================================================================
# rollout features on a gathered batch (N = 8, G = 4)


def test_rollout_features():
    rewards = f32([1.0, 0.0, 0.0, 0.0, 1.0, 0.5, 1.0, 0.0])
    success = torch.tensor([1, 0, 0, 0, 1, 0, 1, 0], dtype=torch.bool)
    lengths = torch.tensor([12, 7, 9, 30, 5, 8, 6, 30])
    truncated = torch.tensor([0, 0, 0, 1, 0, 0, 0, 1], dtype=torch.bool)

    feats = rollout_features(rewards, success, lengths, truncated, 4, set())
    assert set(feats) == {
        "reward",
        "group_mean",
        "group_std",
        "group_success",
        "success",
        "length",
        "truncated",
    }

    feats = rollout_features(rewards, success, lengths, truncated, 4, {"adora_tas"})
    assert set(feats) == {
        "reward",
        "group_mean",
        "group_std",
        "group_success",
        "success",
        "length",
        "truncated",
        "adora_tas",
    }
    assert_close(feats["reward"], rewards)
    # group 0: mean 0.25, Σ(x−x̄)² = 0.5625 + 3·0.0625 = 0.75 → std √(0.75/3) = 0.5
    # group 1: mean 0.625, Σ = 0.140625 + 0.015625 + 0.140625 + 0.390625 = 0.6875 → std √(0.6875/3)
    assert_close(feats["group_mean"], f32([0.25] * 4 + [0.625] * 4))
    assert_close(feats["group_std"], f32([0.5] * 4 + [math.sqrt(0.6875 / 3)] * 4))
    # success rates 1/4 and 2/4 (from the verdicts, not the rewards)
    assert_close(feats["group_success"], f32([0.25] * 4 + [0.5] * 4))
    assert feats["success"].dtype == torch.bool and feats["success"].tolist() == success.tolist()
    assert feats["length"].dtype == torch.long and feats["length"].tolist() == [12, 7, 9, 30, 5, 8, 6, 30]
    assert feats["truncated"].dtype == torch.bool and feats["truncated"].tolist() == truncated.tolist()
    # ADORA: group 0: max C = 12 > mean(7, 9) = 8 (30 is truncated) → TAS
    #        group 1: max C = 6 > mean(8) = 8 is false → TDS
    assert feats["adora_tas"].tolist() == [True] * 4 + [False] * 4


@pytest.mark.parametrize(
    "method", ["tp_schedule", "forking_tokens", "entropy_adv", "focal_grpo", "adora", "pure"]
)
def test_building_a_chain_leaves_the_run_rng_alone(method):
    """Validating a method (its dry run on a synthetic batch) must not draw from torch's global RNG: with
    the same seed every grid cell then starts from the same evaluation samples and first rollout (paired
    cells; the bifurcation_big sweep showed GRPO — the one method without a dry run — starting 0.04 lower
    than all others from this alone). Planted bug: the dry run's ``torch.rand`` without a generator."""
    from crs.cli import compose

    torch.manual_seed(123)
    before = torch.get_rng_state()
    CreditChain(compose([f"method={method}"]).method.credit)
    assert torch.equal(torch.get_rng_state(), before)
