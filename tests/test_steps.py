"""Golden tests for the step substrate and the step-level methods (spec: methods-steps.md §1–§3).

Every batch is hand-made and every expected number is written out from the spec's formula with plain
Python arithmetic, never obtained from the implementation.

Shared toy batch (separator id 9, EOS 2, pad 0), one group of two completions:

    row 0: [5, 5, 9, 6, 6, 2]   steps [0..2] (sep at 2, 2 content tokens), [3..5] (EOS at 5, 2 content)
    row 1: [5, 9, 6, 2, 0, 0]   steps [0..1] (sep at 1, 1 content token),  [2..3] (EOS at 3, 1 content)
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from crs.methods.capo import capo_advantages, capo_token_rewards
from crs.methods.oprl import batch_max_norm, step_advantages
from crs.methods.pure import pure_advantages, softmin_step_rewards, token_baseline
from crs.steps.implicit import dpo_pair_loss, step_log_ratios, trajectory_scores
from crs.steps.scorers import vote
from crs.steps.segment import segment_batch, segment_ids

SEP = frozenset({9})
IDS = torch.tensor([[5, 5, 9, 6, 6, 2], [5, 9, 6, 2, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


def steps():
    return segment_batch(IDS, MASK, SEP)


def sig(x):
    return 1 / (1 + math.exp(-x))


# ================================================================================================ segmentation


@pytest.mark.parametrize(
    "ids, ends",
    [
        ([5, 6, 7, 2], [3]),  # no separator: one step ending at the EOS
        ([5, 9, 9, 6, 2], [1, 2, 4]),  # adjacent separators: an empty step (ends 1 → 2)
        ([5, 9, 6, 7], [1, 3]),  # truncated (no EOS): the last step ends at the last token
        ([5, 6, 9], [2]),  # truncated right after a separator: no extra empty step
        ([9], [0]),  # a lone separator
        ([], []),  # nothing generated
    ],
)
def test_segment_tricky_completions(ids, ends):
    assert segment_ids(ids, SEP) == ends


def test_segment_batch_spans_and_counts():
    s = steps()
    assert s.ends.tolist() == [[2, 5], [1, 3]]
    assert s.n_content.tolist() == [[2, 2], [1, 1]]
    assert s.step_id.tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, -1, -1]]
    assert s.spans(1) == [(0, 2), (2, 4)]
    assert s.end_mask().tolist() == [[0, 0, 1, 0, 0, 1], [0, 1, 0, 1, 0, 0]]
    # empty step between adjacent separators has 0 content tokens
    e = segment_batch(torch.tensor([[5, 9, 9, 2]]), torch.ones(1, 4), SEP)
    assert e.n_content.tolist() == [[1, 0, 0]] and e.valid.tolist() == [[True, True, True]]


def test_separator_set_and_texts_on_a_real_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    from crs.steps.segment import separator_token_ids, step_texts

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    sep = separator_token_ids(tok, [",", "."])
    assert {tok.decode([v]) for v in sep} == {",", "."}
    assert tok.eos_token_id not in sep
    text = " 7+5=12, 12-3=9. Answer: 9"
    ids = tok(text, add_special_tokens=False).input_ids + [tok.eos_token_id]
    s = segment_batch(torch.tensor([ids]), torch.ones(1, len(ids)), sep)
    assert step_texts(tok, torch.tensor([ids]), s) == [[" 7+5=12,", " 12-3=9.", " Answer: 9"]]


# ================================================================================================ rule / task


def test_rule_verifier_marks_first_wrong_step_and_answer():
    from crs.steps.rule import verify_steps

    row = {"prompt": "Q: 7+5-3\nA:"}
    assert verify_steps("arithmetic", [" 7+5=12,", " 12-3=9.", " Answer: 9"], row) == [1.0, 1.0, 1.0]
    # a slip at step 2 propagates; the answer chains from what was written, so only step 2 is wrong
    assert verify_steps("arithmetic", [" 7+5=12,", " 12-3=8.", " Answer: 8"], row) == [1.0, 0.0, 1.0]
    # wrong operand copied, a missing step before the answer, garbage, an empty step
    assert verify_steps("arithmetic", [" 7+6=13,", " Answer: 10"], row) == [0.0, 0.0]
    assert verify_steps("arithmetic", [" 7+5=12,", ",", " Answer: 12"], row) == [1.0, 0.0, 0.0]
    # bifurcation: only the first step decides; later steps are irrelevant (score 1)
    assert verify_steps("bifurcation", [" 7+5=13,", " 13-3=1."], row) == [0.0, 1.0]


def test_bifurcation_reward_and_decisive_spans():
    from crs.benchmarks.bifurcation import decisive_spans, first_step_reward

    p = "Q: 7+5-3\nA:"
    comps = [" 7+5=12, 12-3=8. Answer: 8", " 7+5=13, 13-3=10. Answer: 10", " Answer: 9", " 7+6=13, 13-3=10."]
    assert first_step_reward([p] * 4, comps) == [1.0, 0.0, 0.0, 0.0]
    c = comps[0]
    ((s, e),) = decisive_spans(c, {"prompt": p})
    assert c[s:e] == "12" and s == 5
    assert decisive_spans(comps[2], {"prompt": p}) == []


# ================================================================================================ PURE


def test_softmin_weights_and_limit():
    p = torch.tensor([[0.5, -0.5], [1.0, 0.2]])
    valid = torch.ones(2, 2, dtype=torch.bool)
    r = softmin_step_rewards(p, valid, 0.1)
    w00 = 1 / (1 + math.exp(10))
    w10 = 1 / (1 + math.exp(8))
    assert_close(r, torch.tensor([[0.5 * w00, -0.5 * (1 - w00)], [1.0 * w10, 0.2 * (1 - w10)]]))
    # T → 0: Σ_k r_k → min_k p_k; a missing step gets weight 0
    small = softmin_step_rewards(p, valid, 1e-3).sum(-1)
    assert_close(small, torch.tensor([-0.5, 0.2]), atol=1e-4, rtol=0)
    m = softmin_step_rewards(torch.tensor([[0.3, 0.0]]), torch.tensor([[True, False]]), 0.1)
    assert_close(m, torch.tensor([[0.3, 0.0]]))


def _pure_expected(form):
    """PURE OpenRLHF pipeline written out for the shared batch, p = [[.5,-.5],[1,.2]], success = [1,0]."""
    p = [[0.5, -0.5], [1.0, 0.2]]
    if form == "softmin":
        w00, w10 = 1 / (1 + math.exp(10)), 1 / (1 + math.exp(8))
        r = [[p[0][0] * w00, p[0][1] * (1 - w00)], [p[1][0] * w10, p[1][1] * (1 - w10)]]
    else:  # sum
        r = p
    R0, R1 = sum(r[0]), sum(r[1])
    b0, b1 = R1 / 4, R0 / 6  # Σ_{j≠i} R_j / Σ_{j≠i} L_j
    r0 = [r[0][0] - b0 * 2, r[0][1] - b0 * 2]  # n_content = 2, 2
    r1 = [r[1][0] - b1 * 1, r[1][1] - b1 * 1]  # n_content = 1, 1
    v0, v1 = 0 - (-1), -1 - 0  # v = solved − 1, minus the other member's v
    # token rewards: row0 at 2 and 5 (+VR at EOS 5); row1 at 1 and 3 (+VR at 3); reverse cumsum
    g0 = [r0[0] + r0[1] + v0] * 3 + [r0[1] + v0] * 3
    g1 = [r1[0] + r1[1] + v1] * 2 + [r1[1] + v1] * 2 + [0, 0]
    return g0, g1


@pytest.mark.parametrize("form", ["softmin", "sum"])
def test_pure_token_baseline_vr_and_return(form):
    g0, g1 = _pure_expected(form)
    p = torch.tensor([[0.5, -0.5], [1.0, 0.2]])
    A = pure_advantages(
        p,
        steps(),
        MASK.float(),
        torch.tensor([True, False]),
        2,
        form=form,
        mask_separator=False,
        whiten=False,
    )
    assert_close(A, torch.tensor([g0, g1]))
    # separators and the last token get advantage 0
    A = pure_advantages(p, steps(), MASK.float(), torch.tensor([True, False]), 2, form=form, whiten=False)
    keep = torch.tensor([[1, 1, 0, 1, 1, 0], [1, 0, 1, 0, 0, 0]]).float()
    assert_close(A, torch.tensor([g0, g1]) * keep)


def test_pure_whitening_over_nonzero_tokens():
    g0, g1 = _pure_expected("softmin")
    nz = [g0[0], g0[1], g0[3], g0[4], g1[0], g1[2]]
    m = sum(nz) / 6
    var = (
        sum((x - m) ** 2 for x in nz) + 4 * m**2
    ) / 6  # zero-advantage valid positions count in the variance
    s = 1 / math.sqrt(var)
    expected = [
        [(g0[0] - m) * s, (g0[1] - m) * s, 0, (g0[3] - m) * s, (g0[4] - m) * s, 0],
        [(g1[0] - m) * s, 0, (g1[2] - m) * s, 0, 0, 0],
    ]
    A = pure_advantages(
        torch.tensor([[0.5, -0.5], [1.0, 0.2]]), steps(), MASK.float(), torch.tensor([True, False]), 2
    )
    assert_close(A, torch.tensor(expected))


def test_pure_strict_min_form_and_return_baseline():
    # verl 'strict min-form' (branch @ 83f9869, core_algos.py:227-230): G_t = min_{t'≥t} r_t' over the row
    # padded to N, so the padding zeros enter the min too (tests/test_pure_fidelity.py has the full case)
    p = torch.tensor([[0.5, -0.5], [1.0, 0.2]])
    G0 = [-0.5] * 6  # r = [0,0,.5,0,0,-.5]
    G1 = [0.0, 0.0, 0.0, 0.0]  # r = [0,1,0,.2] then padding 0: min(.2, 0) = 0 at the last token
    b0 = sum(G1) / (1 * 6)  # (Σ_group ΣG − ΣG_i)/((n−1)·N), N = 6
    b1 = sum(G0) / (1 * 6)
    expected = [[g - b0 for g in G0], [g - b1 for g in G1] + [0, 0]]
    A = pure_advantages(
        p,
        steps(),
        MASK.float(),
        torch.tensor([True, False]),
        2,
        form="strict",
        vr_coef=0.0,
        mask_separator=False,
        whiten=False,
    )
    assert_close(A, torch.tensor(expected))


def test_token_baseline_leave_one_out():
    R = torch.tensor([1.0, 2.0, 3.0, 0.0])
    L = torch.tensor([2, 3, 4, 5])
    assert_close(token_baseline(R, L, 2), torch.tensor([2 / 3, 1 / 2, 0 / 5, 3 / 4]))


# ================================================================================================ CAPO


def test_capo_vote_matches_the_authors_figure():
    # CAPO figure (andyclsr/CAPO vpca_ver3.pdf): [1,3] [1,2,3] [1,3] [2,3] → vote → [1,3]  (1-based)
    crit = [[{0, 2}, {0, 1, 2}, {0, 2}, {1, 2}]]
    assert vote(crit, 3, "majority").tolist() == [[1, 0, 1]]
    assert vote(crit, 3, "intersection").tolist() == [[0, 0, 1]]
    assert vote(crit, 3, "union").tolist() == [[1, 1, 1]]
    assert vote(crit, 3, "average").tolist() == [[0.75, 0.5, 1.0]]
    assert vote([[]], 2, "majority").tolist() == [[0, 0]]  # no critiques: nothing flagged


def test_capo_penalty_placement_and_group_normalisation():
    flagged = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    R = capo_token_rewards(torch.tensor([1.0, 0.0]), flagged, steps(), MASK)
    # correct answer, step 2 flagged: 2 on step 1 (separator included), 2−1 on step 2 (EOS included)
    # wrong answer, step 1 flagged: −1 on step 1, 0 on step 2, 0 on padding
    assert_close(R, torch.tensor([[2.0, 2, 2, 1, 1, 1], [-1, -1, 0, 0, 0, 0]]))
    A = capo_advantages(R, MASK, 2, "loo_token_mean")
    # row 0 minus the mean over row 1's tokens (−2/4); row 1 minus the mean over row 0's tokens (9/6)
    assert_close(A, torch.tensor([[2.5, 2.5, 2.5, 1.5, 1.5, 1.5], [-2.5, -2.5, -1.5, -1.5, 0, 0]]))
    A = capo_advantages(R, MASK, 2, "group_token_mean")
    mean = 7 / 10
    assert_close(A, (R - mean) * MASK)


# ================================================================================================ OPRL


def test_oprl_step_rewards_dpo_loss_and_advantages():
    lp_phi = torch.tensor([[-1.0, -1.0, -0.5, -2.0, -1.0, -0.1], [-1.0, -1.0, -1.0, -1.0, 0.0, 0.0]])
    lp_old = torch.tensor([[-1.5, -1.0, -0.5, -1.0, -1.0, -0.1], [-0.5, -1.0, -2.0, -1.0, 0.0, 0.0]])
    s = steps()
    q = step_log_ratios(lp_phi, lp_old, s)
    # row 0: step 1 = 0.5 + 0 + 0 ; step 2 = −1 + 0 + 0;  row 1: step 1 = −0.5 + 0 ; step 2 = 1 + 0
    assert_close(q, torch.tensor([[0.5, -1.0], [-0.5, 1.0]]))
    beta = 0.05
    r = beta * q
    valid = s.valid.float()
    Q_mean = trajectory_scores(r, valid, "mean")
    assert_close(Q_mean, torch.tensor([beta * -0.25, beta * 0.25]))
    assert_close(trajectory_scores(r, valid, "sum"), torch.tensor([beta * -0.5, beta * 0.5]))
    loss, n, acc = dpo_pair_loss(Q_mean, torch.tensor([True, False]), 2)
    assert n == 1 and acc == 0.0
    assert_close(loss, torch.tensor(-math.log(sig(beta * -0.25 - beta * 0.25))))
    # all pairs: group of 4 with 2 successes → 4 pairs; an all-success group gives none
    Q = torch.tensor([1.0, 0.0, 2.0, -1.0, 5.0, 5.0])
    loss, n, _ = dpo_pair_loss(Q, torch.tensor([True, False, True, False, True, True]), 2)
    assert n == 2
    assert_close(loss, torch.tensor(-(math.log(sig(1.0)) + math.log(sig(3.0))) / 2))
    # A^S: standardised over all step rewards of the group (Bessel std); istar batch_norm
    AS = step_advantages(r, s.valid, 2)
    vals = [0.025, -0.05, -0.025, 0.05]
    m = sum(vals) / 4
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / 3)
    assert_close(
        AS,
        torch.tensor([[(0.025 - m) / sd, (-0.05 - m) / sd], [(-0.025 - m) / sd, (0.05 - m) / sd]]),
        atol=1e-4,
        rtol=1e-4,
    )
    # |reverse cumsum| per row: row0 [|−0.025|, 0.05], row1 [0.025, 0.05] → max 0.05
    assert_close(batch_max_norm(r, valid), r / (0.05 + 1e-6))


# ================================================================================================ localization


def test_localization_share_on_a_known_batch():
    from crs.steps.localization import loss_weights, share

    adv = torch.tensor([[1.0, -1.0, 2.0, 0.0], [1.5, 0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    dec = torch.tensor([[0.0, 0, 1, 0], [1, 0, 0, 0]])
    # token-mean loss: Σ|A| on decisive = 2 + 1.5, total = 1+1+2+0+1.5+.5 = 6
    num, den = share(adv * loss_weights(mask, None, "dapo"), dec, mask)
    assert_close(num / den, torch.tensor(3.5 / 6))
    # per-sequence normaliser (grpo): row 0 weights 1/4, row 1 weights 1/2
    num, den = share(adv * loss_weights(mask, None, "grpo"), dec, mask)
    assert_close(num / den, torch.tensor((2 / 4 + 1.5 / 2) / (4 / 4 + 2 / 2)))
    # method weights (forking-token selection) drop unselected tokens
    w = torch.tensor([[0.0, 0, 1, 1], [0, 1, 0, 0]])
    num, den = share(adv * loss_weights(mask, w, "dapo"), dec, mask)
    assert_close(num / den, torch.tensor(2.0 / 2.5))


# ================================================================================================ chain wiring


def test_step_methods_mix_token_features_and_fall_back_without_them():
    from crs.credit import CreditBatch
    from crs.methods.chain import CreditChain

    mask = MASK.float()
    feat = torch.arange(12, dtype=torch.float32).view(2, 6)
    batch = CreditBatch(advantages=torch.tensor([1.0, -1.0]), mask=mask, features={"pure_adv": feat})
    chain = CreditChain({"pure": {"mix": 1.0, "drive": {"knob": "mix", "neutral": 0.0}}})
    out = chain.advantage_phase(batch, rho=0.25)
    base = torch.tensor([[1.0] * 6, [-1.0] * 4 + [0, 0]])
    assert_close(out.advantages, 0.75 * base + 0.25 * feat * mask)
    # evaluation loss: no step tensors → GRPO's advantages untouched
    plain = CreditBatch(advantages=torch.tensor([1.0, -1.0]), mask=mask)
    assert_close(chain.advantage_phase(plain, rho=1.0).advantages, torch.tensor([1.0, -1.0]))
    # oprl adds w·A^S to the outcome advantage
    ob = CreditBatch(advantages=torch.tensor([1.0, -1.0]), mask=mask, features={"oprl_step_adv": feat})
    out = CreditChain({"oprl": {"w": 0.5}}).advantage_phase(ob, rho=1.0)
    assert_close(out.advantages, base + 0.5 * feat * mask)


@pytest.mark.parametrize(
    "credit, msg",
    [
        ({"pure": {"form": "max"}}, "pure.form"),
        ({"capo": {"norm": "zscore"}}, "capo.norm"),
        ({"oprl": {"norm": "x"}}, "oprl.norm"),
    ],
)
def test_bad_step_method_arguments_fail_at_config_time(credit, msg):
    from crs.errors import ConfigError
    from crs.methods.chain import CreditChain

    with pytest.raises(ConfigError, match=msg):
        CreditChain(credit)


# ------------------------------------------------------------------------------------ OPRL: padded steps


def test_oprl_trajectory_scores_average_over_valid_steps_only():
    # row 0 has 1 of 2 valid steps (the padded step carries a stray reward that must not count); row 1 has
    # both; row 2 has none (mean of nothing = 0, not a division by zero)
    r = torch.tensor([[1.0, 7.0], [1.0, 3.0], [4.0, 4.0]])
    valid = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert_close(trajectory_scores(r, valid, "mean"), torch.tensor([1.0, 2.0, 0.0]))
    assert_close(trajectory_scores(r, valid, "sum"), torch.tensor([1.0, 4.0, 0.0]))
    # three padded steps out of four: mean of the single valid one
    r4 = torch.tensor([[2.0, 9.0, 9.0, 9.0]])
    assert_close(trajectory_scores(r4, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "mean"), torch.tensor([2.0]))


def test_oprl_step_advantages_and_batch_max_norm_ignore_padded_steps():
    # one group of two rollouts: row 0 has steps (1, 3) and a padded step, row 1 has step (5) and two
    # padded ones; the padded steps hold large stray values
    r = torch.tensor([[1.0, 3.0, 99.0], [5.0, -99.0, 99.0]])
    valid = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # valid rewards 1, 3, 5: mean 3, Bessel std 2; 0 on padded steps
    AS = step_advantages(r, valid, 2)
    assert_close(AS, torch.tensor([[-2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]) / (2.0 + 1e-6))
    # two groups of one rollout each: singleton group → var over n−1 clamped, advantage 0 (r − mean)
    AS1 = step_advantages(r, valid, 1)
    assert_close(AS1[1], torch.zeros(3))
    assert_close(AS1[0], torch.tensor([-1.0, 1.0, 0.0]) / (math.sqrt(2.0) + 1e-6))
    # batch_max: masked rewards (1, 3, 0) and (5, 0, 0); |reverse cumsum| (4, 3, 0) and (5, 0, 0) → max 5
    out = batch_max_norm(r, valid.float())
    assert_close(out, torch.tensor([[1.0, 3.0, 0.0], [5.0, 0.0, 0.0]]) / (5.0 + 1e-6))
