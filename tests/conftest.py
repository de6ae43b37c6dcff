"""Hermetic test setup: no hub, no network, tiny local models built once per session.

make test            # the CI command (README)
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
# built models are content-addressed (a hash of their config), so tests may share one cache folder
# across sessions; kept apart from the user's ~/.cache/crs
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("CRS_CACHE_DIR", os.path.join(REPO, ".cache", "test-models"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A real local model folder (the embedded tokenizer + a toy Qwen2), built in seconds."""
    from crs.testing import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-model")))


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    """A teacher for tiny_model_dir: the same tokenizer (same seed), other weights (no SFT)."""
    from crs.testing import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-teacher"), seed=0, sft_steps=0))


@pytest.fixture
def compose_cfg(tmp_path):
    """Compose conf/train.yaml like `crs train` would, writing into tmp_path (job folder + MLflow store)."""
    from crs.cli import compose

    def _compose(*overrides: str):
        return compose(
            [
                f"paths.output_dir={tmp_path / 'job'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                *overrides,
            ]
        )

    return _compose


def run_crs(*args, cwd=None, timeout=600):
    """Run the real `crs` command line in a subprocess (as a user would)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "crs.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
