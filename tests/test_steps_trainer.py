"""The step hook inside the real trainer, on one rollout of a tiny model (bifurcation prompts).

- the rollout carries per-token ``crs_pure_adv`` / ``crs_decisive`` tensors of the completion width;
- ``pure``'s loss gradient equals plain TRL's gradient when TRL is fed PURE's token advantages by hand
  (so the credit step really replaces GRPO's advantages, on every token, in the loss);
- ``mix = 0`` gives GRPO's gradient back;
- the localization metrics are logged.

    pytest tests/test_steps_trainer.py
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from crs.benchmarks import build_benchmark
from crs.methods.chain import CreditChain
from crs.steps.hook import StepHook
from crs.testing import cpu_grpo_config
from crs.trainers.grpo import CreditGRPOTrainer


def varied_reward(completion_ids, **kwargs):
    return [float(sum(ids) % 7) / 7.0 for ids in completion_ids]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), tok


BENCH_CFG = {
    "name": "bifurcation",
    "min_terms": 2,
    "max_terms": 3,
    "max_operand": 9,
    "n_train": 8,
    "n_eval": 4,
}


def _trainer(model_and_tok, tmp_path, credit):
    model, tok = model_and_tok
    bench = build_benchmark(BENCH_CFG, 0)
    chain = CreditChain(credit)
    hook = StepHook(chain, {"separators": [",", "."], "scorer": "rule"}, bench, tok, None, None)
    tr = CreditGRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=[varied_reward],
        args=cpu_grpo_config(tmp_path, max_completion_length=16),
        train_dataset=Dataset.from_dict({"prompt": list(bench.train["prompt"])}),
        processing_class=tok,
        credit=chain,
        schedule=lambda p: 1.0,
        step_hook=hook,
    )
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


def _rollout(tr):
    torch.manual_seed(0)
    return tr._prepare_inputs(next(iter(tr.get_train_dataloader())))


def _grad(tr, inputs, plain=False):
    tr.model.zero_grad()
    loss = tr._compute_loss(tr.model, dict(inputs)) if plain else tr.compute_loss(tr.model, dict(inputs))
    loss.backward()
    return torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None]).clone()


def test_pure_tokens_travel_and_replace_advantages(model_and_tok, tmp_path):
    tr = _trainer(model_and_tok, tmp_path, {"pure": {"mix": 1.0}})
    inputs = _rollout(tr)
    B, T = inputs["completion_ids"].shape
    assert inputs["crs_pure_adv"].shape == (B, T) and inputs["crs_decisive"].shape == (B, T)
    assert inputs["crs_pure_adv"].abs().sum() > 0
    # perturb old log-probs so the ratio is not 1 and the clip matters (on-policy GRPO grads hide masks)
    inputs["old_per_token_logps"] = torch.zeros(B, T) - 2.0
    g_crs = _grad(tr, inputs)
    fed = dict(inputs)
    fed["advantages"] = inputs["crs_pure_adv"] * inputs["completion_mask"]
    g_trl = _grad(tr, fed, plain=True)
    torch.testing.assert_close(g_crs, g_trl, rtol=1e-5, atol=1e-7)
    g_grpo = _grad(tr, inputs, plain=True)
    assert not torch.allclose(g_crs, g_grpo)
    metrics = tr._metrics["train"]
    assert metrics["loc/adv_share"] and 0 <= metrics["loc/adv_share"][-1] <= 1
    assert metrics["steps/per_completion"]


def test_pure_mix_zero_is_grpo(model_and_tok, tmp_path):
    tr = _trainer(model_and_tok, tmp_path, {"pure": {"mix": 0.0}})
    inputs = _rollout(tr)
    inputs["old_per_token_logps"] = torch.zeros_like(inputs["completion_mask"], dtype=torch.float32) - 2.0
    torch.testing.assert_close(_grad(tr, inputs), _grad(tr, inputs, plain=True), rtol=1e-5, atol=1e-7)
