"""verl's ``token-mean`` divisor on *every* optimizer step of a rollout, not only its first.

With ``steps_per_generation`` S > ``gradient_accumulation_steps`` GA one rollout (S micro-batches) feeds
S/GA optimizer steps; the k-th of them accumulates micro-batches ``k·GA … k·GA+GA−1`` and must divide by
*their* trained-token count (``CreditGRPOTrainer._token_mean_items``). tests/test_trainer.py checks the
first optimizer step against plain TRL; here the divisor is checked on hand-made masks for every micro-step
of a rollout (also with ``num_iterations`` > 1), and the gradients of the second optimizer step of a real
rollout are compared with one plain-TRL batch divided by that step's token count.

    pytest tests/test_token_mean.py
"""

# ruff: noqa: F811  (model_and_tok is the fixture shared with tests/test_trainer.py)
from __future__ import annotations

import copy

import pytest
import torch
from helpers.policy import policy_logps_and_entropies
from test_trainer import _dataset, model_and_tok, varied_reward  # noqa: F401  (model_and_tok: a fixture)
from trl import GRPOTrainer

from crs.methods.chain import CreditChain
from crs.testing import cpu_grpo_config
from crs.trainers.grpo import CreditGRPOTrainer


def _trainer(cls, model_and_tok, tmp_path, args, **crs_kw):
    model, tok = model_and_tok
    kw = dict(
        model=copy.deepcopy(model),
        reward_funcs=[varied_reward],
        args=cpu_grpo_config(tmp_path, **args),
        train_dataset=_dataset(),
        processing_class=tok,
    )
    if cls is CreditGRPOTrainer:
        kw.update(credit=crs_kw.pop("credit", CreditChain({})), schedule=lambda p: 1.0, **crs_kw)
    tr = cls(**kw)
    tr.model.train()
    return tr


def _chunk(trained: int, rows: int = 4, T: int = 6, tool_off: int = 0) -> dict[str, torch.Tensor]:
    """A buffered micro-batch whose loss mask (completion · tool) has exactly ``trained`` tokens; the
    completion mask alone has ``tool_off`` more (tool tokens are not trained)."""
    flat = torch.zeros(rows * T)
    flat[: trained + tool_off] = 1.0
    tool = torch.ones(rows * T)
    tool[trained : trained + tool_off] = 0.0
    return {"completion_mask": flat.view(rows, T).long(), "tool_mask": tool.view(rows, T).long()}


# ------------------------------------------------------------------------------ the divisor itself


@pytest.mark.parametrize("num_iterations", [1, 2])
def test_token_mean_divisor_on_every_optimizer_step_of_a_rollout(model_and_tok, tmp_path, num_iterations):
    S, GA = 4, 2
    tr = _trainer(
        CreditGRPOTrainer,
        model_and_tok,
        tmp_path,
        {
            "loss_type": "dapo",
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": GA,
            "steps_per_generation": S,
            "num_iterations": num_iterations,
        },
    )
    tr.current_gradient_accumulation_steps = GA
    trained = [3, 5, 7, 11]  # micro-batch 0..3 of the rollout; chunk 2 also holds 4 tool tokens
    tr._buffered_inputs = [_chunk(n, tool_off=4 if j == 2 else 0) for j, n in enumerate(trained)]
    # num_items = trained tokens of this optimizer step's GA micro-batches × S / GA
    first, second = (3 + 5) * S / GA, (7 + 11) * S / GA
    per_step = [first, first, second, second]
    expected = per_step * num_iterations  # each iteration walks the same S micro-batches again
    for rollout in range(2):  # and the next rollout (a new buffer at micro-step S·num_iterations) alike
        for k, want in enumerate(expected):
            step = rollout * S * num_iterations + k
            tr._step = step
            mask = (
                tr._buffered_inputs[k % S]["completion_mask"] * tr._buffered_inputs[k % S]["tool_mask"]
            ).float()
            got = tr._token_mean_items("train", mask)
            assert float(got) == pytest.approx(want), (step, float(got), want)
    # evaluation: no accumulation, the batch's own count
    assert float(tr._token_mean_items("eval", _chunk(9)["completion_mask"].float())) == 9.0


def test_token_mean_divisor_when_ga_equals_steps_per_generation(model_and_tok, tmp_path):
    tr = _trainer(
        CreditGRPOTrainer,
        model_and_tok,
        tmp_path,
        {"loss_type": "dapo", "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2},
    )
    assert tr.args.steps_per_generation == 2
    tr.current_gradient_accumulation_steps = 2
    tr._buffered_inputs = [_chunk(6), _chunk(10)]
    for step in range(4):  # two rollouts, one optimizer step each: (6 + 10) × S / GA
        tr._step = step
        assert float(tr._token_mean_items("train", _chunk(6)["completion_mask"].float())) == 16.0


# --------------------------------------------------------- gradients of the second optimizer step


def _perturb(tr, inputs, seed):
    """Old log-probs that differ from the policy: ratio ≠ 1, some tokens clipped."""
    g = torch.Generator().manual_seed(seed)
    logps = policy_logps_and_entropies(tr, inputs)[0]
    return {**inputs, "old_per_token_logps": logps + 0.3 * torch.randn(logps.shape, generator=g)}


def _grads(tr, loss):
    tr.model.zero_grad()
    out = loss()
    out.backward()
    g = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
    tr.model.zero_grad()
    return out.detach(), g


def _trained(chunk) -> float:
    return float((chunk["completion_mask"] * chunk["tool_mask"]).sum())


def test_second_optimizer_step_of_a_rollout_equals_one_batch_over_its_tokens(model_and_tok, tmp_path):
    """S = 4, GA = 2: optimizer step 2 of the rollout (micro-batches 2, 3) == plain TRL on those two
    micro-batches as one batch, divided by their trained-token count (not micro-batches 0, 1's)."""
    S, GA = 4, 2
    chain = CreditChain({"tp_schedule": {"withhold": 0.4}})  # uneven trained lengths per micro-batch
    ours = _trainer(
        CreditGRPOTrainer,
        model_and_tok,
        tmp_path / "c",
        {
            "loss_type": "dapo",
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": GA,
            "steps_per_generation": S,
        },
        credit=chain,
    )
    ours.current_gradient_accumulation_steps = GA
    plain = _trainer(
        GRPOTrainer, model_and_tok, tmp_path / "p", {"loss_type": "dapo", "per_device_train_batch_size": 8}
    )
    plain.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    batch = next(iter(ours.get_train_dataloader()))
    ours._step = 0
    ours._prepare_inputs(batch)  # micro-step 0 generates the rollout and buffers its S micro-batches
    chunks = []
    for j in (2, 3):
        ours._step = j
        chunks.append(_perturb(ours, ours._prepare_inputs(batch), seed=11 + j))
    buf = ours._buffered_inputs
    assert len(buf) == S
    assert _trained(buf[2]) + _trained(buf[3]) != _trained(buf[0]) + _trained(buf[1]), (
        "the test needs micro-batches 0+1 and 2+3 of different trained-token counts"
    )

    def accumulated():
        total = 0.0
        for j, c in zip((2, 3), chunks):
            ours._step = j
            total = total + ours.compute_loss(ours.model, dict(c))
        return total

    got = _grads(ours, accumulated)
    full = {
        k: torch.cat([c[k] for c in chunks])
        for k in chunks[0]
        if torch.is_tensor(chunks[0][k]) and chunks[0][k].dim() >= 1
    }
    full["num_items_in_batch"] = (full["completion_mask"] * full["tool_mask"]).sum()
    expected = _grads(plain, lambda: plain._compute_loss(plain.model, dict(full)))
    assert expected[1].abs().sum() > 0, "the reference gradient must not vanish"
    torch.testing.assert_close(got[0], expected[0], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(got[1], expected[1], rtol=1e-4, atol=1e-7)
    # the comparison tells the right divisor from the first optimizer step's
    wrong = {**full, "num_items_in_batch": torch.tensor(_trained(buf[0]) + _trained(buf[1]))}
    other = _grads(plain, lambda: plain._compute_loss(plain.model, dict(wrong)))
    assert not torch.allclose(got[1], other[1], rtol=1e-3, atol=1e-6)
