"""The GPU pass: crs on CUDA end to end (skipped without CUDA; marked ``gpu``).

Covers the default train (embedded default model, start and final evaluation), every method for a
few steps, LoRA, gradient checkpointing, periodic evaluation, a 2-job local sweep, fp32 and bf16,
and the static decoder's CUDA graph (same distributions as ``generate``, log-probs = the trainer's).
Needs no MLflow (``tracking=none``). The prepared script ``scripts/gpu_check.sh`` runs it with the
benchmark on a GPU machine:

    python -m pytest -m gpu tests/test_gpu.py -q
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_crs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _single_turn_methods() -> list[str]:
    """Every conf/method option that runs on the default (single-turn) task; the turn methods (GiGPO,
    MatchTIR) need a multi-turn environment and its own warm-started policy (tests/test_envs*.py)."""
    import yaml

    import crs.methods  # noqa: F401  (the method table)
    from crs.methods import METHODS

    turn_methods = {n for n, m in METHODS.items() if m.turn_credit is not None}

    out = []
    for path in sorted((Path(__file__).resolve().parents[1] / "conf" / "method").glob("*.yaml")):
        credit = (yaml.safe_load(path.read_text()) or {}).get("credit") or {}
        if not set(credit) & turn_methods:
            out.append(path.stem)
    return out


METHODS = _single_turn_methods()


def _train(compose_cfg, *overrides):
    from crs.train import train

    return train(compose_cfg("tracking=none", "trainer.device=cuda", *overrides))


def _finite(*xs):
    return all(x is not None and math.isfinite(x) for x in xs)


def test_default_train_with_evaluations(compose_cfg):
    """The default config (embedded default model, precision auto), shortened; start + final eval."""
    s = _train(compose_cfg, "trainer.max_steps=30", "trainer.eval_prompts=32")
    assert s["steps"] == 30
    assert _finite(s["eval_accuracy_start"], s["eval_accuracy_end"], s["reward_last10"])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains(compose_cfg, method):
    s = _train(compose_cfg, "debug=fast", f"method={method}", "trainer.max_steps=2")
    assert s["steps"] == 2 and _finite(s["reward_last10"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precisions_with_eval(compose_cfg, precision):
    s = _train(compose_cfg, "debug=fast", f"trainer.precision={precision}", "trainer.eval_on_start=true")
    assert _finite(s["eval_accuracy_start"], s["eval_accuracy_end"], s["reward_last10"])


def test_lora(compose_cfg):
    s = _train(compose_cfg, "debug=fast", "model.lora.enabled=true", "model.lora.r=4")
    assert _finite(s["reward_last10"])


def test_gradient_checkpointing(compose_cfg):
    s = _train(compose_cfg, "debug=fast", "trainer.gradient_checkpointing=true")
    assert _finite(s["reward_last10"])


def test_periodic_eval(compose_cfg):
    s = _train(compose_cfg, "debug=fast", "trainer.max_steps=4", "trainer.eval_steps=2")
    assert _finite(s["eval_accuracy_end"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_static_generation_trains(compose_cfg, precision):
    s = _train(
        compose_cfg,
        "debug=fast",
        "trainer.generation=static",
        f"trainer.precision={precision}",
        "trainer.eval_on_start=true",
    )
    assert _finite(s["eval_accuracy_start"], s["eval_accuracy_end"], s["reward_last10"])


def test_two_job_local_sweep(tmp_path):
    out = run_crs(
        "train",
        "-m",
        "seed=0,1",
        "hydra/launcher=local",
        "hydra.launcher.n_jobs=2",
        "debug=fast",
        "tracking=none",
        "trainer.device=cuda",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    summaries = sorted((tmp_path / "sweep").glob("*/summary.json"))
    assert len(summaries) == 2
    assert all(_finite(json.loads(p.read_text())["reward_last10"]) for p in summaries)


# ------------------------------------------------------------------ the static decoder's CUDA graph
@pytest.fixture
def cuda_model(tiny_model_dir):
    from test_rollout import _load

    model, tok = _load(tiny_model_dir, device="cuda")
    return model, tok


def test_static_decoder_graph_samples_like_generate(cuda_model, monkeypatch):
    from test_rollout import check_same_distributions

    from crs.rollout.static import StaticDecoder

    model, tok = cuda_model
    dec = StaticDecoder()
    check_same_distributions(model, tok, "cuda", monkeypatch, decoder=dec, atol=1e-4)
    assert dec.stats["captures"] == 1 and dec.stats["graph_failures"] == 0, dec.stats
    # a second call replays the same graph and is still exact
    check_same_distributions(model, tok, "cuda", monkeypatch, decoder=dec, atol=1e-4)
    assert dec.stats["captures"] == 1


def test_static_decoder_graph_logps_match_trainer(cuda_model, monkeypatch):
    from test_rollout import check_logps_match_trainer_forward

    model, tok = cuda_model
    check_logps_match_trainer_forward(model, tok, "cuda", monkeypatch, atol=1e-4)


def test_static_decoder_graph_under_bf16_autocast_in_the_trainer(tiny_model_dir, tmp_path):
    """The decoder inside CreditGRPOTrainer with accelerate's bf16 autocast: the graph is captured once
    and reused across steps (optimizer updates are in place, so the graph sees the new weights)."""
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
        args=cpu_grpo_config(tmp_path, max_steps=3, use_cpu=False, bf16=True),
        train_dataset=Dataset.from_dict({"prompt": [f"Q: {a}+1\nA:" for a in range(16)]}),
        processing_class=tok,
        credit=CreditChain({}),
        schedule=lambda p: 1.0,
        generation="static",
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    st = trainer.decoder.stats
    assert st["calls"] == 3 and st["captures"] == 1 and st["graph_failures"] == 0, st
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
