"""The credit hook against TRL's own loss, on one real rollout of a tiny model.

Each test generates one batch with TRL, then compares crs's **gradients** with those of an
*independent* construction of what the method means, fed to plain ``GRPOTrainer``:

- ``grpo`` (empty chain) == plain TRL, for every aggregation, with a KL term to a reference that
  differs from the policy;
- ``tp_schedule`` == plain TRL with the withheld prefix physically moved into the prompt (the authors'
  verl code), for token_mean / grpo / bnpo / GSPO;
- forking tokens in RLVR-Schedule's Table-1 setting (per-sequence top-k, float32 ceil, token-mean over
  the selected tokens) and in the 80/20 setting (batch top-k, DAPO clip-higher) == plain TRL whose loss
  mask is a hand-built selection;
- ``entropy_adv`` == plain TRL fed hand-computed shaped advantages;
- the token-mean divisor over several micro-batches == one batch with verl's token-mean.

On-policy the ratio is 1 and a GRPO loss is ≈ 0 whatever the mask, so every comparison perturbs the
old log-probs (ratio ≠ 1, clipping active) and compares parameter gradients; each test also plants the
bug it guards against and checks that the comparison then fails.

    pytest tests/test_trainer.py
"""

from __future__ import annotations

import copy

import pytest
import torch
from datasets import Dataset
from helpers.policy import policy_logps_and_entropies
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOTrainer

from crs.methods.chain import CreditChain
from crs.testing import cpu_grpo_config
from crs.trainers.grpo import CreditGRPOTrainer


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
    return policy_logps_and_entropies(tr, inputs)[1]


def _plain_loss(tr, inputs):
    return tr._compute_loss(tr.model, dict(inputs))


def _perturb(inputs, seed=1, scale=0.3):
    """Old (and reference) log-probs that differ from the policy: ratio ≠ 1, some tokens clipped."""
    g = torch.Generator().manual_seed(seed)
    T = inputs["completion_ids"].shape
    logps = inputs["_logps"]
    out = dict(inputs)
    out["old_per_token_logps"] = logps + scale * torch.randn(T, generator=g)
    out["ref_per_token_logps"] = logps + scale * torch.randn(T, generator=g)
    return out


def _with_logps(tr, inputs):
    return {**inputs, "_logps": policy_logps_and_entropies(tr, inputs)[0]}


def _grads(tr, loss_fn, inputs):
    """Parameter gradients of ``loss_fn(inputs)`` (flattened), leaving the model's grads zeroed."""
    tr.model.zero_grad()
    loss = loss_fn(inputs)
    loss.backward()
    g = torch.cat([p.grad.flatten() for p in tr.model.parameters() if p.grad is not None])
    tr.model.zero_grad()
    return loss.detach(), g


def _crs(tr):
    return lambda inp: tr.compute_loss(tr.model, {k: v for k, v in inp.items() if k != "_logps"})


def _plain(tr):
    return lambda inp: tr._compute_loss(tr.model, {k: v for k, v in inp.items() if k != "_logps"})


def assert_same_grads(a, b, rtol=1e-4, atol=1e-7):
    (la, ga), (lb, gb) = a, b
    assert gb.abs().sum() > 0, "the reference gradient must not vanish"
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol)


def assert_grads_differ(a, b):
    assert not torch.allclose(a[1], b[1], rtol=1e-3, atol=1e-6), "the planted bug went unnoticed"


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_grpo_identity_equals_plain_trl(model_and_tok, tmp_path, loss_type, beta):
    kw = {"loss_type": loss_type, "beta": beta}
    plain = _trainer(GRPOTrainer, model_and_tok, tmp_path / "p", kw)
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path / "c", kw)
    inputs = _rollout(plain)
    before = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    inputs = _perturb(_with_logps(plain, inputs))  # ratio ≠ 1; a reference model ≠ the policy
    expected = _grads(plain, _plain(plain), inputs)
    assert_same_grads(_grads(ours, _crs(ours), inputs), expected, rtol=1e-5)
    # planted: a KL coefficient or advantages that differ must show
    if beta:
        ref2 = {**inputs, "ref_per_token_logps": inputs["ref_per_token_logps"] + 0.5}
        assert_grads_differ(_grads(ours, _crs(ours), ref2), expected)
    # the buffered rollout is never mutated
    plain_inputs = {k: v for k, v in inputs.items() if k in before}
    assert set(plain_inputs) == set(before)


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
    out.pop("tool_mask", None)
    # the withheld tokens' log-probs move with them: the suffix keeps its own (perturbed) old/ref values
    for key in ("old_per_token_logps", "ref_per_token_logps", "_logps"):
        if key in inputs:
            rows = []
            for i in range(B):
                L = int(inputs["completion_mask"][i].sum())
                v = inputs[key][i][cuts[i] : L]
                rows.append(torch.cat([v, torch.zeros(T - len(v))]))
            out[key] = torch.stack(rows)
    return out


TP_LOSSES = [
    {"loss_type": "dapo"},  # = crs token_mean
    {"loss_type": "grpo"},
    {"loss_type": "bnpo"},
    {"loss_type": "grpo", "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4},
]


@pytest.mark.parametrize("args_kw", TP_LOSSES, ids=["token_mean", "grpo", "bnpo", "gspo"])
@pytest.mark.parametrize("rho", [0.3, 0.75])
def test_tp_schedule_equals_prefix_in_prompt(model_and_tok, tmp_path, args_kw, rho):
    chain = CreditChain({"tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}})
    ours = _trainer(
        CreditGRPOTrainer, model_and_tok, tmp_path / "c", args_kw, credit=chain, schedule=lambda p: rho
    )
    plain = _trainer(GRPOTrainer, model_and_tok, tmp_path / "p", args_kw)
    inputs = _perturb(_with_logps(ours, _rollout(ours)), scale=0.05 if "epsilon_high" in args_kw else 0.3)
    assert float(inputs["crs_rho"][0]) == pytest.approx(rho)  # fixed at rollout time, travels in the batch
    lengths = inputs["completion_mask"].sum(-1).tolist()
    pad = model_and_tok[1].pad_token_id
    cuts = [min(int(L * rho), L - 1) for L in lengths]  # c_i = min(floor(L_i ρ), L_i − 1), written out
    expected = _grads(plain, _plain(plain), _move_prefix_to_prompt(inputs, cuts, pad))
    got = _grads(ours, _crs(ours), inputs)
    assert_same_grads(got, expected)
    assert ours._metrics["train"]["schedule/rho"][-1] == pytest.approx(rho)
    trained = sum(L - c for L, c in zip(lengths, cuts)) / sum(lengths)
    assert ours._metrics["train"]["credit/trained_frac"][-1] == pytest.approx(trained)
    # planted: a ceil cut, or nothing withheld, must not match the authors' reference
    ceil_cuts = [min(c + 1, L - 1) for c, L in zip(cuts, lengths)]
    assert_grads_differ(got, _grads(plain, _plain(plain), _move_prefix_to_prompt(inputs, ceil_cuts, pad)))
    assert_grads_differ(
        got, _grads(plain, _plain(plain), _move_prefix_to_prompt(inputs, [0] * len(cuts), pad))
    )


def test_prefix_tokens_get_no_gradient(model_and_tok, tmp_path):
    """Gradients of the TP loss do not depend on what the policy says about withheld tokens."""
    chain = CreditChain({"tp_schedule": {"withhold": 0.6}})
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path, credit=chain)
    inputs = _perturb(_with_logps(ours, _rollout(ours)))
    g1 = _grads(ours, _crs(ours), inputs)
    # flip the advantage sign and scramble old log-probs on the withheld prefix only: nothing may change
    L = inputs["completion_mask"].sum(-1)
    cut = torch.minimum(torch.floor(L * 0.6), L - 1)
    prefix = (torch.arange(inputs["completion_ids"].shape[1])[None] < cut[:, None]).float()
    inputs2 = dict(inputs)
    inputs2["advantages"] = inputs["advantages"][:, None] * (1 - 2 * prefix)
    inputs2["old_per_token_logps"] = inputs["old_per_token_logps"] + 0.7 * prefix
    assert_same_grads(_grads(ours, _crs(ours), inputs2), g1)
    # planted: the same flip on a trained token does change the gradient
    inputs3 = dict(inputs)
    inputs3["advantages"] = inputs["advantages"][:, None] * (1 - 2 * (1 - prefix))
    assert_grads_differ(_grads(ours, _crs(ours), inputs3), g1)


def test_reward_sees_only_the_suffix_in_training_and_everything_in_eval(model_and_tok, tmp_path):
    """reward_on: suffix (the released code) cuts only training rollouts; evaluation never cuts."""
    seen = []

    def recording_reward(completions, completion_ids, **kwargs):
        seen.append((list(completions), [list(c) for c in completion_ids]))
        return [float(sum(ids) % 7) / 7.0 for ids in completion_ids]

    model, tok = model_and_tok
    chain = CreditChain({"tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}})
    tr = CreditGRPOTrainer(
        model=copy.deepcopy(model),
        reward_funcs=[recording_reward],
        args=_args(tmp_path),
        train_dataset=_dataset(),
        eval_dataset=_dataset(),
        processing_class=tok,
        credit=chain,
        schedule=lambda p: 0.5,
    )
    tr.model.train()
    _rollout(tr)
    texts, ids = seen[-1]
    for text, row in zip(texts, ids):
        cut = min(int(len(row) * 0.5), len(row) - 1)
        assert text == tok.decode(row[cut:], skip_special_tokens=True)
    tr.model.eval()
    batch = next(iter(tr.get_eval_dataloader()))
    tr._prepare_inputs(batch)
    texts, ids = seen[-1]
    assert texts == [tok.decode(row, skip_special_tokens=True) for row in ids]


def _per_sequence_topk(ent, mask, keep):
    """RLVR-Schedule compute_entropy_topk_response_mask, written out: k_i = (n.float()·r).ceil()."""
    sel = torch.zeros_like(mask)
    for i in range(mask.shape[0]):
        n = mask[i].sum()
        k = int((n.to(torch.float32) * keep).ceil())
        scores = ent[i].masked_fill(mask[i] == 0, float("-inf"))
        if k:
            sel[i, scores.topk(k).indices] = 1.0
    return sel


def _batch_topk(ent, mask, keep):
    """80/20 get_global_entropy_top_mask, written out."""
    flat = ent.flatten()[mask.flatten().bool()]
    k = max(1, int(len(flat) * keep + 0.9999))
    idx = mask.flatten().nonzero().squeeze(1)[flat.topk(k).indices]
    sel = torch.zeros(mask.numel())
    sel[idx] = 1.0
    return sel.view_as(mask)


@pytest.mark.parametrize(
    "setting",
    [
        # RLVR-Schedule Table-1 forking row: per-sequence top-k, token-mean over the selected tokens
        {"selection": "per_sequence", "keep": 0.3, "args": {"loss_type": "dapo"}},
        # 80/20: batch top-k 20% + DAPO clip-higher, token-mean over the selected tokens
        {"selection": "batch_topk", "keep": 0.2, "args": {"loss_type": "dapo", "epsilon_high": 0.28}},
    ],
    ids=["table1_forking", "80_20"],
)
def test_forking_equals_hand_built_selection(model_and_tok, tmp_path, setting):
    chain = CreditChain(
        {
            "forking_tokens": {
                "keep_fraction": setting["keep"],
                "selection": setting["selection"],
                "normalize": "selected",
            }
        }
    )
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path / "c", setting["args"], credit=chain)
    plain = _trainer(GRPOTrainer, model_and_tok, tmp_path / "p", setting["args"])
    inputs = _perturb(_with_logps(ours, _rollout(ours)))
    ent = _entropies(plain, inputs)
    m = inputs["completion_mask"].float()
    pick = _per_sequence_topk if setting["selection"] == "per_sequence" else _batch_topk
    sel = pick(ent, m, setting["keep"])
    # the authors replace the response mask by the selection and take the token-mean
    ref = {**inputs, "tool_mask": sel, "num_items_in_batch": sel.sum()}
    expected = _grads(plain, _plain(plain), ref)
    got = _grads(ours, _crs(ours), inputs)
    assert_same_grads(got, expected)
    # planted: dividing by all tokens instead of the selected ones
    all_norm = {**inputs, "tool_mask": sel, "num_items_in_batch": m.sum()}
    assert_grads_differ(got, _grads(plain, _plain(plain), all_norm))


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dapo"])
def test_forking_all_tokens_equals_trl_top_entropy_quantile(model_and_tok, tmp_path, loss_type):
    chain = CreditChain(
        {"forking_tokens": {"keep_fraction": 0.2, "selection": "batch_quantile", "normalize": "all_tokens"}}
    )
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path / "c", {"loss_type": loss_type}, credit=chain)
    plain = _trainer(
        GRPOTrainer, model_and_tok, tmp_path / "p", {"loss_type": loss_type, "top_entropy_quantile": 0.2}
    )
    inputs = _perturb(_with_logps(ours, _rollout(ours)))
    expected = _grads(plain, _plain(plain), inputs)
    assert_same_grads(_grads(ours, _crs(ours), inputs), expected, rtol=1e-5)
    plain_all = _trainer(GRPOTrainer, model_and_tok, tmp_path / "q", {"loss_type": loss_type})
    assert_grads_differ(_grads(ours, _crs(ours), inputs), _grads(plain_all, _plain(plain_all), inputs))


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
    inputs = _perturb(_with_logps(ours, _rollout(ours)))
    ent = _entropies(plain, inputs)
    A = inputs["advantages"][:, None]
    m = inputs["completion_mask"].float()
    shaped = (A + rho * torch.minimum(0.4 * ent, A.abs() / 2.0)) * m  # Cheng et al., ρ-scaled (RLVR-Schedule)
    expected = _grads(plain, _plain(plain), {**inputs, "advantages": shaped})
    got = _grads(ours, _crs(ours), inputs)
    assert_same_grads(got, expected)
    # planted: the unshaped advantages
    assert_grads_differ(got, _grads(plain, _plain(plain), inputs))


def test_rho_is_fixed_once_per_rollout(model_and_tok, tmp_path):
    """GSPO-style: 4 optimizer steps per rollout all see the rollout's ρ (and its mask); the next rollout moves."""
    from crs.schedules import Schedule

    chain = CreditChain({"tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}})
    sched = Schedule("linear", {"m": 0.99, "start": 0.0, "end": 0.8})
    args = {"per_device_train_batch_size": 4, "steps_per_generation": 4, "gradient_accumulation_steps": 1}
    tr = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path, args, credit=chain, schedule=sched)
    tr.state.max_steps = 20  # 5 rollouts of 4 optimizer steps: the authors' T = 5, s_max = int(5·0.8) = 4
    assert tr.total_rollouts() == 5
    batch = next(iter(tr.get_train_dataloader()))
    seen = []
    for step in range(8):
        tr.state.global_step = step
        tr._step = step
        inputs = tr._prepare_inputs(batch)
        tr.compute_loss(tr.model, inputs)
        seen.append(tr._metrics["train"]["schedule/rho"][-1])
        L = inputs["completion_mask"].sum(-1)
        cut = torch.minimum(torch.floor(L * seen[-1]), L - 1)
        assert torch.equal(inputs["tool_mask"].sum(-1), L - cut)  # the mask used the same ρ
    r1, r2 = sched.at_step(1, 5), sched.at_step(2, 5)
    assert seen == [pytest.approx(r1)] * 4 + [pytest.approx(r2)] * 4
    assert r1 == pytest.approx(0.99 * (1 - 1 / 4)) and r2 == pytest.approx(0.99 * (1 - 2 / 4))


@pytest.mark.parametrize("ga, spg", [(2, 4), (2, 2)])
def test_token_mean_divisor_is_exact_over_micro_batches(model_and_tok, tmp_path, ga, spg):
    """verl token-mean: the optimizer step's micro-batches together == one batch / its trained-token count."""
    chain = CreditChain({"tp_schedule": {"withhold": 0.4}})  # uneven trained lengths per chunk
    args = {
        "loss_type": "dapo",
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": ga,
        "steps_per_generation": spg,
    }
    ours = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path / "c", args, credit=chain)
    ours.current_gradient_accumulation_steps = ga
    plain = _trainer(
        GRPOTrainer, model_and_tok, tmp_path / "p", {"loss_type": "dapo", "per_device_train_batch_size": 8}
    )
    batch = next(iter(ours.get_train_dataloader()))
    chunks = []
    for j in range(ga):
        ours._step = j
        chunks.append(_with_logps(ours, ours._prepare_inputs(batch)))
    chunks = [_perturb(c, seed=7 + j) for j, c in enumerate(chunks)]

    def accumulated(inp):
        total = 0.0
        for j, c in enumerate(chunks):
            ours._step = j
            total = total + _crs(ours)(c)
        return total

    got = _grads(ours, accumulated, None)
    full = {
        k: torch.cat([c[k] for c in chunks])
        for k in chunks[0]
        if torch.is_tensor(chunks[0][k]) and chunks[0][k].dim() >= 1
    }
    full["num_items_in_batch"] = (full["completion_mask"] * full["tool_mask"]).sum()
    expected = _grads(plain, _plain(plain), full)
    assert_same_grads(got, expected)
    if spg != ga:
        # planted: TRL's own estimate (generation-batch count · GA / S) is not this step's count
        est = (ours._buffered_inputs[0]["completion_mask"] * 0).sum()
        for c in ours._buffered_inputs:
            est = est + (c["completion_mask"] * c["tool_mask"]).sum()
        wrong = {**full, "num_items_in_batch": est * ga / spg}
        assert_grads_differ(got, _grads(plain, _plain(plain), wrong))


def test_rollout_samples_carry_the_metric_step(model_and_tok, tmp_path):
    """A rollout made at global_step s feeds optimizer step s + 1, the step its metrics are logged at."""
    tr = _trainer(CreditGRPOTrainer, model_and_tok, tmp_path, sample_steps=[0], sample_size=2)
    _rollout(tr)
    assert [s["step"] for s in tr.samples] == [1, 1]
