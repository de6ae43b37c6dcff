"""The credit hook against TRL's own loss, on one real rollout of a tiny model.

Each test generates one batch with TRL, then compares crs's loss with an *independent* construction
of what the method means:

- ``grpo`` (empty chain) == plain ``GRPOTrainer`` loss, for every aggregation and with a KL term;
- ``tp_schedule`` == plain TRL on the same rollout with the withheld prefix physically moved into the
  prompt (what the authors' verl code does), for grpo / bnpo / dapo / GSPO;
- ``forking_tokens`` with TRL's semantics == TRL's ``top_entropy_quantile``; with ``normalize: selected``
  it is that loss rescaled by #tokens / #selected;
- ``entropy_adv`` == plain TRL fed hand-computed shaped advantages.

    pytest tests/test_trainer.py
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from crs.credit import CreditChain
from crs.testing import cpu_grpo_config
from crs.trainer import CreditGRPOTrainer


def varied_reward(completion_ids, **kwargs):
    """Deterministic reward with within-group variance (a random tiny model rarely solves anything)."""
    return [float(sum(ids) % 7) / 7.0 for ids in completion_ids]


@pytest.fixture(scope="module")
def model_and_tok(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return model, tok


def _dataset():
    return Dataset.from_dict(
        {"prompt": [f"Q: {a}+{b}-{c}\nA:" for a, b, c in [(3, 4, 2), (10, 5, 7), (8, 1, 6), (2, 9, 3)]]}
    )


def _args(tmp_path, **kw):
    return cpu_grpo_config(tmp_path, **kw)


def _trainer(cls, model_and_tok, tmp_path, args_kw=None, **crs_kw):
    model, tok = model_and_tok
    kw = dict(
        model=copy.deepcopy(model),
        reward_funcs=[varied_reward],
        args=_args(tmp_path, **(args_kw or {})),
        train_dataset=_dataset(),
        processing_class=tok,
    )
    if cls is CreditGRPOTrainer:
        crs_kw.setdefault("credit", CreditChain({}))
        crs_kw.setdefault("schedule", lambda p: 1.0)
        kw.update(crs_kw)
    tr = cls(**kw)
    tr.model.train()
    tr.current_gradient_accumulation_steps = 1
    return tr


def _rollout(tr):
    torch.manual_seed(0)
    batch = next(iter(tr.get_train_dataloader()))
    inputs = tr._prepare_inputs(batch)
    assert inputs["advantages"].abs().sum() > 0, "test reward must vary within groups"
    return inputs


def _entropies(tr, inputs):
    """Token entropies of the (unchanged) policy on the rollout, from TRL's own forward."""
    with torch.no_grad():
        _, ent, _ = GRPOTrainer._get_per_token_logps_and_entropies(
            tr,
            tr.model,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
            inputs["completion_ids"].shape[1],
            compute_entropy=True,
        )
    return ent


def _plain_loss(tr, inputs):
    return tr._compute_loss(tr.model, dict(inputs))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_grpo_identity_equals_plain_trl(model_and_tok, tmp_path, loss_type, beta):
    kw = {"loss_type": loss_type, "beta": beta}
    plain = _trainer(GRPOTrainer, model_and_tok, tmp_path / "p", kw)
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path / "c", kw)
    inputs = _rollout(plain)
    before = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    expected = _plain_loss(plain, inputs)
    got = ours.compute_loss(ours.model, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    # the buffered rollout is never mutated
    assert set(inputs) == set(before)
    for k, v in before.items():
        if torch.is_tensor(v):
            assert torch.equal(inputs[k], v), k


def _move_prefix_to_prompt(inputs, cuts, pad_id):
    """The authors' implementation of TP-Schedule: withheld tokens become part of the prompt."""
    B = inputs["completion_ids"].shape[0]
    prompts, comps = [], []
    for i in range(B):
        p = inputs["prompt_ids"][i][inputs["prompt_mask"][i].bool()]
        L = int(inputs["completion_mask"][i].sum())
        c = inputs["completion_ids"][i][:L]
        prompts.append(torch.cat([p, c[: cuts[i]]]))
        comps.append(c[cuts[i] :])
    P = max(len(p) for p in prompts)
    T = max(len(c) for c in comps)
    out = dict(inputs)
    out["prompt_ids"] = torch.stack([torch.cat([torch.full((P - len(p),), pad_id), p]) for p in prompts])
    out["prompt_mask"] = torch.stack(
        [torch.cat([torch.zeros(P - len(p)), torch.ones(len(p))]).long() for p in prompts]
    )
    out["completion_ids"] = torch.stack([torch.cat([c, torch.full((T - len(c),), pad_id)]) for c in comps])
    out["completion_mask"] = torch.stack(
        [torch.cat([torch.ones(len(c)), torch.zeros(T - len(c))]).long() for c in comps]
    )
    out["num_items_in_batch"] = out["completion_mask"].sum()
    return out


@pytest.mark.parametrize(
    "args_kw",
    [
        {"loss_type": "grpo"},
        {"loss_type": "bnpo"},
        {"loss_type": "dapo"},
        {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4},
    ],
    ids=["grpo", "bnpo", "dapo", "gspo"],
)
@pytest.mark.parametrize("rho", [0.3, 0.75])
def test_tp_schedule_equals_prefix_in_prompt(model_and_tok, tmp_path, args_kw, rho):
    chain = CreditChain({"tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}})
    ours = _trainer(
        CreditGRPOTrainer, model_and_tok, tmp_path / "c", args_kw, credit=chain, schedule=lambda p: rho
    )
    plain = _trainer(GRPOTrainer, model_and_tok, tmp_path / "p", args_kw)
    inputs = _rollout(ours)
    lengths = inputs["completion_mask"].sum(-1).tolist()
    cuts = [min(int(L * rho), L - 1) for L in lengths]  # c_i = min(floor(L_i ρ), L_i − 1), written out
    moved = _move_prefix_to_prompt(inputs, cuts, model_and_tok[1].pad_token_id)
    expected = _plain_loss(plain, moved)
    got = ours.compute_loss(ours.model, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    assert ours._metrics["train"]["schedule/rho"][-1] == pytest.approx(rho)
    trained = sum(L - c for L, c in zip(lengths, cuts)) / sum(lengths)
    assert ours._metrics["train"]["credit/trained_frac"][-1] == pytest.approx(trained)


def test_prefix_tokens_get_no_gradient(model_and_tok, tmp_path):
    """Gradients of the TP loss do not depend on what the policy says about withheld tokens."""
    chain = CreditChain({"tp_schedule": {"withhold": 0.6}})
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path, credit=chain)
    inputs = _rollout(ours)
    loss = ours.compute_loss(ours.model, inputs)
    loss.backward()
    g1 = [p.grad.clone() for p in ours.model.parameters() if p.grad is not None]
    ours.model.zero_grad()
    # flip the advantage sign on the withheld prefix only: nothing may change
    inputs2 = dict(inputs)
    L = inputs["completion_mask"].sum(-1)
    cut = torch.minimum(torch.floor(L * 0.6), L - 1)
    prefix = (torch.arange(inputs["completion_ids"].shape[1])[None] < cut[:, None]).float()
    adv = inputs["advantages"][:, None] * (1 - 2 * prefix)
    inputs2["advantages"] = adv
    ours.compute_loss(ours.model, inputs2).backward()
    g2 = [p.grad.clone() for p in ours.model.parameters() if p.grad is not None]
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])
def test_forking_all_tokens_equals_trl_top_entropy_quantile(model_and_tok, tmp_path, loss_type):
    chain = CreditChain(
        {"forking_tokens": {"keep_fraction": 0.2, "selection": "batch_quantile", "normalize": "all_tokens"}}
    )
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path / "c", {"loss_type": loss_type}, credit=chain)
    plain = _trainer(
        GRPOTrainer, model_and_tok, tmp_path / "p", {"loss_type": loss_type, "top_entropy_quantile": 0.2}
    )
    inputs = _rollout(ours)
    torch.testing.assert_close(
        ours.compute_loss(ours.model, inputs), _plain_loss(plain, inputs), rtol=1e-5, atol=1e-7
    )


def test_forking_selected_renormalises_by_selected_count(model_and_tok, tmp_path):
    chain = CreditChain(
        {"forking_tokens": {"keep_fraction": 0.2, "selection": "batch_quantile", "normalize": "selected"}}
    )
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path / "c", {"loss_type": "bnpo"}, credit=chain)
    plain = _trainer(
        GRPOTrainer, model_and_tok, tmp_path / "p", {"loss_type": "bnpo", "top_entropy_quantile": 0.2}
    )
    inputs = _rollout(ours)
    ent = _entropies(plain, inputs)
    m = inputs["completion_mask"].bool()
    thr = torch.quantile(ent[m].float(), 0.8)
    n_sel = ((ent >= thr) & m).sum()
    expected = _plain_loss(plain, inputs) * m.sum() / n_sel  # bnpo: Σ selected ℓ / #selected
    torch.testing.assert_close(ours.compute_loss(ours.model, inputs), expected, rtol=1e-5, atol=1e-7)


def test_entropy_adv_equals_trl_with_shaped_advantages(model_and_tok, tmp_path):
    chain = CreditChain(
        {
            "entropy_adv": {
                "alpha": 0.4,
                "kappa": 2.0,
                "strength": 1.0,
                "drive": {"knob": "strength", "neutral": 0.0},
            }
        }
    )
    rho = 0.5
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path / "c", credit=chain, schedule=lambda p: rho)
    plain = _trainer(GRPOTrainer, model_and_tok, tmp_path / "p")
    inputs = _rollout(ours)
    ent = _entropies(plain, inputs)
    A = inputs["advantages"][:, None]
    m = inputs["completion_mask"].float()
    shaped = (A + rho * torch.minimum(0.4 * ent, A.abs() / 2.0)) * m  # Cheng et al., ρ-scaled (RLVR-Schedule)
    expected = _plain_loss(plain, {**inputs, "advantages": shaped})
    torch.testing.assert_close(ours.compute_loss(ours.model, inputs), expected, rtol=1e-5, atol=1e-7)


def test_schedule_is_read_at_loss_time(model_and_tok, tmp_path):
    seen = []
    chain = CreditChain({"tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}})
    ours = _trainer(
        CreditGRPOTrainer, model_and_tok, tmp_path, credit=chain, schedule=lambda p: seen.append(p) or 1 - p
    )
    inputs = _rollout(ours)
    ours.state.max_steps = 10
    for step in (0, 5):
        ours.state.global_step = step
        ours.compute_loss(ours.model, inputs)  # the same buffered rollout, a later optimizer step
    assert ours._metrics["train"]["schedule/rho"][-2:] == [pytest.approx(1.0), pytest.approx(0.5)]
