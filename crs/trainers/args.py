"""The TrainingArguments every crs trainer shares, built once from ``cfg.trainer``.

Each trainer's config (``GRPOConfig``, ``DPOConfig``, ``GKDConfig``, …) subclasses transformers'
``TrainingArguments``; the fields below mean the same thing in all of them, so they are derived here and
each trainer adds only its own (``crs/assemble.py`` for GRPO, ``crs/trainers/dpo.py`` for DPO)::

    kwargs = {**training_kwargs(cfg, output_dir, n_params), "beta": cfg.trainer.beta}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crs.errors import ConfigError


def wants_cuda(cfg: Any) -> bool:
    """Whether this job trains on CUDA (``trainer.device``: auto = when a GPU is visible)."""
    import torch

    t = cfg.trainer
    if t.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible")
    return torch.cuda.is_available() and t.device != "cpu"


def checkpoint_every(cfg: Any) -> int:
    """``runs.checkpoint_every`` in optimizer steps: < 0 = auto (a killed run loses at most ~10 % of its
    steps), 0 = no checkpoints."""
    every = int(cfg.runs.checkpoint_every)
    return max(1, -(-int(cfg.trainer.max_steps) // 10)) if every < 0 else every


def training_kwargs(cfg: Any, output_dir: Path, n_params: int | None, save_steps: int) -> dict[str, Any]:
    """TrainingArguments fields of a run: optimiser, precision, seeds, logging, checkpoints, eval cadence.

    ``save_steps`` is the trainer's checkpoint cadence (0 = none): GRPO rounds it up to whole rollouts,
    other trainers take :func:`checkpoint_every` as is. ``n_params`` sizes ``precision: auto``.
    """
    import torch

    from crs.precision import resolve_precision

    t = cfg.trainer
    cuda = wants_cuda(cfg)
    precision = resolve_precision(t.precision, cuda, n_params, cuda and torch.cuda.is_bf16_supported())
    return dict(
        output_dir=str(Path(output_dir) / "checkpoints"),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=int(t.warmup_steps) if t.warmup_steps >= 1 else t.warmup_steps,  # < 1: a fraction
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        logging_steps=1,
        logging_nan_inf_filter=False,  # a NaN loss is shown as NaN, not replaced by the running mean
        # resumable checkpoints into <run home>/checkpoints (crs/runs/checkpoint.py publishes and prunes)
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or None,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=not cuda,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        eval_strategy="steps" if t.eval_steps > 0 else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None,
        dataloader_num_workers=0,
    )
