"""The static-cache decoder (crs/rollout) samples what ``generate`` samples and feeds the trainer
log-probs its own forward reproduces; the config options fail with one line where they cannot run.

Sampling is made reproducible across engines by replacing ``torch.multinomial`` with inverse-CDF
sampling from its own seeded uniform stream (and recording every distribution): both engines draw the
same uniforms in the same order, so equal distributions give equal tokens, and every step's full
distribution (temperature, top-p, top-k, EOS, pad) can be compared. On a GPU the same checks run on CUDA through the
captured graph (tests/test_gpu.py).
"""

from __future__ import annotations

import pytest
import torch

from crs.rollout.static import StaticDecoder, _cut_after_eos


class RecordingMultinomial:
    """Stands in for torch.multinomial (one sample per row): records the probabilities and samples by
    inverse CDF with a private seeded generator."""

    def __init__(self, seed: int = 0):
        self.probs: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, probs, num_samples=1, **kw):
        p = probs.detach().float().cpu()
        self.probs.append(p.clone())
        u = torch.rand(p.shape[0], 1, generator=self.gen)
        idx = (p.cumsum(-1) < u * p.sum(-1, keepdim=True)).sum(-1, keepdim=True)
        return idx.clamp(max=p.shape[-1] - 1).to(probs.device)


def _prompts(tok, n=12):
    texts = [f"Q: {a}+{b}-{c}\nA:" for a in (3, 14) for b in (1, 22, 7) for c in (5, 11)][:n]
    ids = [tok(t)["input_ids"] for t in texts]
    ids[1] = ids[1][2:]  # lengths differ: left padding in the batch
    ids[4] = ids[4][1:]
    return ids


def _load(model_dir, device="cpu", dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    return model, tok


def _gen_config(tok, **kw):
    from transformers import GenerationConfig

    # what TRL 1.16 builds (grpo_trainer.py, generation_kwargs), with disable_compile=True
    base = dict(
        max_new_tokens=24,
        do_sample=True,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=[tok.eos_token_id],
        temperature=0.7,
        top_p=0.9,
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        disable_compile=True,
    )
    base.update(kw)
    return GenerationConfig(**base)


def _hf_generate(model, tok, ids, gc, device):
    p = max(len(x) for x in ids)
    inp = torch.tensor([[tok.pad_token_id] * (p - len(x)) + x for x in ids], device=device)
    am = torch.tensor([[0] * (p - len(x)) + [1] * len(x) for x in ids], device=device)
    with torch.no_grad():
        out = model.generate(input_ids=inp, attention_mask=am, generation_config=gc)
    return _cut_after_eos(out[:, p:], gc.eos_token_id)


def check_same_distributions(model, tok, device, monkeypatch, decoder=None, atol=1e-5, **gen_kw):
    """Both engines, argmax-sampled: same completions and the same per-step distributions."""
    ids = _prompts(tok)
    gc = _gen_config(tok, **gen_kw)
    rec_hf = RecordingMultinomial()
    monkeypatch.setattr(torch, "multinomial", rec_hf)
    ref = _hf_generate(model, tok, ids, gc, device)
    rec = RecordingMultinomial()
    monkeypatch.setattr(torch, "multinomial", rec)
    decoder = decoder or StaticDecoder()
    got = decoder.generate(
        model, ids, gc, eos_token_ids=gc.eos_token_id, max_new_tokens=gc.max_new_tokens, device=device
    )
    assert got == ref
    # HF stops at the first step where all rows are done; the decoder may run a few pad-only steps
    # more on CUDA (its stop check is every few tokens), which the cut removes
    assert len(rec.probs) >= len(rec_hf.probs) > 1
    for a, b in zip(rec.probs, rec_hf.probs):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    return got, rec


@pytest.mark.parametrize(
    "gen_kw",
    [{}, {"temperature": 1.0, "top_p": 1.0}, {"temperature": 1.3, "top_k": 5, "top_p": 0.8}],
    ids=["trl-like", "plain", "topk-topp"],
)
def test_static_decoder_samples_like_generate(tiny_model_dir, monkeypatch, gen_kw):
    model, tok = _load(tiny_model_dir)
    got, _ = check_same_distributions(model, tok, "cpu", monkeypatch, **gen_kw)
    eos = tok.eos_token_id
    if "top_k" not in gen_kw:  # top-k 5 rarely keeps EOS for this barely trained model
        assert any(c and c[-1] == eos for c in got), "the test needs completions that end with EOS"
    assert all(eos not in c[:-1] for c in got)  # cut after the first EOS, EOS kept


def test_static_decoder_reuses_its_cache_across_prompt_lengths(tiny_model_dir, monkeypatch):
    """One slot serves batches whose prompt lengths differ (the cache length is bucketed)."""
    model, tok = _load(tiny_model_dir)
    dec = StaticDecoder()
    check_same_distributions(model, tok, "cpu", monkeypatch, decoder=dec)
    ids = [x[:-1] for x in _prompts(tok)]  # shorter prompts, same bucket
    gc = _gen_config(tok)
    dec.generate(model, ids, gc, eos_token_ids=gc.eos_token_id, max_new_tokens=24)
    assert len(dec._slots) == 1 and dec.stats["calls"] == 2
    check_same_distributions(model, tok, "cpu", monkeypatch, decoder=dec)  # still exact afterwards


def check_logps_match_trainer_forward(model, tok, device, monkeypatch, atol=1e-4):
    """log p(token) at sampling time == TRL's training forward (prompt ⊕ completion, attention mask, no
    position ids, logits / T) on the same tokens."""
    from trl.trainer.utils import selective_log_softmax

    ids = _prompts(tok)
    gc = _gen_config(tok, temperature=0.8, top_p=1.0)
    rec = RecordingMultinomial()
    monkeypatch.setattr(torch, "multinomial", rec)
    comps = StaticDecoder().generate(
        model, ids, gc, eos_token_ids=gc.eos_token_id, max_new_tokens=gc.max_new_tokens, device=device
    )
    p = max(len(x) for x in ids)
    t = max(len(c) for c in comps)
    pad = tok.pad_token_id
    inp = torch.tensor([[pad] * (p - len(x)) + x + c + [pad] * (t - len(c)) for x, c in zip(ids, comps)])
    am = torch.tensor(
        [[0] * (p - len(x)) + [1] * (len(x) + len(c)) + [0] * (t - len(c)) for x, c in zip(ids, comps)]
    )
    inp, am = inp.to(device), am.to(device)
    with torch.no_grad():
        logits = model(input_ids=inp, attention_mask=am).logits[:, p - 1 : -1].float() / gc.temperature
    trainer_logps = selective_log_softmax(logits, inp[:, p:])
    for row, c in enumerate(comps):
        sampled = torch.stack([rec.probs[i][row, tok_id] for i, tok_id in enumerate(c)]).log()
        torch.testing.assert_close(trainer_logps[row, : len(c)].cpu(), sampled, atol=atol, rtol=0)


def test_static_decoder_logps_match_the_trainers_forward(tiny_model_dir, monkeypatch):
    model, tok = _load(tiny_model_dir)
    check_logps_match_trainer_forward(model, tok, "cpu", monkeypatch)


def test_trainer_generates_with_the_static_decoder(tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from crs.methods.chain import CreditChain
    from crs.testing import cpu_grpo_config
    from crs.trainers.grpo import CreditGRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer = CreditGRPOTrainer(
        model=model,
        reward_funcs=[lambda completion_ids, **kw: [float(len(c) % 3) for c in completion_ids]],
        args=cpu_grpo_config(tmp_path, max_steps=2),
        train_dataset=Dataset.from_dict({"prompt": [f"Q: {a}+1\nA:" for a in range(16)]}),
        processing_class=tok,
        credit=CreditChain({}),
        schedule=lambda p: 1.0,
        generation="static",
    )
    trainer.train()
    assert trainer.decoder.stats["calls"] == 2
    assert all("reward" in h for h in trainer.state.log_history if "loss" in h)


def test_generation_options_are_validated(compose_cfg, monkeypatch):
    from crs.config import validate
    from crs.errors import ConfigError

    with pytest.raises(ConfigError, match="trainer.generation must be one of hf, hf_static, static, vllm"):
        validate(compose_cfg("trainer.generation=fast"))
    monkeypatch.setattr("crs.rollout.vllm_available", lambda: False)
    with pytest.raises(ConfigError, match="needs the vllm package"):
        validate(compose_cfg("trainer.generation=vllm"))
    monkeypatch.setattr("crs.rollout.vllm_available", lambda: True)
    validate(compose_cfg("trainer.generation=vllm", "trainer.vllm_mode=server"))


def test_generation_options_map_to_trl(compose_cfg, tmp_path):
    from crs.train import grpo_args

    assert grpo_args(compose_cfg("trainer.generation=hf_static"), tmp_path).cache_implementation == "static"
    static = grpo_args(compose_cfg("trainer.generation=static"), tmp_path)
    assert static.cache_implementation is None and not static.use_vllm


def test_auto_precision_is_fp32_for_small_models():
    from crs.precision import resolve_precision

    assert resolve_precision("auto", cuda=True, n_params=343_000, bf16_supported=True) == "fp32"
    assert resolve_precision("auto", cuda=True, n_params=500_000_000, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", cuda=True, n_params=500_000_000, bf16_supported=False) == "fp32"
    assert resolve_precision("auto", cuda=False, n_params=500_000_000, bf16_supported=True) == "fp32"
    assert resolve_precision("bf16", cuda=True, n_params=10, bf16_supported=True) == "bf16"
