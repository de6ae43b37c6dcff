"""Where crs's own files live in a checkout: the Hydra configs and the sweep grids."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
SWEEPS_DIR = ROOT / "sweeps"


def default_uri(cwd: str | None = None) -> str:
    """``sqlite:///<abs cwd>/mlflow.db`` — absolute, so every job of a sweep writes the same store."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"
