"""crs's DPOTrainer subclass against plain TRL: gradients (T6), the collator's token rewards (T9), the T-REG
wiring, the contrastive token rewards, and the seam's one-line errors (docs/methods/wave3.md §2.7).

    python -m pytest tests/test_dpo.py -q
"""

import copy
import json

import pytest
import torch

from crs.errors import ConfigError
from crs.methods.chain import CreditChain
from crs.methods.t_reg import pair_weight, reg_loss
from crs.prefs.rewards import contrastive_token_rewards

PAIRS = [
    {"prompt": "Q: 3+4\nA:", "chosen": " 3+4=7. Answer: 7", "rejected": " 3+4=8. Answer: 8"},
    {"prompt": "Q: 9-2+1\nA:", "chosen": " 9-2=7, 7+1=8. Answer: 8", "rejected": " 9-2=6, 6+1=7. Answer: 7"},
]


def _trainers(model_dir, tmp_path, credit, **kw):
    """A plain TRL DPOTrainer and a CreditDPOTrainer on copies of the same weights and pairs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from crs.trainers.dpo import CreditDPOTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=1,
        report_to="none",
        use_cpu=True,
        precompute_ref_log_probs=True,
        max_length=kw.pop("max_length", None),
        beta=0.1,
        seed=0,
        loss_type=["sigmoid"],
        dataset_num_proc=None,
    )
    ds = Dataset.from_list(PAIRS)
    plain = DPOTrainer(model=copy.deepcopy(model), args=args, train_dataset=ds, processing_class=tok)
    crs = CreditDPOTrainer(
        model=copy.deepcopy(model),
        args=args,
        train_dataset=ds,
        processing_class=tok,
        credit=credit,
        schedule=lambda progress: 1.0,
        **kw,
    )
    return plain, crs, tok


def _batch(trainer, perturb=True):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(PAIRS))])
    if perturb:  # policy == reference at init would make the log-ratios 0: move the reference
        batch["ref_chosen_logps"] = batch["ref_chosen_logps"] + torch.tensor([0.7, -0.4])
        batch["ref_rejected_logps"] = batch["ref_rejected_logps"] + torch.tensor([-0.3, 0.9])
    return batch


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


def test_t6_method_dpo_and_alpha_zero_are_plain_trl_gradients(tiny_model_dir, tmp_path):
    for credit in (CreditChain({"dpo": {}}), CreditChain({"dpo": {}, "t_reg": {"alpha": 0.0}})):
        plain, crs, _ = _trainers(tiny_model_dir, tmp_path, credit)
        batch = _batch(plain)
        l0, g0 = _loss_and_grads(plain, batch)
        l1, g1 = _loss_and_grads(crs, _batch(crs))
        assert torch.equal(l0, l1)
        assert len(g0) == len(g1) > 0 and all(torch.equal(a, b) for a, b in zip(g0, g1))
        assert sum(g.abs().sum() for g in g0) > 0


def test_t_reg_loss_is_trl_dpo_plus_the_regulariser(tiny_model_dir, tmp_path):
    """The wiring: TRL's loss + α·mean(w·(L_REG(y_w)+L_REG(y_l))), recomputed here from an independent forward."""
    alpha = 0.5
    plain, crs, _ = _trainers(tiny_model_dir, tmp_path, CreditChain({"dpo": {}, "t_reg": {"alpha": alpha}}))
    batch = _batch(crs)
    l_dpo, _ = _loss_and_grads(plain, {k: v for k, v in batch.items() if k != "token_rewards"})
    l_treg, _ = _loss_and_grads(crs, batch)
    model = crs.model
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].float()
    rhat = batch["token_rewards"][:, 1:]
    assert (rhat.abs() > 0).sum() == mask.sum()  # a reward on every response token, none elsewhere
    ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
    r = 0.1 * ((logp * mask).sum(-1) - ref)
    reg = reg_loss(logp * mask, rhat, mask, 0.1)
    expected = l_dpo + alpha * (pair_weight(*r.chunk(2)) * (reg[:2] + reg[2:])).mean()
    assert l_treg.item() == pytest.approx(expected.item(), abs=1e-6)
    assert abs(l_treg.item() - l_dpo.item()) > 1e-6


def test_contrastive_token_rewards_match_a_direct_forward(tiny_model_dir, tmp_path):
    _, crs, tok = _trainers(tiny_model_dir, tmp_path, CreditChain({"dpo": {}, "t_reg": {}}))
    row = crs.train_dataset[1]
    model = crs.model

    def direct(prefix, ids):
        ctx = tok(prefix + row["prompt"])["input_ids"]
        full = torch.tensor([ctx + ids])
        with torch.no_grad():
            lp = (
                torch.log_softmax(model(input_ids=full).logits[0, :-1], -1)
                .gather(-1, full[0, 1:, None])
                .squeeze(-1)
            )
        return lp[len(ctx) - 1 :]

    for side in ("chosen", "rejected"):
        ids = list(row[f"{side}_ids"])
        want = contrastive_token_rewards(direct("[+]", ids), direct("[-]", ids))
        got = torch.tensor(row[f"{side}_token_rewards"])
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("mode", ["keep_start", "keep_end"])
def test_t9_token_rewards_are_cut_like_the_completion_mask(mode):
    from crs.trainers.dpo import PreferenceCollator

    ex = [
        {
            "prompt_ids": [1, 2, 3],
            "chosen_ids": [4, 5, 6, 7],
            "rejected_ids": [8, 9],
            "chosen_token_rewards": [0.1, 0.2, 0.3, 0.4],
            "rejected_token_rewards": [-0.1, -0.2],
        },
        {
            "prompt_ids": [1, 2],
            "chosen_ids": [4],
            "rejected_ids": [8, 9, 10],
            "chosen_token_rewards": [0.5],
            "rejected_token_rewards": [-0.3, -0.4, -0.45],
        },
    ]
    out = PreferenceCollator(pad_token_id=0, max_length=5, truncation_mode=mode)(ex)
    cm, tr = out["completion_mask"], out["token_rewards"]
    assert tr.shape == cm.shape
    assert torch.equal(tr != 0, cm.bool())
    first = tr[0][cm[0].bool()].tolist()
    assert first == pytest.approx([0.1, 0.2] if mode == "keep_start" else [0.1, 0.2, 0.3, 0.4])
    assert tr[3][cm[3].bool()].tolist() == pytest.approx([-0.3, -0.4, -0.45])


def test_wrong_pairs_fail_in_one_line(compose_cfg):
    from crs.config import validate

    with pytest.raises(ConfigError, match=r"method gigpo runs on trainer.kind=grpo, not trainer.kind=dpo"):
        validate(compose_cfg("trainer=dpo", "method=gigpo"))
    with pytest.raises(ConfigError, match=r"method dpo runs on trainer.kind=dpo, not trainer.kind=grpo"):
        validate(compose_cfg("method=t_reg"))
    with pytest.raises(ConfigError, match="better_template"):
        validate(compose_cfg("trainer=dpo", "method=t_reg", "method.credit.t_reg.better_template=nope"))
    with pytest.raises(ConfigError, match="normalize"):
        validate(compose_cfg("trainer=dpo", "method=t_reg", "method.credit.t_reg.normalize=max"))
    with pytest.raises(ConfigError, match="data_file"):
        validate(compose_cfg("trainer=dpo", "method=dpo", "method.credit.dpo.data_file=/no/such.jsonl"))
    validate(compose_cfg("trainer=dpo", "method=t_reg"))


def test_wrong_pair_on_the_command_line_exits_2_before_any_model_loads(tmp_path):
    from tests.conftest import run_crs

    cache = tmp_path / "cache"
    r = run_crs(
        "train", "trainer=dpo", "method=gigpo", f"paths.cache_dir={cache}", "tracking=none", cwd=tmp_path
    )
    assert r.returncode == 2, r.stderr
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and "trainer.kind=dpo" in lines[0]
    assert not cache.exists()


def test_preference_file_text_and_conversational(tmp_path):
    from crs.prefs.data import load_preference_file

    text = tmp_path / "pairs.jsonl"
    text.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    assert load_preference_file(text).column_names == ["prompt", "chosen", "rejected"]
    chat = tmp_path / "chat.json"
    chat.write_text(
        json.dumps(
            [
                {
                    "prompt": [{"role": "user", "content": "hi"}],
                    "chosen": [{"role": "assistant", "content": "a"}],
                    "rejected": [{"role": "assistant", "content": "b"}],
                }
            ]
        )
    )
    assert len(load_preference_file(chat)) == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(ConfigError, match="prompt, chosen and rejected"):
        load_preference_file(bad)


def test_dpo_trainer_without_a_preference_method_fails_with_the_config(compose_cfg, tmp_path):
    """trainer=dpo method=grpo (an empty chain) is a config error, so no tracker run opens (it used to fail
    only in dpo_model_path, after the MLflow run was created); dpo_model_path still refuses it too."""
    from crs.config import validate
    from crs.trainers.dpo import dpo_model_path
    from tests.conftest import run_crs

    cfg = compose_cfg("trainer=dpo", "method=grpo", f"paths.cache_dir={tmp_path / 'cache'}")
    with pytest.raises(ConfigError, match="trainer.kind=dpo needs a preference method"):
        validate(cfg)
    with pytest.raises(ConfigError, match="needs a preference method"):
        dpo_model_path(cfg, validate(compose_cfg("method=grpo")))  # the empty chain
    store = tmp_path / "m.db"
    r = run_crs("train", "trainer=dpo", "method=grpo", f"tracking.uri=sqlite:///{store}", cwd=tmp_path)
    assert r.returncode == 2 and "needs a preference method" in r.stderr, r.stderr
    assert not store.exists() and not (tmp_path / "cache").exists()
