"""Golden tests of the turn-level methods on hand-made trajectories and numbers (crs/envs/*)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crs.envs.base import StepRecord
from crs.envs.turns import (
    TurnBatch,
    broadcast_turns,
    build_turn_batch,
    discounted_returns,
    grouped_norm,
    steps_to_turns,
    turn_index,
)
from crs.methods.gigpo import gigpo_advantages
from crs.methods.matchtir import assign, call_similarity, match_rewards, matchtir_advantages, turn_rewards


def _turns(anchors, rewards, valid=None, outcome=None, group_size=2, calls=None, gold=None, success=None):
    """TurnBatch from ragged python lists (anchors are strings)."""
    N = len(anchors)
    K = max(len(a) for a in anchors)
    ids: dict[str, int] = {}
    tm = torch.zeros(N, K)
    r = torch.zeros(N, K)
    v = torch.ones(N, K)
    an = torch.full((N, K), -1, dtype=torch.long)
    for i in range(N):
        for k, a in enumerate(anchors[i]):
            tm[i, k] = 1
            r[i, k] = rewards[i][k]
            an[i, k] = ids.setdefault(a, len(ids))
            if valid is not None:
                v[i, k] = valid[i][k]
    return TurnBatch(
        group=torch.arange(N) // group_size,
        turn_mask=tm,
        reward=r,
        valid=v,
        has_call=tm.clone(),
        anchor=an,
        outcome=torch.tensor(
            outcome if outcome is not None else [sum(x) for x in rewards], dtype=torch.float32
        ),
        success=torch.tensor(success if success is not None else [False] * N),
        calls=calls or [],
        gold_calls=gold or [[] for _ in range(N)],
    )


# ------------------------------------------------------------------------------------------ layout


def test_turn_index_and_broadcast():
    m = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 1, 1, 0, 0, 0, 0]])
    ti = turn_index(m)
    assert ti.tolist() == [[0, 0, -1, -1, 1, -1, 2, 2], [0, -1, 1, 1, -1, -1, -1, -1]]
    vals = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    assert broadcast_turns(vals, ti).tolist() == [[1, 1, 0, 0, 2, 0, 3, 3], [4, 0, 5, 5, 0, 0, 0, 0]]
    assert broadcast_turns(vals, ti, fill=1.0)[0, 2].item() == 1.0


def test_steps_to_turns_several_calls_per_turn():
    msgs = [
        {"role": "assistant"},
        {"role": "tool"},
        {"role": "tool"},
        {"role": "assistant"},
        {"role": "tool"},
        {"role": "assistant"},
    ]
    assert steps_to_turns(msgs) == [0, 0, 1]


def test_build_turn_batch_anchors_rewards_validity():
    s = lambda a, r, ok=True: StepRecord(a, "move", {"direction": "up"}, ok, r)  # noqa: E731
    rows = [
        {
            "n_turns": 3,
            "steps": [s("A", -0.1), s("B", 0.9)],
            "step_turns": [0, 1],
            "final_anchor": "G",
            "outcome": 0.8,
            "success": True,
        },
        # two calls in turn 0 (summed, validity ANDed, anchor = the first call's)
        {
            "n_turns": 2,
            "steps": [s("A", -0.1), s("C", -0.1, False)],
            "step_turns": [0, 0],
            "final_anchor": "C",
            "outcome": -0.2,
            "success": False,
        },
    ]
    tb = build_turn_batch(rows, group_size=2)
    assert tb.turn_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert torch.allclose(tb.reward, torch.tensor([[-0.1, 0.9, 0.0], [-0.2, 0.0, 0.0]]))
    assert tb.valid.tolist() == [[1, 1, 1], [0, 1, 1]]
    assert tb.has_call.tolist() == [[1, 1, 0], [1, 0, 0]]
    a = tb.anchor
    assert a[0, 0] == a[1, 0]  # both acted on "A"
    assert a[0, 2] != a[1, 1]  # "G" vs "C" (text turns take the final observation)
    assert [len(t) for t in tb.calls[1]] == [2, 0]


def test_grouped_norm_singletons_and_modes():
    x = torch.tensor([1.0, 3.0, 5.0, 7.0])
    keys = torch.tensor([0, 0, 1, 2])
    valid = torch.ones(4)
    assert grouped_norm(x, keys, valid, "mean_norm", singleton="zero").tolist() == [-1.0, 1.0, 0.0, 0.0]
    assert grouped_norm(x, keys, valid, "mean_norm", singleton="raw").tolist() == [-1.0, 1.0, 5.0, 7.0]
    sd = math.sqrt(2.0)  # unbiased std of (1, 3)
    out = grouped_norm(x, keys, valid, "mean_std_norm", singleton="zero")
    assert out[0].item() == pytest.approx(-1 / (sd + 1e-6))


def test_discounted_returns():
    r = torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, 0.0]])
    m = torch.tensor([[1.0, 1, 1], [1, 1, 0]])
    G = discounted_returns(r, m, 0.5)
    assert torch.allclose(G, torch.tensor([[0.25, 0.5, 1.0], [2.0, 2.0, 0.0]]))


# ------------------------------------------------------------------------------------------- GiGPO

# one task, two rollouts: ep0 visits A, B, C and reaches the goal (r = 1 at its last turn); ep1 visits
# A, D and fails. Only A is a shared anchor state.
ANCHORS = [["A", "B", "C"], ["A", "D"]]
REWARDS = [[0.0, 0.0, 1.0], [0.0, 0.0]]


def test_gigpo_two_levels_mean_norm():
    tb = _turns(ANCHORS, REWARDS)
    A, A_E, A_S = gigpo_advantages(
        tb, omega=1.0, gamma=0.5, mode="mean_norm", episode_stats="steps", invalid_penalty=0.0
    )
    # episode: scores over all 5 units (1,1,1,0,0), mean 0.6
    assert torch.allclose(A_E, torch.tensor([[0.4, 0.4, 0.4], [-0.6, -0.6, 0.0]]), atol=1e-6)
    # steps: G = (0.25, 0.5, 1) and (0, 0); anchor A = {0.25, 0} -> ±0.125; singletons -> 0
    assert torch.allclose(A_S, torch.tensor([[0.125, 0.0, 0.0], [-0.125, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(A, torch.tensor([[0.525, 0.4, 0.4], [-0.725, -0.6, 0.0]]), atol=1e-6)
    A2, _, _ = gigpo_advantages(tb, omega=2.0, gamma=0.5, mode="mean_norm", invalid_penalty=0.0)
    assert A2[0, 0].item() == pytest.approx(0.4 + 2 * 0.125)


def test_gigpo_mean_std_norm_and_trajectory_stats():
    tb = _turns(ANCHORS, REWARDS)
    A, A_E, A_S = gigpo_advantages(tb, omega=1.0, gamma=0.5, mode="mean_std_norm", invalid_penalty=0.0)
    sd_e = math.sqrt(0.3)  # unbiased std of (1,1,1,0,0)
    assert A_E[0, 0].item() == pytest.approx(0.4 / (sd_e + 1e-6), rel=1e-5)
    assert A_E[1, 0].item() == pytest.approx(-0.6 / (sd_e + 1e-6), rel=1e-5)
    sd_a = math.sqrt(0.03125)  # unbiased std of (0.25, 0)
    assert A_S[0, 0].item() == pytest.approx(0.125 / (sd_a + 1e-6), rel=1e-5)
    _, A_E_t, _ = gigpo_advantages(
        tb, gamma=0.5, mode="mean_norm", episode_stats="trajectories", invalid_penalty=0.0
    )
    assert torch.allclose(A_E_t, torch.tensor([[0.5, 0.5, 0.5], [-0.5, -0.5, 0.0]]))


def test_gigpo_invalid_penalty_after_discounting():
    tb = _turns(ANCHORS, REWARDS, valid=[[1, 1, 1], [1, 0]])
    _, A_E, A_S = gigpo_advantages(tb, gamma=0.5, mode="mean_norm", invalid_penalty=0.1)
    # ep1's turn 1 is invalid: its return -0.1 (not discounted back to turn 0, whose G stays 0) and its
    # episode score 0 - 0.1; episode mean = (3 - 0.1)/5 = 0.58
    assert A_E[1, 1].item() == pytest.approx(-0.1 - 0.58)
    assert A_E[1, 0].item() == pytest.approx(-0.58)
    assert A_S[1, 0].item() == pytest.approx(-0.125)  # G of turn 0 unchanged


def test_gigpo_anchor_groups_do_not_cross_tasks():
    # two tasks (group_size=1 each) that both see "A": singleton task groups -> A^S = 0, A^E = raw score
    tb = _turns([["A"], ["A"]], [[1.0], [0.0]], group_size=1)
    A, A_E, A_S = gigpo_advantages(tb, gamma=0.95, mode="mean_norm", invalid_penalty=0.0)
    assert A_S.abs().sum() == 0
    assert A_E.tolist() == [[1.0], [0.0]]


# ----------------------------------------------------------------------------------------- MatchTIR


def _c(name, **args):
    return {"name": name, "arguments": args}


def test_call_similarity():
    g = _c("add", a=3, b=4)
    assert call_similarity(("add", {"a": 3, "b": 4}), g) == pytest.approx(1.0)
    assert call_similarity(("ADD", {"a": 3, "b": 5}), g) == pytest.approx(3 / 4)  # names compared lowercased
    assert call_similarity(("sub", {"a": 3, "b": 4}), g) == 0.0
    # missing parameter: J = 1/(2+1-1) = 0.5, one value right -> (1 + 0.5 + 1)/4
    assert call_similarity(("add", {"a": 3}), g) == pytest.approx(2.5 / 4)
    # same names in another order: lists differ -> multiset Jaccard 1.0 via the intersection
    assert call_similarity(("add", {"b": 4, "a": 3}), g) == pytest.approx(1.0)


def test_hard_matching_duplicates_and_unmatched():
    gold = [_c("add", a=3, b=4), _c("sub", a=7, b=2)]
    pred = [
        ("add", {"a": 3, "b": 4}),
        ("add", {"a": 3, "b": 4}),
        ("sub", {"a": 7, "b": 1}),
        ("mul", {"a": 1, "b": 1}),
    ]
    # the duplicate gets nothing (each gold call is matched once), mul matches nothing
    assert match_rewards(pred, gold) == pytest.approx([1.0, 0.0, 0.75, 0.0])
    assert match_rewards(pred, gold, unmatched_penalty=-0.5) == pytest.approx([1.0, -0.5, 0.75, -0.5])
    assert match_rewards(pred, gold, assignment="greedy") == pytest.approx([1.0, 0.0, 0.75, 0.0])
    assert match_rewards(pred, []) == [0.0] * 4
    assert match_rewards([], gold) == []


def test_hungarian_vs_greedy():
    S = np.array([[1.0, 0.9], [0.9, 0.26]])
    assert assign(S, "greedy") == pytest.approx([1.0, 0.26])  # greedy takes the best pair first
    assert assign(S, "hungarian") == pytest.approx([0.9, 0.9])  # maximal total 1.8 > 1.26


def test_soft_matching_sinkhorn():
    gold = [_c("add", a=3, b=4), _c("sub", a=7, b=2)]
    pred = [("add", {"a": 3, "b": 4}), ("sub", {"a": 7, "b": 2})]
    r = match_rewards(pred, gold, kind="soft", reg=0.1)
    # transport rows sum to 1/P; with a near-diagonal plan each call earns ≈ S_ii/P = 0.5
    assert r == pytest.approx([0.5, 0.5], abs=1e-3)
    assert sum(match_rewards(pred[:1] * 2, gold, kind="soft")) < sum(r)  # a duplicate earns less


def test_matchtir_turn_rewards_and_dual_advantage():
    gold = [_c("add", a=3, b=4), _c("sub", a=7, b=2)]
    calls = [
        # ep0: add(3,4) | add(3,4) duplicate + sub(7,1) in one turn | answer (right)
        [[("add", {"a": 3, "b": 4})], [("add", {"a": 3, "b": 4}), ("sub", {"a": 7, "b": 1})], []],
        # ep1: sub(7,2) | answer (wrong)
        [[("sub", {"a": 7, "b": 2})], []],
    ]
    tb = _turns(
        [["x", "y", "z"], ["x", "w"]],
        [[0, 0, 0], [0, 0]],
        calls=calls,
        gold=[gold, gold],
        success=[True, False],
    )
    r = turn_rewards(tb)
    assert torch.allclose(r, torch.tensor([[1.0, 0.375, 1.0], [1.0, 0.0, 0.0]]))
    A, _ = matchtir_advantages(tb, lam=0.9)
    R = torch.tensor([2.375, 1.0])
    a_traj = (R - R.mean()) / (R.std() + 1e-6)
    G0 = torch.tensor([1.0 + 0.9 * (0.375 + 0.9 * 1.0), 0.375 + 0.9, 1.0])
    G1 = torch.tensor([1.0, 0.0])
    # turn groups (prompt, turn index): turns 0 and 1 have two members, turn 2 is a singleton (raw G)
    t0 = (torch.tensor([G0[0], G1[0]]) - (G0[0] + G1[0]) / 2) / (torch.tensor([G0[0], G1[0]]).std() + 1e-6)
    t1 = (torch.tensor([G0[1], G1[1]]) - (G0[1] + G1[1]) / 2) / (torch.tensor([G0[1], G1[1]]).std() + 1e-6)
    exp = torch.tensor(
        [
            [(a_traj[0] + t0[0]) / 2, (a_traj[0] + t1[0]) / 2, (a_traj[0] + G0[2]) / 2],
            [(a_traj[1] + t0[1]) / 2, (a_traj[1] + t1[1]) / 2, 0.0],
        ]
    )
    assert torch.allclose(A, exp, atol=1e-5)


# ------------------------------------------------------------------------------------------ A²TGPO


def test_a2tgpo_turn_group_norm_accumulation_and_clip():
    from crs.methods.a2tgpo import (
        a2tgpo_advantages,
        clip_scale,
        rescaled_accumulation,
        turn_group_norm,
        turn_positions,
    )

    # one prompt, two rollouts. ep0: tool, tool, answer; ep1: tool, answer (turn index groups {0: both}, {1: ep0})
    tb = _turns([["a", "b", "c"], ["a", "d"]], [[0, 0, 0], [0, 0]], outcome=[1.0, 0.0])
    tb.has_call = torch.tensor([[1.0, 1, 0], [1, 0, 0]])
    assert turn_positions(tb).tolist() == [[0, 1, -1], [0, -1, -1]]
    ig = torch.tensor([[0.5, 0.2, 0.0], [-0.1, 0.0, 0.0]])
    ig_hat = turn_group_norm(ig, tb)
    # group t=0: (0.5, -0.1): mean 0.2, population std 0.3 -> ±1 ; group t=1 is a singleton -> 0
    assert ig_hat[0, 0].item() == pytest.approx(0.3 / (math.sqrt(0.09 + 1e-8) + 1e-6), rel=1e-5)
    assert ig_hat[1, 0].item() == pytest.approx(-ig_hat[0, 0].item())
    assert ig_hat[0, 1].item() == 0.0
    h = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])
    D, n = rescaled_accumulation(h, tb, gamma=0.5)
    assert D.tolist() == [[1.0 + 0.5 * 2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
    assert n.tolist() == [[2.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert clip_scale(torch.tensor([0.0]), 0.3).item() == pytest.approx(1.0)
    assert clip_scale(torch.tensor([100.0]), 0.3).item() == pytest.approx(1.3)
    assert clip_scale(torch.tensor([-100.0]), 0.3).item() == pytest.approx(0.7)
    A, c, ih = a2tgpo_advantages(tb, ig, gamma=1.0, alpha=0.3, beta=0.3)
    r_hat = 0.5 / (math.sqrt(0.25 + 1e-8) + 1e-6)  # outcome (1, 0) z-scored
    x = ih[0, 0].item()
    assert A[0, 0].item() == pytest.approx(r_hat + 0.3 * (x + 0.0) / math.sqrt(2), rel=1e-5)
    assert A[0, 1].item() == pytest.approx(r_hat, rel=1e-5)  # singleton turn group: îg = 0
    assert A[0, 2].item() == pytest.approx(r_hat, rel=1e-5)  # answer turn: outcome only
    assert A[1, 0].item() == pytest.approx(-r_hat + 0.3 * (-x) / 1.0, rel=1e-5)
    assert c[0, 0].item() == pytest.approx(1 + 0.3 * (2 * torch.sigmoid(torch.tensor(x)).item() - 1))
    assert c[0, 2].item() == 1.0 and c[1, 1].item() == 1.0  # answer turns keep the base range


# --------------------------------------------------------------------------------------------- R³L


def test_r3l_pivot_mask_trains_only_the_diverging_suffix():
    from crs.methods.r3l.masks import pivot_suffix_mask, pivot_token_mask

    # first attempt and retry share turn 0 (pivot = 1): turn 0 is masked in BOTH, tool tokens stay 0
    first = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 1, 0]])
    retry = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1, 1]])
    both = torch.cat([first, retry])
    out = pivot_suffix_mask(both, torch.tensor([1, 1]))
    assert out.tolist() == [[0, 0, 0, 0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 1, 0, 1, 1, 1]]
    assert pivot_suffix_mask(both, torch.tensor([0, 2])).tolist() == [
        [1, 1, 0, 0, 1, 1, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 1],
    ]
    assert pivot_suffix_mask(first, torch.tensor([9])).sum() == 0
    assert pivot_token_mask(torch.tensor([[1, 1, 1, 1, 0]]), torch.tensor([2])).tolist() == [[0, 0, 1, 1, 0]]


def test_gigpo_anchor_groups_of_several_ids_do_not_cross_tasks():
    # task 0 = (ep0 at A, ep1 at B), task 1 = (ep2 at A, ep3 at A): the only anchor group is task 1's A
    # (ids A=0, B=1). A key that does not separate tasks by the number of ids would merge task 0's B
    # with task 1's A: [0, -1/3, 2/3, -1/3] instead of [0, 0, 0.5, -0.5].
    tb = _turns([["A"], ["B"], ["A"], ["A"]], [[1.0], [0.0], [1.0], [0.0]], group_size=2)
    _, _, A_S = gigpo_advantages(tb, gamma=0.95, mode="mean_norm", invalid_penalty=0.0)
    assert torch.allclose(A_S, torch.tensor([[0.0], [0.0], [0.5], [-0.5]]), atol=1e-6)
    # three ids, two tasks: task 0 = (A, B, C) all singletons, task 1 = (C, C, A): C pairs inside task 1 only
    tb = _turns(
        [["A"], ["B"], ["C"], ["C"], ["C"], ["A"]], [[1.0], [2.0], [3.0], [4.0], [0.0], [5.0]], group_size=3
    )
    _, _, A_S = gigpo_advantages(tb, gamma=0.95, mode="mean_norm", invalid_penalty=0.0)
    assert torch.allclose(A_S, torch.tensor([[0.0], [0.0], [0.0], [2.0], [-2.0], [0.0]]), atol=1e-6)
