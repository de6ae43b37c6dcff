"""Exact cases for crs/credit/primitives.py written to kill its surviving mutants (docs/mutation.md).

Groups of one (``group_stats``' zero std, ADORA's row indexing), zero-length correct answers (ADORA's
``mean_neg`` for a group without countable wrong answers), ``sapo``'s per-sequence renormalisation and
weights summing to less than one (``fold_token_weights``' clamp and its dapo branch).

    python -m pytest tests/test_mutants_credit.py -q
    make mutation MODULE=crs/credit/primitives.py
"""

from __future__ import annotations

import torch
from torch.testing import assert_close

from crs.credit.primitives import adora_advantageous, fold_token_weights, group_stats


def test_group_stats_of_groups_of_one_has_zero_std():
    mean, std = group_stats(torch.tensor([1.0, 3.0]), 1)
    assert_close(mean, torch.tensor([1.0, 3.0]))
    assert_close(std, torch.zeros(2))


def test_group_stats_is_bessel_corrected():
    mean, std = group_stats(torch.tensor([0.0, 2.0, 4.0, 4.0]), 2)
    assert_close(mean, torch.tensor([1.0, 1.0, 4.0, 4.0]))
    assert_close(std, torch.tensor([2**0.5, 2**0.5, 0.0, 0.0]))


def test_adora_groups_of_one():
    got = adora_advantageous(torch.tensor([1, 0]), torch.tensor([5, 3]), torch.tensor([0, 0]), 1)
    # a lone correct answer: no wrong ones -> mean_neg = -inf -> advantageous; a lone wrong one: not
    assert got.tolist() == [True, False]


def test_adora_without_countable_wrong_answers_is_advantageous_even_at_length_zero():
    # correct answer of length 0, the wrong one truncated: mean_neg = -inf, 0 > -inf
    got = adora_advantageous(torch.tensor([1, 0]), torch.tensor([0, 9]), torch.tensor([0, 1]), 2)
    assert got.tolist() == [True, True]


def test_fold_sapo_renormalises_per_sequence_like_grpo():
    adv = torch.tensor([1.0, 2.0])
    w = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    mask = torch.ones(2, 3)
    for lt in ("grpo", "sapo"):
        out = fold_token_weights(adv, w, mask, lt, True)
        assert_close(out, torch.tensor([[3.0, 0.0, 0.0], [3.0, 3.0, 0.0]]))
    # dapo: one factor for the micro-batch (6 tokens / 3 selected)
    assert_close(fold_token_weights(adv, w, mask, "dapo", True), torch.tensor([[2.0, 0, 0], [4.0, 4.0, 0]]))


def test_fold_small_weights_are_not_clamped_to_one():
    adv = torch.tensor([1.0])
    w = torch.tensor([[0.25, 0.25]])  # Σw = 0.5 < 1
    mask = torch.ones(1, 2)
    # Σ mask / Σ w = 4: each token gets 0.25·4 = 1
    assert_close(fold_token_weights(adv, w, mask, "grpo", True), torch.tensor([[1.0, 1.0]]))
    assert_close(fold_token_weights(adv, w, mask, "dapo", True), torch.tensor([[1.0, 1.0]]))
    assert_close(fold_token_weights(adv, torch.zeros(1, 2), mask, "dapo", True), torch.zeros(1, 2))


def test_top_entropy_mask_defaults_to_per_sequence():
    from crs.credit.primitives import top_entropy_mask

    H = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    mask = torch.ones(2, 4)
    got = top_entropy_mask(H, mask, 0.25)
    assert_close(got, top_entropy_mask(H, mask, 0.25, "per_sequence"))
    assert_close(got, torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]]))


def test_batch_topk_keeps_at_least_one_and_only_the_top():
    from crs.credit.primitives import top_entropy_mask

    H = torch.tensor([[4.0, 1.0, 3.0, 2.0]])
    # int(4·0.01 + 0.9999) = 1 token: the highest only
    assert_close(top_entropy_mask(H, torch.ones(1, 4), 0.01, "batch_topk"), torch.tensor([[1.0, 0, 0, 0]]))


def test_register_feature_keeps_the_function_and_rollout_features_call_it():
    from crs.credit.features import FEATURES, register_feature, rollout_features

    def width(base, group_size):
        return base["length"] * group_size

    try:
        assert register_feature("test_width")(width) is width
        assert FEATURES["test_width"] is width
        out = rollout_features(
            torch.tensor([1.0, 0.0]),
            torch.tensor([1, 0]),
            torch.tensor([3, 5]),
            torch.tensor([0, 0]),
            2,
            {"test_width"},
        )
        assert out["test_width"].tolist() == [6, 10]
    finally:
        FEATURES.pop("test_width", None)
