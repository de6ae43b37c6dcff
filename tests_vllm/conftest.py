"""tests_vllm/: TRL's vLLM path on CPU, run by `make test-vllm` in .venv-vllm (not collected by `make test`)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CRS_CACHE_DIR", str(REPO / ".cache" / "test-models"))
for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(k, "1")
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # as TRL colocate: the engine in-process


# vLLM's CPU attention has no kernel for head_dim 16 (debug=fast: hidden 64 / 4 heads): "Unsupported CPU
# attention configuration: head_dim=16 isa=2 kv_cache_idx=0". 2 heads give head_dim 32, which it serves.
MODEL = ["debug=fast", "model.embedded.num_heads=2", "model.embedded.num_kv_heads=2"]


def run_crs(*args, cwd=None, timeout=900, env=None):
    return subprocess.run(
        [sys.executable, "-m", "crs.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The embedded debug=fast model folder (built by crs on a cache miss)."""
    from crs.cli import compose
    from crs.embedded import ensure_embedded_model

    cfg = compose(MODEL)
    return ensure_embedded_model(
        cfg.model.embedded,
        cfg.benchmark,
        Path(os.environ["CRS_CACHE_DIR"]),
        show_progress=False,
    )
