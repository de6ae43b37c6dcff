"""Warm-started tiny policies for the environment benchmarks, built offline on first use and cached.

Like the embedded default (:mod:`crs.embedded`): a BPE tokenizer trained on the environment's own
text (with the terse tool-calling chat format of :mod:`crs.envs.chat`), a toy ``Qwen2ForCausalLM``,
and a short TRL ``SFTTrainer`` warm start on *noisy* expert conversations (``error_rate`` of the
actions are random), stopped early so the policy succeeds sometimes — the regime where group-relative
RL has signal. Cached under ``paths.cache_dir/envpolicy-<hash>`` with an atomic rename, one builder at a time (crs/cache.py).

:func:`play` runs the policy in the environment with its own small loop (same chat format and parser
as TRL's ``environment_factory`` loop) to report success rates after SFT.

    python -m crs.envs.policy maze        # build (or show) the maze policy and its success rate
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

POLICY_VERSION = 1


@dataclass
class EnvPolicyConfig:
    """How an environment policy is built (``benchmark.policy.*``)."""

    seed: int = 0
    vocab_size: int = 256
    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 384
    n_sft: int = 4000
    sft_steps: int = 400
    sft_batch_size: int = 32
    learning_rate: float = 3e-3
    error_rate: float = 0.3
    eval_tasks: int = 32
    eval_k: int = 4

    @classmethod
    def from_any(cls, cfg: Mapping[str, Any] | None) -> EnvPolicyConfig:
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in cfg.items() if k in known and v is not None})


def _bench_key(bench_cfg: Mapping[str, Any]) -> dict[str, Any]:
    skip = {"policy", "n_train", "n_eval", "eval_seed"}
    return {k: v for k, v in dict(bench_cfg).items() if k not in skip}


def cache_key(pcfg: EnvPolicyConfig, bench_cfg: Mapping[str, Any]) -> str:
    payload = {"v": POLICY_VERSION, "policy": asdict(pcfg), "bench": _bench_key(bench_cfg)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def build_policy(pcfg: EnvPolicyConfig, bench, show_progress: bool = False):
    """Tokenizer + model + SFT warm start on the benchmark's noisy expert conversations (nothing saved)."""
    from datasets import Dataset
    from transformers import set_seed

    from crs.embedded import _quiet, build_model, sft_warm_start
    from crs.envs.chat import build_chat_tokenizer, render

    convs = bench.info["sft_conversations"](pcfg.n_sft, pcfg.seed, pcfg.error_rate)
    texts = [render(c) for c in convs]
    with _quiet():
        tok = build_chat_tokenizer(texts[:2000], pcfg.vocab_size)
        tok.model_max_length = pcfg.max_position_embeddings
        set_seed(pcfg.seed)
        model = build_model(tok, pcfg)
        prompts = [render(c[:1], add_generation_prompt=True) for c in convs]
        completions = [
            t[len(p) - len("<|assistant|>") :].removeprefix("<|assistant|>") for t, p in zip(texts, prompts)
        ]
        ds = Dataset.from_dict({"prompt": prompts, "completion": completions})
        callbacks = []
        if show_progress:
            from crs.progress import RichProgressCallback, fmt

            callbacks.append(
                RichProgressCallback("env policy SFT", stats=lambda s: f"loss {fmt(s.get('loss'))}")
            )
        t0 = time.perf_counter()
        trainer = sft_warm_start(
            model,
            tok,
            ds,
            steps=pcfg.sft_steps,
            batch_size=pcfg.sft_batch_size,
            lr=pcfg.learning_rate,
            warmup_steps=min(30, pcfg.sft_steps // 10),
            logging_steps=max(1, pcfg.sft_steps // 10),
            max_length=pcfg.max_position_embeddings,
            seed=pcfg.seed,
            callbacks=callbacks,
        )
        model = trainer.model
        model.config.use_cache = True
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return model, tok, {"losses": losses, "wall_time_s": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# a small rollout loop (evaluation after SFT; TRL's loop is used for training)


def play(
    model,
    tok,
    bench,
    rows: list[dict[str, Any]],
    k: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 24,
    seed: int = 0,
):
    """Run ``k`` episodes per row; returns a list of finished environments (``.success``, ``.steps``)."""
    import inspect

    import torch
    from trl.chat_template_utils import parse_response

    from crs.envs.chat import ensure_response_template

    ensure_response_template(tok)
    torch.manual_seed(seed)
    factory = bench.info["environment_factory"]
    max_turns = int(bench.info.get("max_turns", 8))
    envs, convs = [], []
    for row in rows:
        for _ in range(k):
            env = factory()
            obs = env.reset(**row)
            msgs = [dict(m) for m in row["prompt"]]
            if obs:
                msgs[-1]["content"] += obs
            envs.append(env)
            convs.append(msgs)
    tools = {
        n: getattr(type(envs[0]), n)
        for n, _ in inspect.getmembers(type(envs[0]), predicate=inspect.isfunction)
        if n not in ("reset", "get_reward") and not n.startswith("_")
    }
    active = list(range(len(envs)))
    model.eval()
    for _turn in range(max_turns + 1):
        if not active:
            break
        ids = [
            tok.apply_chat_template(convs[i], add_generation_prompt=True, tokenize=True, return_dict=False)
            for i in active
        ]
        width = max(map(len, ids))
        inp = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
        att = (
            torch.arange(width).unsqueeze(0) >= torch.tensor([width - len(x) for x in ids]).unsqueeze(1)
        ).long()
        with torch.no_grad():
            out = model.generate(
                input_ids=inp,
                attention_mask=att,
                do_sample=True,
                temperature=temperature,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        nxt = []
        for j, i in enumerate(active):
            gen = out[j, width:].tolist()
            if tok.eos_token_id in gen:
                gen = gen[: gen.index(tok.eos_token_id) + 1]
            msg = parse_response(tok, gen, prefix=ids[j], tools=list(tools.values()))
            convs[i].append(msg)
            calls = msg.get("tool_calls") or []
            for tc in calls:
                fn = tc["function"]
                try:
                    if fn["name"] not in tools:
                        raise ValueError(f"Tool {fn['name']} not found.")
                    result = getattr(envs[i], fn["name"])(**fn["arguments"])
                except Exception as e:  # same as TRL: the error becomes the tool result
                    result = {"error": str(e)}
                convs[i].append({"role": "tool", "name": fn["name"], "content": str(result)})
            if calls:
                nxt.append(i)
        active = nxt
    for env, conv in zip(envs, convs):
        env.conversation = conv
    return envs


def success_rate(
    model, tok, bench, n_tasks: int, k: int, seed: int = 0, temperature: float = 1.0
) -> dict[str, float]:
    """pass@1 (mean success), pass@k and mean turns on the first ``n_tasks`` eval tasks."""
    rows = [bench.eval[i] for i in range(min(n_tasks, len(bench.eval)))]
    envs = play(model, tok, bench, rows, k=k, temperature=temperature, seed=seed)
    succ = [float(bench.info["success"](e)) for e in envs]
    per_task = [max(succ[i * k : (i + 1) * k]) for i in range(len(rows))]
    return {
        "pass@1": sum(succ) / len(succ),
        f"pass@{k}": sum(per_task) / len(per_task),
        "mean_tool_calls": sum(len(e.steps) for e in envs) / len(envs),
        "valid_call_frac": sum(s.valid for e in envs for s in e.steps)
        / max(1, sum(len(e.steps) for e in envs)),
    }


def ensure_env_policy(
    policy_cfg: Mapping[str, Any] | None,
    bench_cfg: Mapping[str, Any],
    cache_dir: Path,
    show_progress: bool = True,
) -> Path:
    """``cache_dir/envpolicy-<key>``: built with :func:`build_policy` + :func:`success_rate` on a miss."""
    from crs.benchmarks import build_benchmark

    pcfg = EnvPolicyConfig.from_any(policy_cfg)
    from crs.cache import publish

    final = Path(cache_dir) / f"envpolicy-{bench_cfg['name']}-{cache_key(pcfg, bench_cfg)}"

    def build(tmp: Path) -> None:
        if show_progress:  # minutes of SFT follow: say what and why before they start
            print(
                f"crs: building the {bench_cfg['name']} policy once (chat tokenizer + toy Qwen2 + SFT warm start, "
                f"{pcfg.sft_steps} steps); cached in {final}",
                flush=True,
            )
        bench = build_benchmark(bench_cfg, pcfg.seed)
        t0 = time.perf_counter()
        model, tok, info = build_policy(pcfg, bench, show_progress=show_progress)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        t1 = time.perf_counter()
        ev = (
            success_rate(model, tok, bench, pcfg.eval_tasks, pcfg.eval_k, seed=pcfg.seed)
            if pcfg.eval_tasks
            else {}
        )
        report = {
            "builder_version": POLICY_VERSION,
            "policy": asdict(pcfg),
            "benchmark": {k: v for k, v in dict(bench_cfg).items() if k != "policy"},
            "n_params": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tok),
            "sft": info,
            "eval": ev,
            "wall_time_s": {"sft": t1 - t0, "eval": time.perf_counter() - t1},
        }
        (tmp / "crs_pretrain.json").write_text(json.dumps(report, indent=2, default=str))

    from crs.embedded import _say_if_waiting

    _say_if_waiting(final, "crs_pretrain.json")  # another job's build: say why nothing happens for minutes
    return publish(final, "crs_pretrain.json", build)


if __name__ == "__main__":  # pragma: no cover
    import sys

    from crs.envs import default_bench_cfg

    name = sys.argv[1] if len(sys.argv) > 1 else "maze"
    cfg = default_bench_cfg(name)
    over = dict(a.split("=", 1) for a in sys.argv[2:])
    pol = dict(cfg.get("policy", {}))
    for k, v in over.items():
        pol[k] = type(getattr(EnvPolicyConfig(), k))(v)
    cfg["policy"] = pol
    path = ensure_env_policy(pol, cfg, Path(os.environ.get("CRS_CACHE_DIR", Path.home() / ".cache/crs")))
    print(path)
    print(json.dumps(json.loads((path / "crs_pretrain.json").read_text())["eval"], indent=2))
    _ = random
