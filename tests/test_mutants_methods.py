"""Exact cases for the credit methods (crs/methods/*.py) written to kill their surviving mutants
(docs/mutation.md): each method's step called with its *own* defaults (the paper's values, which
``Method.defaults`` and the ``--help`` text advertise), the boundaries of its checks, and the inputs the
broader golden tests leave out (groups of other tasks, invalid/padded steps, later turns). Values are
worked by hand from the formulas in the module docstrings and /work/shared/docs/methods*.md.

    python -m pytest tests/test_mutants_methods.py -q
    make mutation MODULE=crs/methods/adora.py
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from crs.credit.method import CreditBatch
from crs.errors import ConfigError


def _batch(adv, mask=None, **kw) -> CreditBatch:
    adv = torch.as_tensor(adv, dtype=torch.float32)
    if mask is None:
        mask = torch.ones(adv.shape[0], kw.pop("T", 2))
    return CreditBatch(advantages=adv, mask=torch.as_tensor(mask, dtype=torch.float32), **kw)


# -- token and group methods: the defaults are the papers' values ------------------------------------


def test_adora_default_lambda_is_0_1():
    from crs.methods.adora import adora

    b = _batch([1.0, 2.0], features={"adora_tas": torch.tensor([True, False])})
    out = adora(b).advantages
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([1.0, 0.2]))  # A·1 for advantageous, A·λ = 2·0.1 for the other


def test_entropy_adv_defaults_alpha_0_4_kappa_2_strength_1():
    from crs.methods.entropy_adv import entropy_adv

    # A = 1: token 0 bonus min(0.4·0.5, 1/2) = 0.2; token 1 min(0.4·5, 1/2) = 0.5 (the κ clip)
    b = _batch([1.0], entropies=torch.tensor([[0.5, 5.0]]))
    assert_close(entropy_adv(b).advantages, torch.tensor([[1.2, 1.5]]))


def test_entropy_adv_accepts_any_positive_kappa():
    from crs.methods.entropy_adv import entropy_adv

    b = _batch([1.0], entropies=torch.tensor([[0.5, 5.0]]))
    # κ = 0.5 is allowed (range (0, inf)): clip |A|/κ = 2 -> bonuses 0.2 and 2
    assert_close(entropy_adv(b, kappa=0.5).advantages, torch.tensor([[1.2, 3.0]]))
    with pytest.raises(ConfigError, match="kappa must be > 0"):
        entropy_adv(b, kappa=0.0)


def test_focal_grpo_default_gamma_is_2():
    from crs.methods.focal_grpo import focal_grpo

    b = _batch([1.0, -2.0], features={"group_success": torch.tensor([0.5, 0.75])})
    assert_close(focal_grpo(b).advantages, torch.tensor([0.25, -0.125]))  # (1−p)²: 0.25, 0.0625


def test_forking_tokens_defaults_keep_0_2_batch_topk():
    from crs.methods.forking_tokens import forking_tokens

    # 10 valid tokens: batch_topk keeps max(1, int(10·0.2 + 0.9999)) = 2 over the micro-batch — both in
    # row 0 (per_sequence would keep one per row)
    H = torch.tensor([[5.0, 6.0, 7.0, 8.0, 9.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    out = forking_tokens(_batch([1.0, 1.0], T=5, entropies=H))
    assert_close(out.token_weights, torch.tensor([[0, 0, 0, 1.0, 1.0], [0, 0, 0, 0, 0.0]]))
    assert out.renormalize is True


# -- OPRL / iStar: the step, its config check, the rollout-time producer --------------------------------


def test_oprl_defaults_w_1_batch_max_and_the_fallbacks():
    from crs.methods.oprl import oprl

    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    tok = torch.tensor([[0.5, -1.0, 9.0], [2.0, 0.0, -0.5]], dtype=torch.float64)
    b = _batch([1.0, -1.0], mask, features={"oprl_step_adv": tok})
    out = oprl(b).advantages  # A^E + 1·A^S on the masked tokens, in the mask's dtype
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([[1.5, 0.0, 0.0], [1.0, -1.0, -1.5]]))
    assert_close(oprl(b, norm="none").advantages, out)  # "none" is a valid norm (read at rollout time)
    plain = _batch([1.0, -1.0], mask)
    assert oprl(plain) is plain  # evaluation loss: no step tensors, GRPO untouched
    flat = _batch([1.0, -1.0], mask, features={"oprl_step_adv": torch.ones(2)})
    assert oprl(flat) is flat  # not a [B,T] token tensor


def _oprl_view():
    from crs.steps.scorers import RolloutView
    from crs.steps.segment import segment_batch

    # one group of two: row 0 = steps [0,1] [2,3]; row 1 = one step [0,2], then padding
    ids = torch.tensor([[1, 7, 2, 7], [3, 4, 5, 0]])
    cmask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    steps = segment_batch(ids, cmask, frozenset({7}))
    assert steps.valid.tolist() == [[True, True], [True, False]]
    z = torch.zeros(2, 1, dtype=torch.long)
    return RolloutView(z, z, ids, cmask, [{}, {}], [[], []], steps, torch.tensor([True, False]), 2)


def test_oprl_produce_normalises_then_standardises_over_the_group_valid_steps():
    from crs.methods.oprl import produce

    view = _oprl_view()
    # tiny rewards, so the 1e-6 of the std matters: the padded step's 99 is masked out
    scores = 1e-6 * torch.tensor([[1.0, 3.0], [5.0, 99.0]])
    # batch_max: r / (max|reverse cumsum| + 1e-6) = r / 6e-6 -> 1/6, 1/2, 5/6: mean 1/2, std 1/3
    a = (1 / 3) / (1 / 3 + 1e-6)
    got = produce(view, scores, "implicit", {"norm": "batch_max"}, torch.zeros(2))["oprl_step_adv"]
    assert_close(got, torch.tensor([[-a, -a, 0.0, 0.0], [a, a, a, 0.0]]))
    # none: raw r (1, 3, 5)e-6: mean 3e-6, std 2e-6 -> ±2e-6 / (2e-6 + 1e-6) = ±2/3
    got = produce(view, scores, "implicit", {"norm": "none"}, torch.zeros(2))["oprl_step_adv"]
    c = 2 / 3
    assert_close(got, torch.tensor([[-c, -c, 0.0, 0.0], [c, c, c, 0.0]]))


def test_oprl_check_allows_only_the_implicit_scorer_on_environments():
    from omegaconf import OmegaConf

    from crs.methods.oprl import check

    def cfg(bench, scorer):
        return OmegaConf.create({"benchmark": {"name": bench}, "method": {"steps": {"scorer": scorer}}})

    with pytest.raises(ConfigError) as info:
        check(cfg("maze", "rule"), {})
    assert str(info.value) == (
        "on multi-turn environments (benchmark=maze) the step level is the turn and only oprl with "
        "method.steps.scorer=implicit applies (got scorer=rule)"
    )
    check(cfg("maze", "implicit"), {})
    check(cfg("arithmetic", "rule"), {})  # single-turn: any scorer


# -- CAPO: the three normalisers over two groups, the producer, the step ---------------------------------

# two groups of two rows, T = 3; padded positions hold a stray 9 that must not count
CAPO_R = torch.tensor([[2.0, 2.0, 1.0], [0.0, -1.0, 9.0], [1.0, 9.0, 9.0], [3.0, 1.0, 0.0]])
CAPO_M = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])


def test_capo_loo_token_mean_over_two_groups():
    from crs.methods.capo import capo_advantages

    # group 1: sums 5 (3 tokens), −1 (2 tokens): row 0 − (−1/2), row 1 − 5/3
    # group 2: sums 1 (1 token), 4 (3 tokens): row 2 − 4/3, row 3 − 1/1 (groups with different sums)
    want = torch.tensor([[2.5, 2.5, 1.5], [-5 / 3, -8 / 3, 0], [-1 / 3, 0, 0], [2, 0, -1]])
    assert_close(capo_advantages(CAPO_R, CAPO_M, 2, "loo_token_mean"), want)
    assert_close(capo_advantages(CAPO_R, CAPO_M, 2), want)  # the default


def test_capo_loo_with_no_other_tokens_subtracts_nothing():
    from crs.methods.capo import capo_advantages

    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    R = torch.tensor([[3.0, -1.0], [5.0, 5.0]])
    assert_close(capo_advantages(R, mask, 2), torch.tensor([[3.0, -1.0], [0.0, 0.0]]))
    assert_close(capo_advantages(R, torch.zeros(2, 2), 2, "group_token_mean"), torch.zeros(2, 2))
    # a group with a single valid token: its mean is that token (÷1), for both normalisers
    one = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    for norm in ("group_token_mean", "group_token_meanstd"):
        assert_close(capo_advantages(R, one, 2, norm), torch.zeros(2, 2))
    sq = capo_advantages(
        torch.tensor([[3.0, 1.0], [0.0, 0.0]]),
        torch.tensor([[1.0, 1.0], [0.0, 0.0]]),
        2,
        "group_token_meanstd",
    )
    assert_close(sq, torch.tensor([[1.0, -1.0], [0.0, 0.0]]) / (1.0 + 1e-4))  # 2 tokens: sq = (1 + 1)/2


def test_capo_group_token_mean_and_meanstd_over_two_groups():
    from crs.methods.capo import capo_advantages

    # group means 4/5 and 5/4
    A = torch.tensor([[1.2, 1.2, 0.2], [-0.8, -1.8, 0], [-0.25, 0, 0], [1.75, -0.25, -1.25]])
    assert_close(capo_advantages(CAPO_R, CAPO_M, 2, "group_token_mean"), A)
    # token std of each group: sqrt((1.44+1.44+0.04+0.64+3.24)/5) = sqrt(1.36);
    # sqrt((0.0625+3.0625+0.0625+1.5625)/4) = sqrt(1.1875)
    sd = torch.tensor([1.36**0.5, 1.36**0.5, 1.1875**0.5, 1.1875**0.5]).unsqueeze(1) + 1e-4
    assert_close(capo_advantages(CAPO_R, CAPO_M, 2, "group_token_meanstd"), A / sd)


def test_capo_bad_norm_is_one_line():
    from crs.methods.capo import capo_advantages

    with pytest.raises(ConfigError) as info:
        capo_advantages(CAPO_R, CAPO_M, 2, "zscore")
    assert str(info.value) == (
        "capo.norm must be loo_token_mean, group_token_mean or group_token_meanstd, got 'zscore'"
    )


def test_capo_produce_flags_probabilities_and_negative_rewards():
    from crs.methods.capo import produce

    view = _oprl_view()  # row 0 (correct): steps [0,1] [2,3]; row 1 (wrong): one step [0,2]
    # probabilities: flag = 1 − p on valid steps -> row 0 step 0 0.75; row 1 step 0 1.0 (its step 1 is padding)
    p = torch.tensor([[0.25, 1.0], [0.0, 0.5]])
    args = {"w_whole": 2.0, "w_process": 1.0, "norm": "loo_token_mean"}
    got = produce(view, p, "prob", args, torch.zeros(2))["capo_adv"]
    # R row 0 = [1.25, 1.25, 2, 2] (sum 6.5 / 4), row 1 = [−1, −1, −1] (sum −3 / 3)
    want = torch.tensor([[2.25, 2.25, 3.0, 3.0], [-2.625, -2.625, -2.625, 0.0]])
    assert_close(got, want)
    # rewards: flag = r < 0 -> row 0 step 0 only; W_whole 1, W_process 0.5, group_token_mean
    r = torch.tensor([[-1.0, 0.0], [0.2, -3.0]])  # a score of exactly 0 is not a wrong step
    args = {"w_whole": 1.0, "w_process": 0.5, "norm": "group_token_mean"}
    got = produce(view, r, "reward", args, torch.zeros(2))["capo_adv"]
    # R row 0 = [0.5, 0.5, 1, 1], row 1 = [0, 0, 0]: mean 3/7
    m = 3 / 7
    assert_close(got, torch.tensor([[0.5 - m, 0.5 - m, 1 - m, 1 - m], [-m, -m, -m, 0.0]]))


def test_capo_step_mixes_its_advantages_and_checks_its_arguments():
    from crs.methods.capo import capo

    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    tok = torch.tensor([[2.0, -1.0, 9.0], [0.5, 0.0, 4.0]])
    b = _batch([1.0, -1.0], mask, features={"capo_adv": tok})
    assert_close(capo(b).advantages, tok * mask)  # default mix 1: CAPO's advantages only
    got = capo(b, mix=0.25, norm="group_token_mean").advantages
    assert_close(got, 0.75 * torch.tensor([[1.0, 1.0, 0.0], [-1.0, -1.0, -1.0]]) + 0.25 * tok * mask)
    assert_close(capo(b, norm="group_token_meanstd", w_process=0.0).advantages, tok * mask)
    assert_close(capo(b, w_process=0.5).advantages, tok * mask)
    with pytest.raises(ConfigError) as info:
        capo(b, w_process=-1.0)
    assert str(info.value) == "capo.w_process must be >= 0, got -1.0"
    with pytest.raises(ConfigError, match="capo.norm must be"):
        capo(b, norm="zscore")


# -- GiGPO: defaults, invalid steps inside shared anchor groups, tasks that must not mix -------------------


def _tb(*a, **kw):
    from test_envs_methods import _turns

    return _turns(*a, **kw)


def test_gigpo_defaults_with_an_invalid_step_in_a_shared_anchor_group():
    from crs.methods.gigpo import gigpo_advantages

    # ep0 visits A B C and scores at C; ep1 visits A B, its B step illegal. Defaults: ω 1, γ 0.95,
    # mean_norm, episode stats over steps, penalty 0.1
    tb = _tb([["A", "B", "C"], ["A", "B"]], [[0.0, 0.0, 1.0], [0.0, 0.0]], valid=[[1, 1, 1], [1, 0]])
    A, A_E, A_S = gigpo_advantages(tb)
    # G: ep0 (0.9025, 0.95, 1); ep1 (0, 0 − 0.1). Scores: ep0 1,1,1; ep1 0, −0.1: mean 2.9/5 = 0.58
    assert_close(A_E, torch.tensor([[0.42, 0.42, 0.42], [-0.58, -0.68, 0.0]]))
    # anchor A: {0.9025, 0} -> ±0.45125; anchor B: {0.95, −0.1} -> ±0.525; C alone -> 0
    assert_close(A_S, torch.tensor([[0.45125, 0.525, 0.0], [-0.45125, -0.525, 0.0]]))
    assert_close(A, torch.tensor([[0.87125, 0.945, 0.42], [-1.03125, -1.205, 0.0]]))


def test_gigpo_a_lone_episode_keeps_its_raw_score():
    from crs.methods.gigpo import gigpo_advantages

    A, A_E, A_S = gigpo_advantages(_tb([["A"]], [[1.0]], group_size=1))  # valid: no penalty
    assert A.tolist() == [[1.0]] and A_S.tolist() == [[0.0]]


def test_gigpo_anchor_ids_of_different_tasks_never_share_a_group():
    from crs.methods.gigpo import gigpo_advantages

    # issue 17's case: tasks [A] [B] | [A] [A], only task 1's A is a shared anchor
    tb = _tb([["A"], ["B"], ["A"], ["A"]], [[0.0], [0.0], [1.0], [0.0]], group_size=2)
    _, _, A_S = gigpo_advantages(tb, invalid_penalty=0.0)
    assert_close(A_S, torch.tensor([[0.0], [0.0], [0.5], [-0.5]]))
    # three one-rollout tasks, two anchor ids: (task 0, B) and (task 2, A) must stay apart
    tb = _tb([["A", "B"], ["A"], ["A"]], [[0.0, 1.0], [0.0], [0.0]], group_size=1)
    _, _, A_S = gigpo_advantages(tb, invalid_penalty=0.0)
    assert A_S.abs().sum() == 0


def test_gigpo_trajectory_stats_skip_episodes_without_turns():
    from crs.methods.gigpo import gigpo_advantages

    # one task of three: a one-turn episode (score 1), a two-turn one (0) and one with no turn (5)
    tb = _tb([["A"], ["A", "B"], []], [[1.0], [0.0, 0.0], []], outcome=[1.0, 0.0, 5.0], group_size=3)
    _, A_E, _ = gigpo_advantages(tb, gamma=0.5, episode_stats="trajectories", invalid_penalty=0.0)
    assert_close(A_E, torch.tensor([[0.5, 0.0], [-0.5, -0.5], [0.0, 0.0]]))  # mean of (1, 0)


def test_gigpo_empty_batch_and_bad_arguments():
    from crs.methods.gigpo import gigpo, gigpo_advantages

    A, _, _ = gigpo_advantages(_tb([[], []], [[], []]))
    assert A.shape == (2, 0)
    from crs.methods.gigpo import METHOD

    out = METHOD.turn_credit(_tb([[], []], [[], []]), 2)  # no turns at all: zero metrics, no crash
    assert out.advantages.shape == (2, 0) and out.metrics["shared_anchor_frac"] == 0.0
    tb = _tb([["A"]], [[1.0]], group_size=1)
    with pytest.raises(ValueError) as info:
        gigpo_advantages(tb, mode="z")
    assert str(info.value) == "gigpo.mode must be one of ('mean_norm', 'mean_std_norm'), got 'z'"
    with pytest.raises(ValueError) as info:
        gigpo_advantages(tb, episode_stats="z")
    assert str(info.value) == "gigpo.episode_stats must be steps or trajectories, got 'z'"
    b = _batch([1.0, 2.0])
    msg = "gigpo: mode must be one of ('mean_norm', 'mean_std_norm') and episode_stats steps|trajectories"
    for bad in ({"mode": "z"}, {"episode_stats": "z"}):
        with pytest.raises(ConfigError) as info:
            gigpo(b, **bad)
        assert str(info.value) == msg


def test_gigpo_step_reads_the_rollout_turn_advantages():
    from crs.methods.gigpo import gigpo

    b = _batch([1.0, 2.0])
    assert gigpo(b) is b  # dry run: no rollout tensors
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = _batch([1.0, 2.0], mask, features={"turn_adv": torch.tensor([[3.0, 4.0], [5.0, 6.0]])})
    assert_close(gigpo(b).advantages, torch.tensor([[3.0, 0.0], [5.0, 6.0]]))


def test_gigpo_turn_credit_metrics():
    from crs.methods.gigpo import METHOD

    tb = _tb([["A", "B", "C"], ["A", "D"]], [[0.0, 0.0, 1.0], [0.0, 0.0]])
    out = METHOD.turn_credit(tb, 2, gamma=0.5, invalid_penalty=0.0)
    # A^E (0.4, 0.4, 0.4, −0.6, −0.6), A^S (0.125, 0, 0, −0.125, 0): anchor A shared by 2 of 5 units
    assert_close(out.advantages, torch.tensor([[0.525, 0.4, 0.4], [-0.725, -0.6, 0.0]]))
    assert out.metrics == pytest.approx(
        {"shared_anchor_frac": 0.4, "step_adv_abs": 0.05, "episode_adv_abs": 0.48}
    )


# -- InT: the reference solution's steps and the step's argument checks ----------------------------------


def test_int_reference_steps_cut_the_worked_solution_at_commas_and_periods():
    from crs.methods.int import _norm, reference_steps

    # 7+5 = 12, 12−3 = 9: " 7+5=12, 12-3=9. Answer: 9" cut after every ',' and '.'
    assert reference_steps("Q: 7+5-3\nA:") == [" 7+5=12,", " 12-3=9.", " Answer: 9"]
    assert reference_steps("Q: 4+4\nA:") == [" 4+4=8.", " Answer: 8"]
    assert reference_steps("no task here") is None
    assert _norm(" 12-3=9. ") == "12-3=9" and _norm(" 7+5=12 ,") == "7+5=12"
    assert _norm(" Answer: X.") == "Answer: X"  # only separators are stripped


def test_int_step_is_grpo_and_checks_its_arguments():
    from crs.methods.int import intervention

    b = _batch([1.0, -1.0])
    assert intervention(b) is b
    for ok in ({"rate": 0.0}, {"rate": 1.0}, {"sft_steps": 0}, {"candidates": 1}, {"lr": 1e-9}):
        assert intervention(b, **ok) is b
    for bad in (1.5, -0.1):
        with pytest.raises(ConfigError) as info:
            intervention(b, rate=bad)
        assert str(info.value) == f"int.rate must be in [0, 1], got {bad}"
    for bad in ({"candidates": 0}, {"sft_steps": -1}, {"lr": 0.0}):
        with pytest.raises(ConfigError) as info:
            intervention(b, **bad)
        assert str(info.value) == "int.candidates must be >= 1, int.sft_steps >= 0 and int.lr > 0"


# -- T-REG (methods-wave3.md T4/T5): defaults, the mean form, the config check ---------------------------


def _t_reg_batch(n_pairs=3):
    # every row: log π = (−0.5, −1.0), r̂ = (0.2, 0.1), β = 0.1 -> L_REG = 0.02 (T4, sum form)
    logps = torch.tensor([[-0.5, -1.0]] * (2 * n_pairs), requires_grad=True)
    implicit = torch.tensor([0.3] * n_pairs + [0.1] * n_pairs, requires_grad=True)  # T5: w = σ(−0.2)
    feats = {
        "token_reward": torch.tensor([[0.2, 0.1]] * (2 * n_pairs)),
        "implicit_reward": implicit,
        "beta": torch.full((2 * n_pairs,), 0.1),
    }
    return (
        CreditBatch(
            advantages=torch.zeros(2 * n_pairs), mask=torch.ones(2 * n_pairs, 2), logps=logps, features=feats
        ),
        logps,
        implicit,
    )


def test_t_reg_defaults_alpha_0_25_sum_form_detached_weight_over_three_pairs():
    from crs.methods.t_reg import t_reg

    b, logps, implicit = _t_reg_batch(3)
    out = t_reg(b).features
    w = 0.450166
    assert_close(out["t_reg/weight"], torch.full((3,), w), atol=1e-6, rtol=0)
    assert_close(out["t_reg/reg"], torch.full((6,), 0.02))
    assert_close(out["pref_reg"], torch.tensor(0.25 * w * (0.02 + 0.02)), atol=1e-8, rtol=1e-5)
    out["pref_reg"].backward()
    assert implicit.grad is None and logps.grad is not None  # w carries no gradient (detach_weight=True)
    b, _, _ = _t_reg_batch(3)
    half = t_reg(b, normalize="mean", weighting="static").features["pref_reg"]
    assert_close(half, torch.tensor(0.25 * 1.0 * (0.01 + 0.01)))  # mean over 2 tokens, w = 1


def test_reg_loss_mean_divides_each_row_by_its_own_length_and_keeps_the_dtype():
    from crs.methods.t_reg import pair_weight, reg_loss

    logps = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    r = torch.ones(2, 3)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert_close(reg_loss(logps, r, mask, 1.0), torch.tensor([6.0, 4.0]))  # default: sum
    assert_close(reg_loss(logps, r, mask, 1.0, "mean"), torch.tensor([2.0, 4.0]))  # /3 and /1
    beta = torch.tensor([1.0, 0.5], dtype=torch.float64)
    out = reg_loss(logps, r, mask, beta)
    assert out.dtype == torch.float32 and out.tolist() == [6.0, 2.0]
    c, rej = torch.tensor([0.3], requires_grad=True), torch.tensor([0.1])
    assert not pair_weight(c, rej).requires_grad  # detached by default
    assert pair_weight(c, rej, detach=False).requires_grad


def test_t_reg_check_names_the_allowed_values():
    from crs.methods.t_reg import METHOD

    ok = dict(METHOD.defaults)
    METHOD.check(None, ok)
    METHOD.check(None, {**ok, "normalize": "mean", "weighting": "static"})
    with pytest.raises(ConfigError) as info:
        METHOD.check(None, {**ok, "normalize": "max"})
    assert str(info.value) == "method.credit.t_reg.normalize must be one of sum, mean (got 'max')"
    with pytest.raises(ConfigError) as info:
        METHOD.check(None, {**ok, "weighting": "x"})
    assert str(info.value) == "method.credit.t_reg.weighting must be one of dpo, static (got 'x')"
    with pytest.raises(ConfigError) as info:
        METHOD.check(None, {**ok, "worse_template": ok["better_template"]})
    assert str(info.value) == (
        "method.credit.t_reg: better_template and worse_template must differ (r̂ would be 0)"
    )


# -- F-GRPO: the config check's lines -------------------------------------------------------------------


def test_f_grpo_check_lines():
    from omegaconf import OmegaConf

    from crs.cli import compose
    from crs.methods.f_grpo import check, f_grpo

    slate = compose(["method=f_grpo", "benchmark=slate_rank"])
    check(slate, {"assign": "joint"})
    with pytest.raises(ConfigError) as info:
        check(slate, {"assign": "tags"})
    assert str(info.value) == "method.credit.f_grpo.assign must be one of prefix, content, joint (got 'tags')"
    with pytest.raises(ConfigError) as info:
        check(compose(["benchmark=arithmetic"]), {"assign": "prefix"})
    assert str(info.value) == (
        "method f_grpo needs a benchmark whose completions have a slate and a ranking part "
        "(benchmark=slate_rank); benchmark=arithmetic has none"
    )
    with pytest.raises(ConfigError) as info:
        check(OmegaConf.create({"benchmark": {"name": "nope"}}), {"assign": "prefix"})
    assert str(info.value).startswith("unknown benchmark 'nope'; known: [")
    with pytest.raises(ConfigError) as info:
        f_grpo(_batch([1.0]), assign="tags")
    assert str(info.value) == "f_grpo.assign must be one of prefix, content, joint (got 'tags')"


# -- MatchTIR: similarity edge cases, assignment rules, dual-level advantage on singletons and empty rows ---


def _gold(name, **args):
    return {"name": name, "arguments": args}


def test_matchtir_similarity_edge_cases():
    from crs.methods.matchtir import call_similarity

    # no gold parameters but one predicted: name score 0 -> (1 + 0 + 0) / 2
    assert call_similarity(("add", {"a": 1}), _gold("add")) == 0.5
    # gold written with "parameters" (the other tool-schema spelling)
    assert call_similarity(("add", {"a": 3}), {"name": "add", "parameters": {"a": 3}}) == 1.0
    assert call_similarity(("ping", {}), {"name": "ping"}) == 1.0  # neither key: no parameters


def test_matchtir_assign_defaults_thresholds_and_greedy_order():
    import numpy as np

    from crs.methods.matchtir import assign

    assert assign(np.array([[0.5]])) == [0.5]  # one gold call
    assert assign(np.array([[0.7], [0.2]])) == [0.7, 0.0]  # default: hungarian, unmatched reward 0
    for how in ("hungarian", "greedy"):  # S = 0 is no match: the unmatched reward, not 0
        assert assign(np.array([[0.0]]), how, -0.5) == [-0.5]
    S = np.array([[0.9, 0.0], [0.8, 0.7], [0.0, 0.6]])
    assert assign(S, "greedy") == [0.9, 0.7, 0.0]  # by S descending: .9 (0,0), .7 (1,1); .6's gold taken
    with pytest.raises(ValueError) as info:
        assign(S, "auction")
    assert str(info.value) == "matchtir.assignment must be hungarian or greedy, got 'auction'"


def _soft(reg):
    # S = [[1, 2/3], [2/3, 1]], uniform marginals: T ∝ exp(S/reg) is exact after one scaling;
    # q = exp(−(1/3)/reg); each call's reward = T_ii·1 + T_ij·2/3 = 0.5·(1 + 2q/3)/(1 + q)
    import math

    q = math.exp(-(1 / 3) / reg)
    return 0.5 * (1 + 2 * q / 3) / (1 + q)


def test_matchtir_soft_rewards_default_reg_and_no_gold():
    from crs.methods.matchtir import match_rewards

    pred = [("f", {"a": 1}), ("f", {"a": 2})]
    gold = [_gold("f", a=1), _gold("f", a=2)]
    assert match_rewards(pred, gold, "soft") == pytest.approx([_soft(0.1)] * 2, abs=1e-6)
    assert match_rewards(pred, [], "soft") == [0.0, 0.0]
    with pytest.raises(ValueError) as info:
        match_rewards(pred, gold, "fuzzy")
    assert str(info.value) == "matchtir.kind must be hard or soft, got 'fuzzy'"


def test_matchtir_advantages_defaults_on_three_singleton_tasks():
    from crs.methods.matchtir import METHOD, matchtir_advantages

    gold = [[_gold("add", a=3)]] * 3
    calls = [[[("add", {"a": 4})], []], [[("add", {"a": 3})], []], [[("sub", {"a": 1})], []]]
    tb = _tb(
        [["x", "y"]] * 3, [[0, 0]] * 3, calls=calls, gold=gold, success=[True, False, True], group_size=1
    )
    A, r = matchtir_advantages(tb)
    # r: (2/3, 1), (1, 0), (0 unmatched, 1); singletons keep raw R and raw G (λ = 0.9): A = (R + G)/2
    assert_close(r, torch.tensor([[2 / 3, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    want = torch.tensor([[(5 / 3 + 2 / 3 + 0.9) / 2, (5 / 3 + 1) / 2], [1.0, 0.5], [(1 + 0.9) / 2, 1.0]])
    assert_close(A, want)
    import dataclasses

    tb = dataclasses.replace(tb, has_call=torch.tensor([[1.0, 0.0]] * 3))  # the answer turns make no call
    out = METHOD.turn_credit(tb, 1)
    assert_close(out.advantages, want)
    assert out.metrics == pytest.approx({"call_reward": 5 / 9, "traj_reward": 11 / 9})


def test_matchtir_trajectory_level_skips_rows_without_turns():
    import math

    from crs.methods.matchtir import matchtir_advantages

    gold = [[_gold("add", a=3)]] * 3
    calls = [[[]], [[("add", {"a": 4})], []], []]
    tb = _tb(
        [["x"], ["x", "y"], []],
        [[0], [0, 0], []],
        calls=calls,
        gold=gold,
        success=[True, False, True],
        group_size=3,
    )
    A, _ = matchtir_advantages(tb)
    # R = 1 and 2/3 (row 2 has no turn: not in the statistics); turn 0 G = 1 vs 2/3; turn 1 alone, G = 0
    a = 1 / math.sqrt(2)
    assert_close(A, torch.tensor([[a, 0.0], [-a, -a / 2], [0.0, 0.0]]), atol=1e-5, rtol=0)


def test_matchtir_soft_advantages_use_the_configured_reg():
    from crs.methods.matchtir import matchtir_advantages

    calls = [[[("f", {"a": 1}), ("f", {"a": 2})], []]]
    tb = _tb([["x", "y"]], [[0, 0]], calls=calls, gold=[[_gold("f", a=1), _gold("f", a=2)]], group_size=1)
    A, r = matchtir_advantages(tb, kind="soft", reg=0.5)
    x = _soft(0.5)
    assert_close(r, torch.tensor([[x, 0.0]]))
    assert_close(A, torch.tensor([[x, x / 2]]))


def test_matchtir_turn_rewards_without_recorded_calls():
    from crs.methods.matchtir import turn_rewards

    # rows with gold calls but no recorded calls (text-only episodes): the last turn gets the verdict
    tb = _tb([["x", "y"], ["x"]], [[0, 0], [0]], gold=[[], []], success=[True, False])
    assert turn_rewards(tb).tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_matchtir_step_checks_and_reads_the_turn_advantages():
    from crs.methods.matchtir import matchtir

    b = _batch([1.0, 2.0])
    assert matchtir(b) is b and matchtir(b, kind="soft", assignment="greedy", reg=1e-3) is b
    for bad in ({"kind": "x"}, {"assignment": "x"}, {"reg": 0.0}):
        with pytest.raises(ConfigError) as info:
            matchtir(b, **bad)
        assert str(info.value) == "matchtir: kind must be hard|soft, assignment hungarian|greedy, reg > 0"
    b = _batch([1.0], torch.tensor([[1.0, 0.0]]), features={"turn_adv": torch.tensor([[2.0, 3.0]])})
    assert_close(matchtir(b).advantages, torch.tensor([[2.0, 0.0]]))


# -- A²TGPO: turn-group z-scores, outcome z-scores, rescaled accumulation, clip scales, padding -----------


def _a2_turns(group, turn_mask, has_call, ig, outcome):
    from crs.envs.turns import TurnBatch

    m = torch.tensor(turn_mask, dtype=torch.float32)
    return TurnBatch(
        group=torch.tensor(group),
        turn_mask=m,
        reward=torch.zeros_like(m),
        valid=torch.ones_like(m),
        has_call=torch.tensor(has_call, dtype=torch.float32),
        anchor=torch.zeros_like(m, dtype=torch.long),
        outcome=torch.tensor(outcome),
        success=torch.zeros(len(group), dtype=torch.bool),
        ig=None if ig is None else torch.tensor(ig),
    )


def _z(dev, var):  # the module's population z-score: dev / (sqrt(var + 1e-8) + 1e-6)
    return dev / ((var + 1e-8) ** 0.5 + 1e-6)


def test_a2tgpo_defaults_on_a_group_of_two_with_a_padded_turn():
    import math

    from crs.methods.a2tgpo import a2tgpo_advantages

    # row 0: call, call, answer, (pad); row 1: call, call, answer, answer; outcomes 1 and 0
    tb = _a2_turns([0, 0], [[1, 1, 1, 0], [1, 1, 1, 1]], [[1, 1, 0, 0], [1, 1, 0, 0]], None, [1.0, 0.0])
    ig = torch.tensor([[0.2, 0.6, 0.0, 0.0], [0.4, 0.2, 0.0, 0.0]])
    A, c, ig_hat = a2tgpo_advantages(tb, ig)  # γ 1, α 0.3, β 0.3
    h1, h2, r = _z(0.1, 0.01), _z(0.2, 0.04), _z(0.5, 0.25)  # tool turn 0: (.2, .4); turn 1: (.6, .2)
    assert_close(ig_hat, torch.tensor([[-h1, h2, 0.0, 0.0], [h1, -h2, 0.0, 0.0]]))
    # D_0 = îg_0 + îg_1 over n = 2 terms, D_1 = îg_1 (n = 1): A = R̂ + α·D/√n on tool turns, R̂ elsewhere
    s2 = math.sqrt(2)
    want = torch.tensor(
        [[r + 0.3 * (h2 - h1) / s2, r + 0.3 * h2, r, 0.0], [-r + 0.3 * (h1 - h2) / s2, -r - 0.3 * h2, -r, -r]]
    )
    assert_close(A, want)

    def cs(x):
        return 1 + 0.3 * (2 / (1 + math.exp(-x)) - 1)

    assert_close(c, torch.tensor([[cs(-h1), cs(h2), 1.0, 1.0], [cs(h1), cs(-h2), 1.0, 1.0]]))
    A5, _, _ = a2tgpo_advantages(tb, ig, gamma=0.5)
    assert_close(A5[0, 0], torch.tensor(r + 0.3 * (0.5 * h2 - h1) / s2))


def test_a2tgpo_turn_group_norm_keys_singletons_and_tiny_variance():
    from crs.methods.a2tgpo import turn_group_norm, turn_positions

    # groups 0, 1, 3; row 1 makes no call; all rows have two turns
    ig = torch.tensor([[5.0, 7.0], [9.0, 9.0], [0.2, 0.6], [0.4, 0.2], [1.0, 0.0], [3.0, 2e-4]])
    tb = _a2_turns([0, 0, 1, 1, 3, 3], [[1, 1]] * 6, [[1, 1], [0, 0]] + [[1, 1]] * 4, None, [0.0] * 6)
    assert turn_positions(tb).tolist() == [[0, 1], [-1, -1]] + [[0, 1]] * 4
    # (g0, 0), (g0, 1): one member each -> 0; (g1, ·) and (g3, ·) pairs; (g3, 1): var 1e-8
    h1, h2, one, tiny = _z(0.1, 0.01), _z(0.2, 0.04), _z(1.0, 1.0), _z(1e-4, 1e-8)
    want = torch.tensor([[0.0, 0.0], [0.0, 0.0], [-h1, h2], [h1, -h2], [-one, -tiny], [one, tiny]])
    assert_close(turn_group_norm(ig, tb), want)
    # a padded slot is no tool turn even with a stray has_call
    tb = _a2_turns([0], [[1, 0]], [[1, 1]], None, [0.0])
    assert turn_positions(tb).tolist() == [[0, -1]]


def test_a2tgpo_outcome_norm_per_group_in_float():
    from crs.methods.a2tgpo import outcome_norm

    out = outcome_norm(torch.tensor([0.0, 2e-4, 1.0, 1.0, 3.0]), torch.tensor([0, 0, 1, 1, 2]))
    t = _z(1e-4, 1e-8)
    assert_close(out, torch.tensor([-t, t, 0.0, 0.0, 0.0]))  # equal pair and a lone rollout: 0
    out = outcome_norm(torch.tensor([1, 0]), torch.tensor([0, 0]))  # integer rewards
    assert out.dtype == torch.float32
    assert_close(out, torch.tensor([_z(0.5, 0.25), -_z(0.5, 0.25)]))


def test_a2tgpo_rescaled_accumulation_default_gamma():
    from crs.methods.a2tgpo import rescaled_accumulation

    tb = _a2_turns([0], [[1, 1, 1]], [[1, 0, 1]], None, [0.0])
    D, n = rescaled_accumulation(torch.tensor([[1.0, 9.0, 2.0]]), tb)  # tool turns 0 and 2; γ = 1
    assert D.tolist() == [[3.0, 0.0, 2.0]] and n.tolist() == [[2.0, 0.0, 1.0]]


def test_a2tgpo_step_checks_and_turn_credit_metrics():
    import math

    from crs.methods.a2tgpo import METHOD, a2tgpo

    b = _batch([1.0])
    assert a2tgpo(b) is b and a2tgpo(b, beta=0.0, ig_type="prob_diff") is b
    for bad in ({"ig_type": "x"}, {"beta": 1.0}, {"beta": -0.1}):
        with pytest.raises(ConfigError) as info:
            a2tgpo(b, **bad)
        assert str(info.value) == "a2tgpo: ig_type must be log_prob_diff|prob_diff and 0 <= beta < 1"
    tb = _a2_turns([0, 0], [[1, 1], [1, 1]], [[1, 0], [1, 0]], [[0.2, 5.0], [0.4, 5.0]], [1.0, 0.0])
    out = METHOD.turn_credit(tb, 2)
    h = _z(0.1, 0.01)
    c = [1 + 0.3 * (2 / (1 + math.exp(x)) - 1) for x in (h, -h)]
    assert out.metrics == pytest.approx({"ig_mean": 0.3, "clip_scale_mean": (c[0] + c[1]) / 2})
    none = _a2_turns([0, 0], [[1], [1]], [[0], [0]], None, [1.0, 0.0])  # no tool turn, no IG computed
    assert METHOD.turn_credit(none, 2).metrics == {"ig_mean": 0.0, "clip_scale_mean": 1.0}


# -- CreditChain: its own messages, the drive's neutral value, the dry run, where a method may run --------


def _own(name="mine", fail_at=None, **kw):
    """A method outside the registry: ``x`` scales the advantages; raises ValueError when ``x == fail_at``."""
    from crs.credit.method import Method

    def fn(batch: CreditBatch, x: float = 1.0, y: float = 2.0) -> CreditBatch:
        if fail_at is not None and x == fail_at:
            raise ValueError(f"x = {x}")
        return batch.replace(advantages=batch.advantages * x)

    return Method(name, fn, **kw)


def test_chain_takes_a_given_method_table_and_names_what_it_knows():
    from crs.methods.chain import CreditChain

    table = {"mine": _own(ranges={"x": "[0, 1]"}), "other": _own("other")}
    before = CreditChain.built
    chain = CreditChain({"mine": {"x": 0.5}}, methods=table)
    assert CreditChain.built == before + 1
    assert_close(chain.advantage_phase(_batch([2.0]), 1.0).advantages, torch.tensor([1.0]))
    with pytest.raises(ConfigError) as info:
        CreditChain({"nope": {}}, methods=table)
    assert str(info.value) == "method.credit: unknown step 'nope'; known: mine, other"
    with pytest.raises(ConfigError) as info:
        CreditChain({"mine": {"z": 1}}, methods=table)
    assert str(info.value) == "method.credit.mine: unknown argument 'z'; accepted: x, y"
    with pytest.raises(ConfigError) as info:
        CreditChain({"mine": {"drive": {"knob": "w"}}}, methods=table)
    assert str(info.value) == "method.credit.mine.drive.knob: 'w' is not an argument of mine (x, y)"
    with pytest.raises(ConfigError) as info:
        CreditChain({"mine": {"x": 2.0}}, methods=table)
    assert str(info.value) == "method.credit.mine.x must be in [0, 1] (got 2.0)"


def test_chain_checks_the_drive_neutral_against_the_knob_range():
    from crs.methods.chain import CreditChain

    table = {"mine": _own(ranges={"x": "(0, 1]"})}
    with pytest.raises(ConfigError) as info:  # neutral defaults to 0, outside (0, 1]
        CreditChain({"mine": {"drive": {"knob": "x"}}}, methods=table)
    assert str(info.value) == "method.credit.mine.drive.neutral must be in (0, 1] (got 0.0)"
    CreditChain({"mine": {"drive": {"knob": "x", "neutral": 0.5}}}, methods=table)
    CreditChain(
        {"mine": {"drive": {"knob": "y"}}}, methods=table
    )  # y has no declared range: nothing to check
    with pytest.raises(ConfigError, match=r"entropy_adv.drive.neutral must be in \(0, inf\)"):
        CreditChain({"entropy_adv": {"drive": {"knob": "kappa"}}})


def test_chain_dry_run_tries_both_ends_of_the_schedule():
    from crs.methods.chain import CreditChain

    drive = {"drive": {"knob": "x", "neutral": 0.0}}
    for fail_at, x in ((0.0, 0.0), (1.0, 1.0)):  # fails at ρ = 0 (x = neutral), then at ρ = 1 (x = 1)
        with pytest.raises(ConfigError) as info:
            CreditChain({"mine": drive}, methods={"mine": _own(fail_at=fail_at)})
        assert str(info.value) == f"method.credit: ValueError: x = {x}"
    CreditChain({"mine": drive}, methods={"mine": _own(fail_at=0.5)})  # ρ = ½ is not tried


def test_chain_hooked_gives_the_args_at_rho():
    from crs.methods import METHODS
    from crs.methods.chain import CreditChain

    chain = CreditChain({"oprl": {"w": 0.5, "drive": {"knob": "w", "neutral": 0.0}}, "focal_grpo": {}})
    assert chain.hooked("produce", 0.5) == [(METHODS["oprl"], {"w": 0.25, "norm": "batch_max"})]
    assert chain.hooked("produce") == [(METHODS["oprl"], {"w": 0.5, "norm": "batch_max"})]  # ρ = 1
    assert chain.hooked("turn_credit") == []


def test_chain_check_run_lines(monkeypatch):
    from omegaconf import OmegaConf

    from crs.methods.chain import CreditChain

    def cfg(bench, kind="grpo", scorer="rule"):
        return OmegaConf.create(
            {"trainer": {"kind": kind}, "benchmark": {"name": bench}, "method": {"steps": {"scorer": scorer}}}
        )

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError) as info:
        CreditChain({"t_reg": {}}).check_run(cfg("arithmetic"))
    assert str(info.value) == "method t_reg runs on trainer.kind=dpo, not trainer.kind=grpo"
    with pytest.raises(ConfigError) as info:
        CreditChain({"gigpo": {}}).check_run(cfg("arithmetic"))
    assert str(info.value) == (
        "method gigpo assigns credit to turns of a multi-turn environment; benchmark=arithmetic is "
        "single-turn (use benchmark=maze or benchmark=calc_tool)"
    )
    with pytest.raises(ConfigError) as info:
        CreditChain({"pure": {}}).check_run(cfg("maze"))
    msg = str(info.value)
    assert msg.startswith(
        "method pure runs on single-turn benchmarks; benchmark=maze is a multi-turn environment, where the "
        "step level is the turn (step and turn methods there: "
    )
    listed = msg.split("there: ")[1].rstrip(")").split(", ")
    assert listed == sorted(listed) and {"a2tgpo", "gigpo", "matchtir", "oprl"} <= set(listed)
    assert not {"pure", "capo", "focal_grpo", "adora"} & set(listed)  # single-turn or token methods
    CreditChain({"gigpo": {}}).check_run(cfg("maze"))
    CreditChain({"oprl": {}}).check_run(cfg("maze", scorer="implicit"))
    with pytest.raises(ConfigError, match="only oprl with method.steps.scorer=implicit"):
        CreditChain({"oprl": {}}).check_run(cfg("maze"))  # the method's own check
    CreditChain({"int": {}}).check_run(cfg("arithmetic"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as info:
        CreditChain({"int": {}}).check_run(cfg("arithmetic"))
    assert str(info.value).startswith("method int runs on one process for now (WORLD_SIZE=2): its SFT")
    CreditChain({"focal_grpo": {}}).check_run(cfg("arithmetic"))


# -- PURE: the helpers' edge cases, a sum-form batch by hand, the producer's arguments, the step ---------


def test_pure_loo_mean_and_masked_whiten_edges():
    from crs.methods.pure import loo_mean, masked_whiten

    # two groups of three: (Σ − x)/2
    assert_close(
        loo_mean(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), 3), torch.tensor([4, 3.5, 1.5, 1.5, 1.5, 0])
    )
    # one masked entry: mean = that entry, no Bessel factor (verl raises there) -> 0, not nan
    assert_close(masked_whiten(torch.tensor([[3.0, 5.0]]), torch.tensor([[1.0, 0.0]])), torch.zeros(1, 2))
    # two entries: unbiased var of (1, 3) = 2
    got = masked_whiten(torch.tensor([[1.0, 3.0, 7.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert_close(got, torch.tensor([[-1.0, 1.0, 0.0]]) / (2.0 + 1e-8) ** 0.5)


def _pure_steps():
    from crs.steps.segment import segment_batch

    # row 0: steps [0,1] and [2]; row 1: one token, one step
    ids, cmask = torch.tensor([[1, 7, 2], [3, 0, 0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])
    steps = segment_batch(ids, cmask, frozenset({7}))
    assert steps.n_content.tolist() == [[1, 0], [0, 0]] and steps.valid.tolist() == [
        [True, True],
        [True, False],
    ]
    return steps, cmask.float()


def test_pure_sum_form_by_hand_with_a_padded_step_and_a_one_token_row():
    from crs.methods.pure import pure_advantages

    steps, mask = _pure_steps()
    p = torch.tensor([[0.5, -1.0], [0.25, 9.0]])  # 9 on row 1's missing step must not count
    got = pure_advantages(
        p,
        steps,
        mask,
        torch.tensor([True, False]),
        2,
        form="sum",
        vr_coef=2.0,
        mask_separator=False,
        whiten=False,
    )
    # VR: v = s − 1 = (0, −1), minus LOO (−1, 0) -> (1, −1), ×2. Token baseline: R = (−0.5, 0.25),
    # L = (3, 1): b = (0.25/1, −0.5/3); r_step − b·n_content = (0.25, −1) and (0.25); ends 1, 2 and 0;
    # + VR on the last token: row 0 (0, 0.25, −1 + 2), row 1 (0.25 − 2); reverse cumsum
    assert_close(got, torch.tensor([[1.25, 1.25, 1.0], [-1.75, 0.0, 0.0]]))


def test_pure_rejects_bad_values_in_one_line():
    from crs.methods.pure import pure, pure_advantages, softmin_step_rewards

    steps, mask = _pure_steps()
    ok = torch.tensor([True, False])
    with pytest.raises(ConfigError) as info:
        pure_advantages(torch.zeros(2, 2), steps, mask, ok, 2, form="max")
    assert str(info.value) == "pure.form must be softmin, sum or strict, got 'max'"
    with pytest.raises(ConfigError) as info:
        pure_advantages(torch.zeros(2, 2), steps, mask, ok, 2, baseline="group")
    assert str(info.value) == "pure.baseline must be token or none, got 'group'"
    with pytest.raises(ConfigError) as info:
        softmin_step_rewards(torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool), 0.0)
    assert str(info.value) == "pure.temperature must be > 0, got 0.0"
    b = _batch([1.0])
    for bad, msg in (
        ({"form": "max"}, "pure.form must be softmin, sum or strict, got 'max'"),
        ({"baseline": "group"}, "pure.baseline must be token or none, got 'group'"),
        ({"temperature": 0.0}, "pure.temperature must be > 0, got 0.0"),
    ):
        with pytest.raises(ConfigError) as info:
            pure(b, **bad)
        assert str(info.value) == msg


def test_pure_step_defaults_and_accepted_values():
    from crs.methods.pure import pure

    mask = torch.tensor([[1.0, 1.0, 0.0]])
    tok = torch.tensor([[2.0, -1.0, 5.0]])
    b = _batch([1.0], mask, features={"pure_adv": tok})
    assert_close(pure(b).advantages, tok * mask)  # mix 1: PURE's advantages only
    for form in ("sum", "strict"):
        assert_close(pure(b, form=form, baseline="none", temperature=1e-3).advantages, tok * mask)


def test_pure_produce_passes_every_argument_and_signs_probabilities():
    from types import SimpleNamespace

    from crs.methods.pure import produce, pure_advantages
    from crs.steps.scorers import RolloutView

    steps, mask = _pure_steps()
    z = torch.zeros(2, 1, dtype=torch.long)
    succ = torch.tensor([True, False])
    view = RolloutView(
        z,
        z,
        torch.zeros(2, 3, dtype=torch.long),
        mask,
        [{}, {}],
        [[], []],
        steps,
        succ,
        2,
        trainer=SimpleNamespace(max_completion_length=6),
    )
    probs = torch.tensor([[0.75, 0.25], [0.5, 0.9]])
    signed = torch.tensor([[0.5, -0.5], [0.0, 0.0]])  # 2p − 1 on valid steps
    for args in (
        {
            "form": "sum",
            "temperature": 0.5,
            "baseline": "none",
            "vr_coef": 2.0,
            "mask_separator": False,
            "whiten": False,
        },
        {
            "form": "softmin",
            "temperature": 0.5,
            "baseline": "token",
            "vr_coef": 0.0,
            "mask_separator": True,
            "whiten": True,
        },
        {
            "form": "strict",
            "temperature": 0.1,
            "baseline": "token",
            "vr_coef": 1.0,
            "mask_separator": True,
            "whiten": True,
        },
    ):
        want = pure_advantages(signed, steps, mask, succ, 2, width=6, **args)
        got = produce(view, probs, "prob", args, torch.zeros(2))["pure_adv"]
        assert torch.isfinite(got).all()
        assert_close(got, want)


# -- DPO: the identity step and the data-file check -------------------------------------------------------


def test_dpo_step_is_the_identity_and_checks_its_file(tmp_path, monkeypatch):
    from crs.methods.dpo import METHOD, dpo

    b = _batch([1.0, -1.0])
    assert dpo(b) is b
    METHOD.check(None, {"data_file": None})
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    METHOD.check(None, {"data_file": str(pairs)})
    monkeypatch.setenv("HOME", str(tmp_path))
    METHOD.check(None, {"data_file": "~/pairs.jsonl"})  # ~ is the user's home
    with pytest.raises(ConfigError) as info:
        METHOD.check(None, {"data_file": "~/nope.jsonl"})
    assert str(info.value) == (
        "method.credit.dpo.data_file: no such file '~/nope.jsonl' (a .jsonl/.json with prompt/chosen/rejected)"
    )


def test_oprl_step_advantages_standardise_each_group_on_its_own():
    from crs.methods.oprl import step_advantages

    r = torch.tensor([[1.0, 3.0], [5.0, 7.0], [0.0, 0.0], [0.0, 4.0]])
    A = step_advantages(r, torch.ones(4, 2, dtype=torch.bool), 2)
    # group 1: mean 4, Bessel var 20/3; group 2: mean 1, var (1+1+1+9)/3 = 4
    sd1, sd2 = (20 / 3) ** 0.5 + 1e-6, 2.0 + 1e-6
    assert_close(
        A, torch.tensor([[-3 / sd1, -1 / sd1], [1 / sd1, 3 / sd1], [-1 / sd2, -1 / sd2], [-1 / sd2, 3 / sd2]])
    )


def test_t_reg_adds_to_an_earlier_preference_regulariser():
    from crs.methods.t_reg import t_reg

    b, _, _ = _t_reg_batch(1)
    b = b.replace(features={**b.features, "pref_reg": torch.tensor(1.0)})
    got = t_reg(b, weighting="static").features["pref_reg"]
    assert_close(got, torch.tensor(1.0 + 0.25 * (0.02 + 0.02)))  # 1 + α·w·(L_w + L_l), w = 1


def test_gigpo_trajectory_stats_keep_a_lone_episode_raw_and_the_step_accepts_them():
    from crs.methods.gigpo import gigpo, gigpo_advantages

    tb = _tb([["A"], ["B", "C"]], [[1.0], [0.0, 2.0]], group_size=1)  # two one-rollout tasks
    _, A_E, _ = gigpo_advantages(tb, episode_stats="trajectories", invalid_penalty=0.0)
    assert_close(A_E, torch.tensor([[1.0, 0.0], [2.0, 2.0]]))  # singleton: the raw episode return
    b = _batch([1.0])
    assert gigpo(b, episode_stats="trajectories", mode="mean_std_norm") is b


def test_gigpo_shared_anchor_fraction_counts_within_tasks_only():
    from crs.methods.gigpo import METHOD

    # issue 17's tasks [A] [B] | [A] [A]: only task 1's A is shared -> 2 of 4 units
    tb = _tb([["A"], ["B"], ["A"], ["A"]], [[0.0], [0.0], [1.0], [0.0]], group_size=2)
    assert METHOD.turn_credit(tb, 2, invalid_penalty=0.0).metrics["shared_anchor_frac"] == 0.5
    # three one-rollout tasks, anchor ids 0 and 1: no unit shares its state with another rollout
    tb = _tb([["A", "B"], ["A"], ["A"]], [[0.0, 1.0], [0.0], [0.0]], group_size=1)
    assert METHOD.turn_credit(tb, 1, invalid_penalty=0.0).metrics["shared_anchor_frac"] == 0.0


# -- issue 17, last pass: check_run's trainer kind, separator, list end, the check's args; A²TGPO's turn credit


def test_chain_check_run_reads_trainer_kind_with_grpo_as_default(monkeypatch):
    from omegaconf import OmegaConf

    from crs.methods.chain import CreditChain

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    no_kind = OmegaConf.create({"trainer": {}, "benchmark": {"name": "arithmetic"}})
    CreditChain({"focal_grpo": {}}).check_run(no_kind)  # no trainer.kind: a grpo run
    with pytest.raises(ConfigError) as info:
        CreditChain({"dpo": {"data_file": None}}).check_run(no_kind)
    assert str(info.value) == "method dpo runs on trainer.kind=dpo, not trainer.kind=grpo"
    dpo = OmegaConf.create({"trainer": {"kind": "dpo"}, "benchmark": {"name": "arithmetic"}})
    CreditChain({"dpo": {}}).check_run(dpo)  # the configured kind is read, not the default


def test_chain_check_run_joins_trainer_kinds_closes_the_list_and_passes_the_args(monkeypatch):
    from omegaconf import OmegaConf

    from crs.methods.chain import CreditChain

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    seen = []
    table = {
        "two": _own("two", trainers=("grpo", "rloo")),
        "seen": _own("seen", check=lambda cfg, args: seen.append((cfg.benchmark.name, dict(args)))),
    }
    cfg = OmegaConf.create({"trainer": {"kind": "dpo"}, "benchmark": {"name": "arithmetic"}})
    with pytest.raises(ConfigError) as info:
        CreditChain({"two": {}}, methods=table).check_run(cfg)
    assert str(info.value) == "method two runs on trainer.kind=grpo|rloo, not trainer.kind=dpo"
    cfg = OmegaConf.create({"trainer": {"kind": "grpo"}, "benchmark": {"name": "arithmetic"}})
    CreditChain({"seen": {"x": 0.5}}, methods=table).check_run(cfg)
    assert seen == [("arithmetic", {"x": 0.5, "y": 2.0})]  # the step's own check gets its arguments
    with pytest.raises(ConfigError) as info:
        CreditChain({"pure": {}}).check_run(OmegaConf.create({"trainer": {}, "benchmark": {"name": "maze"}}))
    import re  # the list of multi-turn step methods (grows with the registry) ends with one ")"

    assert re.fullmatch(r".*\(step and turn methods there: [a-z0-9_]+(, [a-z0-9_]+)*\)", str(info.value))


def test_a2tgpo_turn_credit_passes_gamma_alpha_beta_through():
    import math

    from crs.methods.a2tgpo import METHOD

    # the geometry of test_a2tgpo_defaults_on_a_group_of_two_with_a_padded_turn, with γ ½, α 0.7, β 0.6
    ig = [[0.2, 0.6, 0.0, 0.0], [0.4, 0.2, 0.0, 0.0]]
    tb = _a2_turns([0, 0], [[1, 1, 1, 0], [1, 1, 1, 1]], [[1, 1, 0, 0], [1, 1, 0, 0]], ig, [1.0, 0.0])
    out = METHOD.turn_credit(tb, 2, gamma=0.5, alpha=0.7, beta=0.6, ig_type="prob_diff")
    h1, h2, r = _z(0.1, 0.01), _z(0.2, 0.04), _z(0.5, 0.25)
    s2 = math.sqrt(2)  # D_0 = îg_0 + γ·îg_1 over n = 2, D_1 = îg_1 (n = 1); A = R̂ + α·D/√n on tool turns
    want = torch.tensor(
        [
            [r + 0.7 * (0.5 * h2 - h1) / s2, r + 0.7 * h2, r, 0.0],
            [-r + 0.7 * (h1 - 0.5 * h2) / s2, -r - 0.7 * h2, -r, -r],
        ]
    )
    assert_close(out.advantages, want)

    def cs(x):  # 1 + β·(2σ(x) − 1)
        return 1 + 0.6 * (2 / (1 + math.exp(-x)) - 1)

    c = [[cs(-h1), cs(h2), 1.0, 1.0], [cs(h1), cs(-h2), 1.0, 1.0]]
    assert_close(out.clip_scale, torch.tensor(c))
    assert out.metrics == pytest.approx(
        {"ig_mean": 0.35, "clip_scale_mean": (c[0][0] + c[0][1] + c[1][0] + c[1][1]) / 4}
    )


def test_gigpo_turn_credit_of_a_batch_without_turns_has_zero_metrics():
    from crs.methods.gigpo import METHOD

    # reachable since _anchor_key handles K = 0: no unit, so no mean to take (not NaN, not 1)
    out = METHOD.turn_credit(_tb([[], []], [[], []]), 2)
    assert out.metrics == {"shared_anchor_frac": 0.0, "step_adv_abs": 0.0, "episode_adv_abs": 0.0}


def test_matchtir_three_call_turns_in_one_episode_and_the_configured_lambda():
    import dataclasses

    from crs.methods.matchtir import METHOD

    # one episode: add, sub, mul calls in turns 0-2 (add and sub exact, mul's value wrong: 2/3), then the
    # answer turn (success: 1). Turn rewards 1, 1, 2/3, 1: each turn reads its own slice of the scores
    calls = [[[("add", {"a": 3})], [("sub", {"b": 1})], [("mul", {"c": 2})], []]]
    gold = [[_gold("add", a=3), _gold("sub", b=1), _gold("mul", c=5)]]
    tb = _tb([["w", "x", "y", "z"]], [[0] * 4], calls=calls, gold=gold, success=[True], group_size=1)
    tb = dataclasses.replace(tb, has_call=torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    out = METHOD.turn_credit(tb, 1, lam=0.5)
    # a singleton keeps raw R = 11/3 and raw G_k = r_k + λ·G_{k+1} (λ ½): 43/24, 19/12, 7/6, 1; A = (R + G)/2
    R = 11 / 3
    want = torch.tensor([[(R + 43 / 24) / 2, (R + 19 / 12) / 2, (R + 7 / 6) / 2, (R + 1) / 2]])
    assert_close(out.advantages, want)
    assert out.metrics == pytest.approx({"call_reward": 8 / 9, "traj_reward": 11 / 3})


def test_matchtir_metrics_with_one_call_turn_and_a_padded_slot():
    import dataclasses

    from crs.methods.matchtir import METHOD

    # row 0: an exact call, then the answer (success); row 1: one answer turn (failure) and a padded slot
    calls = [[[("add", {"a": 3})], []], [[]]]
    tb = _tb(
        [["x", "y"], ["x"]],
        [[0, 0], [0]],
        calls=calls,
        gold=[[_gold("add", a=3)]] * 2,
        success=[True, False],
        group_size=1,
    )
    tb = dataclasses.replace(tb, has_call=torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    out = METHOD.turn_credit(tb, 1)
    # call reward: 1 over the one call turn (not clamped to 2); trajectory rewards 2 and 0
    assert out.metrics == pytest.approx({"call_reward": 1.0, "traj_reward": 1.0})


def _pure_three_rows():
    from crs.steps.segment import segment_batch

    # a group of three two-token rows, one step each (ending at the last token)
    ids, cmask = torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.ones(3, 2, dtype=torch.long)
    steps = segment_batch(ids, cmask, frozenset({7}))
    assert steps.valid.tolist() == [[True]] * 3 and steps.end_mask().tolist() == [[0, 1]] * 3
    return steps, cmask.float()


def test_pure_strict_form_baseline_over_a_group_of_three():
    from crs.methods.pure import pure_advantages

    steps, mask = _pure_three_rows()
    p, solved = torch.tensor([[0.5], [-1.0], [0.25]]), torch.zeros(3, dtype=torch.bool)
    got = pure_advantages(
        p, steps, mask, solved, 3, form="strict", vr_coef=0.0, mask_separator=False, whiten=False
    )
    # r = (0, p_i); G_t = min_{t' ≥ t} r: (0, .5), (−1, −1), (0, .25), totals .5, −2, .25; the others'
    # total b_i = −1.75, .75, −1.5 over (G − 1)·N = 2·2 tokens: G − b/4
    want = torch.tensor([[0.4375, 0.9375], [-1.1875, -1.1875], [0.375, 0.625]])
    assert_close(got, want)


def test_pure_strict_form_whitens_over_the_non_separator_tokens():
    from crs.methods.pure import pure_advantages

    steps, mask = _pure_three_rows()
    p, solved = torch.tensor([[0.5], [-1.0], [0.25]]), torch.zeros(3, dtype=torch.bool)
    got = pure_advantages(p, steps, mask, solved, 3, form="strict", vr_coef=0.0)  # separator masked, whiten
    # the separator (last) tokens are 0 and out of the statistics: token 0's .4375, −1.1875, .375:
    # mean −.125, unbiased var (.5625² + 1.0625² + .5²)/2 = .84765625
    s = (0.84765625 + 1e-8) ** 0.5
    assert_close(got, torch.tensor([[0.5625 / s, 0.0], [-1.0625 / s, 0.0], [0.5 / s, 0.0]]))


def test_pure_whiten_nonzero_a_lone_nonzero_entry_is_its_own_mean():
    from crs.methods.pure import whiten_nonzero

    # one non-zero valid entry in the batch: mean over it alone (count 1) is itself, so it whitens to 0
    got = whiten_nonzero(torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]), torch.ones(2, 3))
    assert got.tolist() == [[0.0] * 3] * 2


def test_pure_produce_passes_temperature_and_baseline_on_a_batch_where_they_matter():
    from types import SimpleNamespace

    from crs.methods.pure import produce, pure_advantages
    from crs.steps.scorers import RolloutView

    # unwhitened, so a lone surviving token is not whitened to 0; row 1's step scores 0.8, so the token
    # baseline of row 0 (R_1 / L_1 = 0.8) is not 0
    steps, mask = _pure_steps()
    z = torch.zeros(2, 1, dtype=torch.long)
    succ = torch.tensor([True, False])
    view = RolloutView(z, z, torch.zeros(2, 3, dtype=torch.long), mask, [{}, {}], [[], []], steps, succ, 2)
    view.trainer = SimpleNamespace(max_completion_length=6)
    probs = torch.tensor([[0.75, 0.25], [0.9, 0.5]])
    signed = torch.tensor([[0.5, -0.5], [0.8, 0.0]])  # 2p − 1 on valid steps
    fixed = {"vr_coef": 0.0, "mask_separator": False, "whiten": False}
    for args, default in (
        ({"form": "softmin", "temperature": 0.5, "baseline": "none"}, {"temperature": 0.1}),
        ({"form": "sum", "temperature": 0.1, "baseline": "none"}, {"baseline": "token"}),
    ):
        want = pure_advantages(signed, steps, mask, succ, 2, width=6, **args, **fixed)
        other = pure_advantages(signed, steps, mask, succ, 2, width=6, **{**args, **default}, **fixed)
        assert not torch.allclose(want, other)  # the argument is visible on this batch
        assert_close(produce(view, probs, "prob", {**args, **fixed}, torch.zeros(2))["pure_adv"], want)


def test_matchtir_soft_turn_rewards_default_reg_0_1():
    from crs.methods.matchtir import matchtir_advantages, turn_rewards

    calls = [[[("f", {"a": 1}), ("f", {"a": 2})], []]]
    tb = _tb([["x", "y"]], [[0, 0]], calls=calls, gold=[[_gold("f", a=1), _gold("f", a=2)]], group_size=1)
    x = _soft(0.1)  # the turn's mean of the two calls' soft rewards, as in the soft-rewards test
    assert_close(turn_rewards(tb, "soft"), torch.tensor([[x, 0.0]]))
    assert_close(matchtir_advantages(tb, kind="soft")[1], torch.tensor([[x, 0.0]]))


def test_a2tgpo_turn_credit_defaults_gamma_1_alpha_0_3_beta_0_3():
    import math

    from crs.methods.a2tgpo import METHOD

    ig = [[0.2, 0.6, 0.0, 0.0], [0.4, 0.2, 0.0, 0.0]]
    tb = _a2_turns([0, 0], [[1, 1, 1, 0], [1, 1, 1, 1]], [[1, 1, 0, 0], [1, 1, 0, 0]], ig, [1.0, 0.0])
    out = METHOD.turn_credit(tb, 2)
    h1, h2, r, s2 = _z(0.1, 0.01), _z(0.2, 0.04), _z(0.5, 0.25), math.sqrt(2)
    want = [
        [r + 0.3 * (h2 - h1) / s2, r + 0.3 * h2, r, 0.0],
        [-r + 0.3 * (h1 - h2) / s2, -r - 0.3 * h2, -r, -r],
    ]
    assert_close(out.advantages, torch.tensor(want))

    def cs(x):
        return 1 + 0.3 * (2 / (1 + math.exp(-x)) - 1)

    assert_close(out.clip_scale, torch.tensor([[cs(-h1), cs(h2), 1.0, 1.0], [cs(h1), cs(-h2), 1.0, 1.0]]))
