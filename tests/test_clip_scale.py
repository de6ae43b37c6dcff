"""A method's per-token clip scale (``crs_clip_scale``, A²TGPO's adaptive turn-level clipping) against a
hand-written PPO loss, on one real rollout of a tiny model.

``CreditGRPOTrainer.compute_loss`` turns a ``[B,T]`` scale ``c`` into TRL's clip range
``[1 − c·ε_low, 1 + c·ε_high]`` per token. On-policy the ratio is 1 and the clip never binds, so the
old log-probs are perturbed (ratios well outside ``1 ± ε`` on many tokens) and the loss and parameter
gradients are compared with an independent computation of the clipped objective.

    pytest tests/test_clip_scale.py
"""

# ruff: noqa: F811  (model_and_tok is the fixture shared with tests/test_trainer.py)
from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from test_trainer import model_and_tok, varied_reward  # noqa: F401  (model_and_tok: a shared fixture)
from trl import GRPOTrainer

from crs.methods.chain import CreditChain
from crs.testing import cpu_grpo_config
from crs.trainers.grpo import CreditGRPOTrainer


def _trainer(model_and_tok, tmp_path, **args):
    model, tok = model_and_tok
    tr = CreditGRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=[varied_reward],
        args=cpu_grpo_config(tmp_path, **args),
        train_dataset=Dataset.from_dict(
            {"prompt": [f"Q: {a}+{b}-{c}\nA:" for a, b, c in [(3, 4, 2), (10, 5, 7), (8, 1, 6), (2, 9, 3)]]}
        ),
        processing_class=tok,
        credit=CreditChain({}),
        schedule=lambda p: 1.0,
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


def _logps(tr, inputs):
    """The policy's per-token log-probs on the rollout, with gradient (TRL's own forward)."""
    logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
        tr,
        tr.model,
        torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
        torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
        inputs["completion_ids"].shape[1],
    )
    return logps


def _rollout(tr, seed=1, scale=0.4):
    """One rollout with old log-probs moved off the policy (ratio ≠ 1, clipping binds on many tokens) and a
    per-token clip scale ``c ∈ [0.25, 2.5]``."""
    torch.manual_seed(0)
    inputs = tr._prepare_inputs(next(iter(tr.get_train_dataloader())))
    assert inputs["advantages"].abs().sum() > 0, "test reward must vary within groups"
    g = torch.Generator().manual_seed(seed)
    shape = inputs["completion_ids"].shape
    with torch.no_grad():
        logps = _logps(tr, inputs)
    inputs = dict(inputs)
    inputs["old_per_token_logps"] = logps + scale * torch.randn(shape, generator=g)
    inputs["crs_clip_scale"] = 0.25 + 2.25 * torch.rand(shape, generator=g)
    return inputs


def _hand_loss(tr, inputs, eps_low, eps_high, scale_high=True):
    """TRL's ``grpo`` loss (per-sequence token mean, then the batch mean) with the clip range
    ``[1 − c·ε_low, 1 + c·ε_high]`` written out token by token."""
    c = inputs["crs_clip_scale"]
    lp = _logps(tr, inputs)
    ratio = torch.exp(lp - inputs["old_per_token_logps"])
    lo = 1 - c * eps_low
    hi = 1 + (c * eps_high if scale_high else eps_high * torch.ones_like(c))
    clipped = torch.minimum(torch.maximum(ratio, lo), hi)
    A = inputs["advantages"].unsqueeze(1)
    per_token = -torch.min(ratio * A, clipped * A)
    m = inputs["completion_mask"].float()
    return ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)).mean()


def _crs_loss(tr, inputs):
    return tr.compute_loss(tr.model, dict(inputs))


def _grads(tr, loss_fn, inputs):
    tr.model.zero_grad()
    loss = loss_fn(tr, inputs)
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
    tr.model.zero_grad()
    return loss.detach(), g


def _bound_counts(inputs, eps_low, eps_high):
    """Tokens where the scaled upper (lower) clip binds and the unscaled one would not, or vice versa."""
    c = inputs["crs_clip_scale"]
    with torch.no_grad():
        m = inputs["completion_mask"].bool()
        A = inputs["advantages"].unsqueeze(1).expand_as(c)
        r = torch.exp(inputs["_lp"] - inputs["old_per_token_logps"])
        high = ((r > 1 + c * eps_high) != (r > 1 + eps_high)) & (A > 0) & m
        low = ((r < 1 - c * eps_low) != (r < 1 - eps_low)) & (A < 0) & m
    return int(high.sum()), int(low.sum())


@pytest.mark.parametrize("eps", [(0.2, None), (0.2, 0.28)], ids=["symmetric", "clip_higher"])
def test_clip_scale_scales_both_bounds_per_token(model_and_tok, tmp_path, eps):
    eps_low, eps_high = eps
    tr = _trainer(model_and_tok, tmp_path, epsilon=eps_low, epsilon_high=eps_high)
    eps_high = eps_high if eps_high is not None else eps_low
    assert (tr.epsilon_low, tr.epsilon_high) == (eps_low, eps_high)
    inputs = _rollout(tr)
    with torch.no_grad():
        lp = _logps(tr, inputs)
    high, low = _bound_counts({**inputs, "_lp": lp}, eps_low, eps_high)
    assert high > 0 and low > 0, "the scale must change which tokens are clipped on both sides"

    got = _grads(tr, _crs_loss, inputs)
    expected = _grads(tr, lambda t, i: _hand_loss(t, i, eps_low, eps_high), inputs)
    assert expected[1].abs().sum() > 0, "the reference gradient must not vanish"
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-7)
    # the trainer's ε are restored after the call (the scale is a per-batch tensor, not a setting)
    assert (tr.epsilon_low, tr.epsilon_high) == (eps_low, eps_high)

    # the comparison sees a clip range whose upper bound is not scaled, and a loss without the scale
    unscaled_high = _grads(tr, lambda t, i: _hand_loss(t, i, eps_low, eps_high, scale_high=False), inputs)
    assert not torch.allclose(got[1], unscaled_high[1], rtol=1e-3, atol=1e-6)
    no_scale = {k: v for k, v in inputs.items() if k != "crs_clip_scale"}
    assert not torch.allclose(got[1], _grads(tr, _crs_loss, no_scale)[1], rtol=1e-3, atol=1e-6)


def test_clip_scale_of_one_is_the_plain_clip(model_and_tok, tmp_path):
    tr = _trainer(model_and_tok, tmp_path)
    inputs = _rollout(tr, seed=3)
    ones = {**inputs, "crs_clip_scale": torch.ones_like(inputs["crs_clip_scale"])}
    plain = {k: v for k, v in inputs.items() if k != "crs_clip_scale"}
    a, b = _grads(tr, _crs_loss, ones), _grads(tr, _crs_loss, plain)
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
