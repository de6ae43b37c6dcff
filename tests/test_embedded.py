"""Tests for the embedded model builder, its cache, the tiny test model and the evaluator."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

import crs.embedded as embedded
from crs.benchmarks.arithmetic import corpus, sft_dataset, verify
from crs.embedded import (
    EmbeddedModelConfig,
    as_model_config,
    build_tokenizer,
    cache_key,
    ensure_embedded_model,
    pretrain,
)
from crs.evaluate import _completion_mask, evaluate_model, pass_at_k
from crs.testing import TINY_BENCH_CONFIG, TINY_MODEL_CONFIG, build_tiny_model

# pretrain() on this config takes a few seconds: tiny model, tiny SFT, tiny eval
MICRO = replace(TINY_MODEL_CONFIG, sft_steps=4, n_sft=64, eval_k=2, eval_max_new_tokens=8)
MICRO_BENCH = {**TINY_BENCH_CONFIG, "n_eval": 4}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir)


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_digits_are_single_tokens_and_roundtrip():
    tok = build_tokenizer(corpus(None, n=500, seed=0), vocab_size=128)
    assert len(tok) <= 128 and tok.padding_side == "left"
    for name in ("unk_token", "pad_token", "bos_token", "eos_token"):
        assert getattr(tok, name) is not None
    vocab = tok.get_vocab()
    assert all(str(d) in vocab for d in range(10))
    # no learned merge may contain a digit together with anything else
    assert not [t for t in vocab if any(c.isdigit() for c in t) and len(t) > 1]
    ids = tok("Q: 1234+56\nA:", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[pieces.index("1") : pieces.index("1") + 4] == ["1", "2", "3", "4"]
    for text in [" 7+5=12, 12-3=9, 9+8=17. Answer: 17", "Q: 5-9\nA: 5-9=-4. Answer: -4", "Hello, world!"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    eos = tok("x</s>", add_special_tokens=False)["input_ids"][-1]
    assert eos == tok.eos_token_id  # TRL appends the EOS *string* to SFT completions


def test_completions_fit_the_token_budget():
    tok = build_tokenizer(corpus(None, n=500, seed=0), vocab_size=128)
    lengths = [len(tok(c)["input_ids"]) + 1 for c in sft_dataset(500, 0)["completion"]]  # +1: EOS
    assert max(lengths) <= EmbeddedModelConfig().eval_max_new_tokens
    assert sum(lengths) / len(lengths) <= 40


# ---------------------------------------------------------------- config helpers and cache key


def test_config_from_mapping_and_cache_key():
    from omegaconf import OmegaConf

    d = {"hidden_size": 48, "sft_steps": 5, "not_a_field": 1}
    cfg = as_model_config(OmegaConf.create(d))
    assert cfg.hidden_size == 48 and cfg.sft_steps == 5 and cfg.num_layers == EmbeddedModelConfig().num_layers
    assert as_model_config(asdict(cfg)) == cfg
    k = cache_key(cfg, {"name": "arithmetic"})
    assert k == cache_key(asdict(cfg), OmegaConf.create({"name": "arithmetic"}))
    assert k != cache_key(replace(cfg, seed=1), {"name": "arithmetic"})
    assert k != cache_key(cfg, {"name": "arithmetic", "max_terms": 5})
    assert k == cache_key(cfg, {"name": "arithmetic", "n_train": 5})  # RL-only knob: same SFT model
    with pytest.raises(ValueError):
        cache_key(cfg, {"name": "gsm8k"})


# ---------------------------------------------------------------- pretrain and cache


def test_pretrain_is_reproducible(tmp_path):
    r1 = pretrain(MICRO, MICRO_BENCH, tmp_path / "a", show_progress=False)
    r2 = pretrain(MICRO, MICRO_BENCH, tmp_path / "b", show_progress=False)
    s1, s2 = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    # the weights did train (not just a re-seeded random init)
    r0 = pretrain(replace(MICRO, sft_steps=0), MICRO_BENCH, tmp_path / "c", show_progress=False)
    s0 = _state(tmp_path / "c")
    assert any(not torch.equal(s0[k], s1[k]) for k in s1)
    assert r1["sft"]["final_loss"] < r1["sft"]["first_loss"] or r1["sft"]["final_loss"] < 4.0
    report = json.loads((tmp_path / "a" / "crs_pretrain.json").read_text())
    assert report["config"] == asdict(MICRO) and report["builder_version"] == embedded.BUILDER_VERSION
    assert report["eval"]["n_prompts"] == MICRO_BENCH["n_eval"] and r2["eval"] == r1["eval"]
    assert set(report["wall_time_s"]) == {"total", "sft", "eval"}
    assert r0["sft"]["steps"] == 0
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "a" / f).exists()


def test_ensure_embedded_model_cache_hit(tmp_path, monkeypatch):
    calls = []
    real = embedded.pretrain

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(embedded, "pretrain", counting)
    p1 = ensure_embedded_model(MICRO, MICRO_BENCH, tmp_path, show_progress=False)
    assert p1.name == f"embedded-{cache_key(MICRO, MICRO_BENCH)}" and (p1 / "crs_pretrain.json").exists()
    p2 = ensure_embedded_model(asdict(MICRO), MICRO_BENCH, tmp_path, show_progress=False)
    assert p2 == p1 and len(calls) == 1  # second call is a cache hit
    # no temp dirs left behind (the builders' lock file stays: crs/cache.py)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [p1.name]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert AutoModelForCausalLM.from_pretrained(p1).config.tie_word_embeddings
    assert AutoTokenizer.from_pretrained(p1).padding_side == "left"


def test_ensure_embedded_model_lost_race(tmp_path, monkeypatch):
    """Another process publishes the same key while we build: we must return its copy and clean up."""
    real = embedded.pretrain
    final = tmp_path / f"embedded-{cache_key(MICRO, MICRO_BENCH)}"

    def racing(model_cfg, bench_cfg, out_dir, show_progress=True):
        report = real(model_cfg, bench_cfg, out_dir, show_progress=show_progress)
        final.mkdir()  # the winner's directory appears just before our rename
        (final / "crs_pretrain.json").write_text(json.dumps({"winner": True}))
        return report

    monkeypatch.setattr(embedded, "pretrain", racing)
    p = ensure_embedded_model(MICRO, MICRO_BENCH, tmp_path, show_progress=False)
    assert p == final and json.loads((p / "crs_pretrain.json").read_text()) == {"winner": True}
    assert [q.name for q in tmp_path.iterdir() if not q.name.endswith(".lock")] == [final.name]


# ---------------------------------------------------------------- tiny model and evaluator


def test_tiny_model_is_a_real_causal_lm(tiny_dir, tiny):
    model, tok = tiny
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert (tiny_dir / "crs_tiny.json").exists()
    assert model.config.eos_token_id == tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_pass_at_k_and_completion_mask():
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 2, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2)
    ids = torch.tensor([[5, 6, 3, 1, 1], [5, 3, 3, 1, 1], [5, 6, 7, 8, 9]])
    assert _completion_mask(ids, [3]).int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_evaluate_model_keys_ranges_and_determinism(tiny):
    model, tok = tiny
    prompts = ["Q: 1+2\nA:", "Q: 12+7-3\nA:", "Q: 4+4\nA:"]
    answers = ["3", "16", "8"]
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    m1 = evaluate_model(model, tok, prompts, answers, verify, k=4, max_new_tokens=12, batch_size=2, seed=5)
    assert torch.equal(torch.rand(3), before)  # caller's RNG untouched
    m2 = evaluate_model(model, tok, prompts, answers, verify, k=4, max_new_tokens=12, batch_size=2, seed=5)
    assert m1 == m2
    for key in (
        "pass@1",
        "pass@k",
        "pass@4",
        "greedy_accuracy",
        "mean_token_entropy",
        "mean_completion_tokens",
    ):
        assert key in m1 and math.isfinite(m1[key])
    assert 0 <= m1["pass@1"] <= m1["pass@k"] <= 1 and 0 <= m1["greedy_accuracy"] <= 1
    assert 0 < m1["mean_token_entropy"] <= math.log(len(tok)) + 1e-6
    assert 1 <= m1["mean_completion_tokens"] <= 12
    # the verifier's verdicts are what gets counted
    yes = evaluate_model(model, tok, prompts, answers, lambda c, a: True, k=2, max_new_tokens=4)
    no = evaluate_model(model, tok, prompts, answers, lambda c, a: False, k=2, max_new_tokens=4)
    assert (yes["pass@1"], yes["pass@k"], yes["greedy_accuracy"]) == (1.0, 1.0, 1.0)
    assert (no["pass@1"], no["pass@k"], no["greedy_accuracy"]) == (0.0, 0.0, 0.0)
    # lower temperature => lower sampling entropy
    cold = evaluate_model(
        model, tok, prompts, answers, verify, k=4, max_new_tokens=12, temperature=0.3, greedy=False
    )
    assert cold["mean_token_entropy"] < m1["mean_token_entropy"]
    assert not model.training  # eval mode restored
    model.train()
    evaluate_model(model, tok, prompts[:1], answers[:1], verify, k=2, max_new_tokens=4)
    assert model.training
    model.eval()


def test_tiny_model_and_benchmark_run_in_grpo(tiny_dir, tmp_path):
    """The model dir, the prompt format and the reward signature work in TRL's GRPOTrainer as is."""
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    from crs.benchmarks import build_benchmark
    from crs.testing import cpu_grpo_config

    bench = build_benchmark({**TINY_BENCH_CONFIG, "n_train": 16}, seed=0)
    args = cpu_grpo_config(tmp_path, max_steps=2)
    trainer = GRPOTrainer(
        model=str(tiny_dir),
        args=args,
        reward_funcs=bench.reward_funcs,
        train_dataset=bench.train,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logs) == 2
    for entry in logs:
        assert "rewards/correctness/mean" in entry and "accuracy" in entry
        assert entry["accuracy"] == pytest.approx(entry["rewards/correctness/mean"])
