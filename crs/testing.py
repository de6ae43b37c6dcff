"""Test helpers: a real, tiny, local model directory built in seconds without any hub.

``build_tiny_model`` uses exactly the embedded model's tokenizer and architecture
(:mod:`crs.embedded`) at the smallest size, with a handful of SFT steps so that its completions
already look like the task's format. Everything is hermetic and seeded, so tests, smoke runs and
docs can point ``model.name_or_path`` at the returned directory.

Example::

    python -c "from pathlib import Path; from crs.testing import build_tiny_model; print(build_tiny_model(Path('/tmp/tiny')))"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crs.embedded import EmbeddedModelConfig, build_and_sft

# Smallest useful size: 2 layers so attention can copy operands; a few SFT steps so EOS and the
# output format start to appear (the model is not expected to solve the task).
TINY_MODEL_CONFIG = EmbeddedModelConfig(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    intermediate_size=64,
    n_sft=256,
    sft_steps=8,
    sft_batch_size=8,
    learning_rate=3e-3,
    warmup_steps=0,
    error_rate=0.0,
)

# Small task so that the tokenizer corpus / SFT data are generated instantly.
TINY_BENCH_CONFIG: dict[str, Any] = {"name": "arithmetic", "n_train": 64, "n_eval": 16, "max_terms": 3}


def build_tiny_model(out_dir: Path, seed: int = 0, sft_steps: int | None = None) -> Path:
    """Build the tiny model into ``out_dir`` (``save_pretrained`` layout) and return ``out_dir``.

    Args:
        out_dir (`Path`): target directory (created).
        seed (`int`): seed for tokenizer corpus, init and SFT; same seed => identical weights.
        sft_steps (`int`, *optional*): override the (tiny) number of SFT steps; 0 = random init.

    Returns:
        ``out_dir``, containing ``config.json``, ``model.safetensors``, tokenizer files and
        ``crs_tiny.json`` (the config used).
    """
    from dataclasses import asdict, replace

    cfg = replace(TINY_MODEL_CONFIG, seed=seed)
    if sft_steps is not None:
        cfg = replace(cfg, sft_steps=sft_steps)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer, info = build_and_sft(cfg, TINY_BENCH_CONFIG, show_progress=False)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "crs_tiny.json").write_text(
        json.dumps(
            {"config": asdict(cfg), "benchmark": TINY_BENCH_CONFIG, "sft_final_loss": info["final_loss"]}
        )
    )
    return out_dir


def cpu_grpo_config(output_dir: str | Path, **overrides: Any):
    """A ``GRPOConfig`` that runs on a CPU in seconds: tiny batch, fp32, nothing logged or saved.

    TRL defaults to bf16 (fails on CPU), gradient checkpointing and ``logging_steps=10``; tests and
    benchmarks share these settings so they all measure the same thing.
    """
    from trl import GRPOConfig

    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        max_steps=1,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=12,
        learning_rate=1e-3,
        logging_steps=1,
        beta=0.0,
        loss_type="grpo",
        use_cpu=True,
        bf16=False,
        activation_checkpointing=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)
