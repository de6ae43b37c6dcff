"""What one run is built from: threads, the model path (crs's own models built and cached on first use),
the model and tokenizer, TRL's ``GRPOConfig`` from ``cfg.trainer``.

:func:`crs.train.train` calls these in order; each reads the composed Hydra config and nothing else, so a
notebook can build the same pieces::

    from crs.cli import compose
    from crs.assemble import resolve_model_path, load_model, grpo_args
    cfg = compose(["method=tp_schedule"])
    model, tok = load_model(cfg, resolve_model_path(cfg)[0])
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def set_threads(cfg: DictConfig, ctx: dict[str, Any]) -> int:
    """One job per core at most: threads = cores / concurrent jobs unless trainer.num_threads says."""
    import torch

    n = cfg.trainer.num_threads
    if n is None:
        cores = os.cpu_count() or 1
        if os.environ.get("SLURM_CPUS_PER_TASK"):
            n = int(os.environ["SLURM_CPUS_PER_TASK"])
        elif ctx.get("multirun") and "Joblib" in str(ctx.get("launcher", {}).get("_target_", "")):
            jobs = int(ctx["launcher"].get("n_jobs") or -1)
            jobs = cores if jobs < 1 else jobs
            n = max(1, cores // jobs)
        else:
            n = cores
    torch.set_num_threads(max(1, int(n)))
    return int(n)


def resolve_model_path(cfg: DictConfig) -> tuple[str, dict[str, Any] | None]:
    """``model.name_or_path`` as given, or the embedded model (built and cached on first use)."""
    if cfg.model.name_or_path:
        return str(cfg.model.name_or_path), None
    from crs.benchmarks import is_multi_turn

    if is_multi_turn(cfg.benchmark.name):  # multi-turn environments build their own warm-started policy
        from crs.envs.policy import ensure_env_policy

        bench_cfg = OmegaConf.to_container(cfg.benchmark, resolve=True)
        path = ensure_env_policy(bench_cfg.get("policy"), bench_cfg, Path(cfg.paths.cache_dir))
        report = path / "crs_pretrain.json"
        return str(path), (json.loads(report.read_text()) if report.exists() else None)
    from crs.embedded import EmbeddedModelConfig, cache_key, ensure_embedded_model
    from crs.progress import console

    mcfg = EmbeddedModelConfig(**OmegaConf.to_container(cfg.model.embedded, resolve=True))
    cache_dir = Path(cfg.paths.cache_dir)
    if not (cache_dir / f"embedded-{cache_key(mcfg, cfg.benchmark)}").exists():
        console.print(
            f"crs: building the embedded model once (tokenizer + toy Qwen2 + SFT warm-start, "
            f"{mcfg.sft_steps} steps); cached in {cache_dir}"
        )
    path = ensure_embedded_model(mcfg, cfg.benchmark, cache_dir)
    report = path / "crs_pretrain.json"
    return str(path), (json.loads(report.read_text()) if report.exists() else None)


def load_model(cfg: DictConfig, path: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        cfg.model.dtype
    ]
    if dtype == "auto" and not torch.cuda.is_available():
        dtype = torch.float32
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.model.trust_remote_code)
    tok.padding_side = "left"
    from crs.envs.chat import ensure_response_template

    ensure_response_template(tok)  # crs's tool-calling chat format (environment policies)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, trust_remote_code=cfg.model.trust_remote_code
    )
    return model, tok


# crs loss names that TRL spells differently
TRL_LOSS = {"token_mean": "dapo", "opmd": "cispo"}


def grpo_args(cfg: DictConfig, output_dir: Path, n_params: int | None = None):
    """The GRPOConfig for this job (every knob comes from cfg.trainer; ``n_params`` sizes ``precision: auto``)."""
    from trl import GRPOConfig

    from crs.rollout import grpo_generation_kwargs
    from crs.trainers.args import training_kwargs

    t = cfg.trainer
    n_eval = t.num_generations_eval
    eval_prompts_per_batch = max(1, min(16, t.eval_prompts))
    kwargs = dict(
        **training_kwargs(cfg, output_dir, n_params, _checkpoint_steps(cfg)),
        per_device_eval_batch_size=n_eval * eval_prompts_per_batch,
        steps_per_generation=t.steps_per_generation,
        num_iterations=t.num_iterations,
        beta=t.beta,
        epsilon=t.epsilon,
        epsilon_high=1.0 if t.loss_type == "opmd" else t.epsilon_high,
        # token_mean is TRL's dapo normaliser made exact by the trainer; opmd is cispo with the ratio
        # fixed at 1 (the trainer drops the old log-probs), so ε_high only has to be >= 1
        loss_type=TRL_LOSS.get(t.loss_type, t.loss_type),
        scale_rewards=t.scale_rewards,
        importance_sampling_level=t.importance_sampling_level,
        mask_truncated_completions=t.mask_truncated_completions,
        temperature=t.temperature,
        top_p=t.top_p,
        max_completion_length=t.max_completion_length,
        num_generations=t.num_generations,
        num_generations_eval=n_eval,
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5 name of gradient_checkpointing
    )
    kwargs.update(grpo_generation_kwargs(t.generation, t.vllm_mode))
    kwargs.update(OmegaConf.to_container(t.extra, resolve=True))
    return GRPOConfig(**kwargs)


def _checkpoint_steps(cfg: DictConfig) -> int:
    """``runs.checkpoint_every`` rounded up to whole rollouts: TRL reuses one rollout for
    steps_per_generation × num_iterations micro-steps, and a resumed trainer starts a fresh rollout, so a
    checkpoint inside a rollout's window would change the data after the resume."""
    from crs.trainers.args import checkpoint_every

    every = checkpoint_every(cfg)
    t = cfg.trainer
    if every == 0:
        return 0
    micro = (t.steps_per_generation or t.gradient_accumulation_steps) * t.num_iterations
    per_rollout = max(1, micro // t.gradient_accumulation_steps)
    return -(-every // per_rollout) * per_rollout


def _sample_steps(max_steps: int, n: int) -> list[int]:
    if n <= 0:
        return []
    if n == 1:
        return [0]
    return sorted({round(i * (max_steps - 1) / (n - 1)) for i in range(n)})
