"""method=f_grpo (Factorized F-GRPO, arXiv 2605.12995): the spec's golden cases F4-F9 (docs/methods/wave3.md
§1.8), the rollout-time part tensors on a real tokenizer, and the config-time checks.

Mutations these tests kill (planted, seen failing, reverted; docs/f_grpo.md):
- group centring divided by the group std (GRPO, not the paper's Dr. GRPO) → test_part_advantages_golden_f4;
- ``content`` swapping the two phases' advantages → test_content_golden_f7;
- ``prefix`` giving the ranking side ``A_r`` without λ → test_lambda_weights_only_the_ranking;
- the blend written ``mix·A_joint + (1 − mix)·A_fact`` → test_mix_zero_is_joint_grpo_f9 and test_prefix_golden_f6;
- the step hook building part tensors for every method (grpo on slate_rank too) → test_part_tensors_on_a_real_tokenizer.
"""

from __future__ import annotations

import pytest
import torch

from crs.credit.method import CreditBatch
from crs.errors import ConfigError
from crs.methods import METHODS

F = METHODS["f_grpo"].fn

# F4: one group of four
R_SLATE = torch.tensor([1.0, 0.5, 0.5, 0.0])
R_RANK = torch.tensor([0.2, 1.0, 0.6, 0.2])
A_S = torch.tensor([0.5, 0.0, 0.0, -0.5])
A_R = torch.tensor([-0.3, 0.5, 0.1, -0.3])

# F6/F7: tokens <SLATE> a c d </SLATE> <RANK> c a </RANK> EOS
S = torch.tensor([[0, 1, 1, 1, 0, 0, 0, 0, 0, 0.0]])
K = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 0, 0.0]])
P = torch.tensor([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0.0]])


def batch(a_s, a_r, s=S, k=K, p=P, adv=None):
    n = a_s.shape[0]
    return CreditBatch(
        advantages=adv if adv is not None else torch.zeros(n),
        mask=torch.ones(n, s.shape[1]),
        features={
            "part_adv_slate": a_s,
            "part_adv_rank": a_r,
            "part_slate": s.expand(n, -1),
            "part_rank": k.expand(n, -1),
            "part_slate_side": p.expand(n, -1),
        },
    )


def test_part_advantages_golden_f4():
    from crs.steps.hook import StepHook

    hook = StepHook.__new__(StepHook)
    hook.tokenizer = type("Tok", (), {"decode": lambda self, ids, skip_special_tokens: ""})()
    rows = [{"answer": str(i)} for i in range(4)]
    hook.parts_fn = lambda text, row: {
        "slate": ([], float(R_SLATE[int(row["answer"])])),
        "rank": ([], float(R_RANK[int(row["answer"])])),
    }
    out = hook.part_tensors(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3), rows, group_size=4)
    assert torch.allclose(out["part_adv_slate"], A_S, atol=1e-6)
    assert torch.allclose(out["part_adv_rank"], A_R, atol=1e-6)
    two = hook.part_tensors(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 3), rows, group_size=2)
    assert torch.allclose(two["part_adv_slate"], torch.tensor([0.25, -0.25, 0.25, -0.25]))  # per group


def test_joint_golden_f5():
    r_joint = R_SLATE + R_RANK
    assert torch.allclose(r_joint, torch.tensor([1.2, 1.5, 1.1, 0.2]))
    joint = torch.tensor([0.2, 0.5, 0.1, -0.8])
    assert torch.allclose(r_joint - r_joint.mean(), joint, atol=1e-6)
    out = F(batch(A_S, A_R), assign="joint", mix=0.0)
    assert torch.allclose(out.advantages, joint.unsqueeze(1).expand(4, 10), atol=1e-6)  # every token


def test_prefix_golden_f6():
    out = F(batch(A_S[:1], A_R[:1]), assign="prefix")
    assert torch.allclose(out.advantages, torch.tensor([[0.5] * 5 + [-0.3] * 5]))


def test_content_golden_f7():
    out = F(batch(A_S[:1], A_R[:1]), assign="content")
    assert torch.allclose(out.advantages, torch.tensor([[0, 0.5, 0.5, 0.5, 0, 0, -0.3, -0.3, 0, 0]]))


def test_joint_assign_gives_tags_the_joint_advantage():
    out = F(batch(A_S[:1], A_R[:1]), assign="joint")
    assert torch.allclose(
        out.advantages, torch.tensor([[0.2, 0.5, 0.5, 0.5, 0.2, 0.2, -0.3, -0.3, 0.2, 0.2]])
    )


@pytest.mark.parametrize("assign", ["prefix", "content", "joint"])
def test_equal_slates_get_no_slate_credit_f8(assign):
    a_s = torch.zeros(4)  # every slate in the group scored the same
    out = F(batch(a_s, A_R), assign=assign)
    slate_tokens = (S if assign != "prefix" else P).bool().expand(4, -1)
    assert (out.advantages[slate_tokens] == 0).all()
    assert (out.advantages[K.bool().expand(4, -1)] != 0).all()


def test_mix_zero_is_joint_grpo_f9():
    out = F(batch(A_S, A_R), mix=0.0)
    joint = (A_S + A_R).unsqueeze(1).expand(4, 10)
    assert torch.equal(out.advantages, joint)  # bit for bit
    half = F(batch(A_S, A_R), mix=0.5)
    full = F(batch(A_S, A_R), mix=1.0)
    assert torch.allclose(half.advantages, 0.5 * joint + 0.5 * full.advantages)


def test_lambda_weights_only_the_ranking():
    out = F(batch(A_S[:1], A_R[:1]), lam=0.5, assign="prefix")
    assert torch.allclose(out.advantages, torch.tensor([[0.5] * 5 + [-0.15] * 5]))
    out = F(batch(A_S[:1], A_R[:1]), lam=0.5, mix=0.0)
    assert torch.allclose(out.advantages, torch.full((1, 10), 0.5 - 0.15))


def test_without_part_tensors_the_batch_is_unchanged_and_padding_stays_zero():
    b = CreditBatch(advantages=torch.tensor([1.0]), mask=torch.ones(1, 3))
    assert F(b) is b
    padded = batch(A_S[:1], A_R[:1]).replace(mask=torch.tensor([[1.0] * 8 + [0, 0]]))
    assert (F(padded).advantages[0, 8:] == 0).all()


def test_part_tensors_on_a_real_tokenizer():
    """Benchmark parts → token masks → F-GRPO on the embedded tokenizer: ids get their phase's credit."""
    from crs.benchmarks import build_benchmark
    from crs.benchmarks.slate_rank import completion_text, corpus
    from crs.embedded import build_tokenizer
    from crs.methods.chain import CreditChain
    from crs.steps.hook import StepHook

    bench = build_benchmark({"name": "slate_rank", "n_train": 8}, 0)
    tok = build_tokenizer(corpus(n=300), 128)
    texts = [completion_text(["a", "c", "d"], ["c", "a"]), completion_text(["a", "b"], ["a", "b"])]
    ids = [tok(t)["input_ids"] + [tok.eos_token_id] for t in texts]
    T = max(map(len, ids))
    cid = torch.tensor([x + [tok.pad_token_id] * (T - len(x)) for x in ids])
    cm = torch.tensor([[1.0] * len(x) + [0.0] * (T - len(x)) for x in ids])
    hook = StepHook(CreditChain({"f_grpo": {}}), {}, bench, tok, None, None)
    assert hook.active
    assert not StepHook(CreditChain({}), {}, bench, tok, None, None).active  # grpo: no part tensors
    out = hook.part_tensors(cid, cm, [{"answer": "a b"}] * 2, group_size=2)
    toks = [tok.decode([i]) for i in ids[0]]
    assert [t for t, m in zip(toks, out["part_slate"][0]) if m] == [" a", " c", " d"]
    assert [t for t, m in zip(toks, out["part_rank"][0]) if m] == [" c", " a"]
    side = "".join(t for t, m in zip(toks, out["part_slate_side"][0]) if m)
    assert side == " <S> a c d </S>"
    # rewards: row 0 (0.5, 0.386853), row 1 (1, 1); group-centred
    assert torch.allclose(out["part_adv_slate"], torch.tensor([-0.25, 0.25]))
    assert torch.allclose(out["part_adv_rank"], torch.tensor([-0.306574, 0.306574]), atol=1e-5)
    b = CreditBatch(advantages=torch.zeros(2), mask=cm, features=out)
    adv = F(b, assign="content").advantages
    assert torch.allclose(adv[0][out["part_slate"][0].bool()], torch.tensor(-0.25))
    assert (adv[0][(out["part_slate"][0] + out["part_rank"][0]) == 0] == 0).all()


def test_config_checks(compose_cfg):
    from crs.config import validate

    with pytest.raises(ConfigError, match="needs a benchmark whose completions have a slate"):
        validate(compose_cfg("method=f_grpo"))
    with pytest.raises(ConfigError, match="assign must be one of"):
        validate(compose_cfg("method=f_grpo", "benchmark=slate_rank", "method.credit.f_grpo.assign=tags"))
    with pytest.raises(ConfigError, match="mix"):
        validate(compose_cfg("method=f_grpo", "benchmark=slate_rank", "method.credit.f_grpo.mix=2"))
    with pytest.raises(ConfigError, match="slate_cap"):
        validate(compose_cfg("method=f_grpo", "benchmark=slate_rank", "benchmark.slate_cap=2"))
    validate(compose_cfg("method=f_grpo", "benchmark=slate_rank", "loss=dr_grpo"))
