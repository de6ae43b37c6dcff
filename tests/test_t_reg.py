"""T-REG's golden tests from its equations (docs/methods/wave3.md §2.7: T1-T5, T7, T8), on the pure functions.

Each guards a planted bug (docs/t_reg.md lists which mutation each one killed).

    python -m pytest tests/test_t_reg.py -q
"""

import math

import pytest
import torch

from crs.credit import CreditBatch
from crs.errors import ConfigError
from crs.methods import METHODS
from crs.methods.chain import CreditChain
from crs.methods.t_reg import pair_weight, reg_loss, t_reg
from crs.prefs.rewards import contrastive_token_rewards


def test_t1_t2_t3_contrastive_token_reward():
    got = contrastive_token_rewards(torch.tensor([-1.0, -1.5, -3.0]), torch.tensor([-2.0, -1.5, -1.0]))
    assert got.tolist() == pytest.approx([0.231059, 0.0, -0.380797], abs=1e-6)


def test_t4_reg_loss_sum_form_and_mean():
    logps, rhat, mask = torch.tensor([[-0.5, -1.0]]), torch.tensor([[0.2, 0.1]]), torch.ones(1, 2)
    assert reg_loss(logps, rhat, mask, 0.1).item() == pytest.approx(0.02, abs=1e-7)
    assert reg_loss(logps, rhat, mask, 0.1, normalize="mean").item() == pytest.approx(0.01, abs=1e-7)
    # padding tokens count for nothing
    padded = reg_loss(
        torch.tensor([[-0.5, -1.0, -7.0]]), torch.tensor([[0.2, 0.1, 0.4]]), torch.tensor([[1.0, 1, 0]]), 0.1
    )
    assert padded.item() == pytest.approx(0.02, abs=1e-7)


def test_t5_pair_weight_and_dpo_loss():
    w = pair_weight(torch.tensor([0.3]), torch.tensor([0.1]))
    assert w.item() == pytest.approx(0.450166, abs=1e-6)
    assert torch.nn.functional.softplus(torch.tensor(-0.2)).item() == pytest.approx(0.598139, abs=1e-6)


def _pair_batch(logps, rhat, implicit, beta=0.1):
    mask = torch.ones_like(logps)
    return CreditBatch(
        advantages=torch.zeros(logps.size(0)),
        mask=mask,
        logps=logps,
        features={
            "token_reward": rhat,
            "implicit_reward": implicit,
            "beta": torch.full((logps.size(0),), beta),
        },
    )


def test_t_reg_step_is_alpha_w_times_both_regularisers():
    logps = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]])
    rhat = torch.tensor([[0.2, 0.1], [-0.3, 0.05]])
    implicit = torch.tensor([0.3, 0.1])  # r_DPO(y_w), r_DPO(y_l)
    out = t_reg(_pair_batch(logps, rhat, implicit), alpha=0.5)
    reg_w = -0.1 * (0.2 * -0.5 + 0.1 * -1.0)
    reg_l = -0.1 * (-0.3 * -2.0 + 0.05 * -0.1)
    w = 1 / (1 + math.exp(0.2))
    assert out.features["pref_reg"].item() == pytest.approx(0.5 * w * (reg_w + reg_l), abs=1e-7)
    static = t_reg(_pair_batch(logps, rhat, implicit), alpha=0.5, weighting="static")
    assert static.features["pref_reg"].item() == pytest.approx(0.5 * (reg_w + reg_l), abs=1e-7)
    assert t_reg(_pair_batch(logps, rhat, implicit), alpha=0.0).features["pref_reg"].item() == 0.0


def test_t7_one_sgd_step_raises_positive_and_lowers_negative_tokens():
    logits = torch.zeros(1, 2, 3, requires_grad=True)  # two positions, three-token vocabulary
    targets = torch.tensor([[0, 1]])
    rhat = torch.tensor([[0.3, -0.3]])

    def token_logps(lg):
        return torch.log_softmax(lg, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    before = token_logps(logits).detach()
    reg_loss(token_logps(logits), rhat, torch.ones(1, 2), 0.1).sum().backward()
    with torch.no_grad():
        after = token_logps(logits - 1.0 * logits.grad)
    assert after[0, 0] > before[0, 0]
    assert after[0, 1] < before[0, 1]


def test_t8_detached_weight_carries_no_gradient():
    chosen = torch.tensor([0.3], requires_grad=True)
    rejected = torch.tensor([0.1], requires_grad=True)
    assert not pair_weight(chosen, rejected, detach=True).requires_grad
    pair_weight(chosen, rejected, detach=False).sum().backward()
    assert chosen.grad is not None and chosen.grad.abs().item() > 0
    # through the step: with detach_weight the regulariser's gradient on r_DPO is zero
    implicit = torch.tensor([0.3, 0.1], requires_grad=True)
    logps = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], requires_grad=True)
    batch = _pair_batch(logps, torch.tensor([[0.2, 0.1], [-0.3, 0.05]]), implicit)
    t_reg(batch, alpha=0.5, detach_weight=True).features["pref_reg"].backward()
    assert implicit.grad is None or implicit.grad.abs().sum().item() == 0.0
    implicit.grad = None
    t_reg(batch, alpha=0.5, detach_weight=False).features["pref_reg"].backward()
    assert implicit.grad.abs().sum().item() > 0


def test_schedule_drives_alpha_and_checks_are_one_line():
    chain = CreditChain({"dpo": {}, "t_reg": {"alpha": 0.5, "drive": {"knob": "alpha", "neutral": 0.0}}})
    assert chain.knobs(0.5) == {"t_reg/alpha": 0.25}
    with pytest.raises(ConfigError, match="alpha"):
        CreditChain({"t_reg": {"alpha": -1.0}})


def test_only_preference_methods_claim_the_dpo_trainer():
    assert {n for n, m in METHODS.items() if "dpo" in m.trainers} == {"dpo", "t_reg"}
    assert METHODS["t_reg"].trainers == ("dpo",) and METHODS["dpo"].trainers == ("dpo",)
    for name in ("alpha", "detach_weight", "normalize", "weighting", "better_template", "worse_template"):
        assert "T-REG" in METHODS["t_reg"].help["alpha"] and METHODS["t_reg"].help[name]
