"""A tiny environment policy for trainer-wiring tests: 40 SFT steps on clean expert traces, built once
(content-addressed cache) and small enough to build in seconds on an idle CPU."""

from __future__ import annotations

import os
from pathlib import Path


def tiny_env_policy(benchmark: str, tmp_path_factory, max_positions: int, **bench) -> tuple[Path, dict]:
    """``(policy folder, benchmark config)`` of a 2-layer, 32-wide policy on ``benchmark`` (64 train and
    8 eval tasks; ``bench`` overrides more task fields)."""
    from crs.envs import default_bench_cfg
    from crs.envs.policy import ensure_env_policy

    cfg = default_bench_cfg(benchmark)
    cfg.update(n_train=64, n_eval=8, **bench)
    pol = dict(
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
        n_sft=320,
        sft_steps=40,
        error_rate=0.0,
        eval_tasks=0,
        vocab_size=160,
        max_position_embeddings=max_positions,
        sft_batch_size=16,
    )
    cfg["policy"] = pol
    cache = Path(os.environ.get("CRS_CACHE_DIR") or tmp_path_factory.mktemp("envcache"))
    return ensure_env_policy(pol, cfg, cache, show_progress=False), cfg
