"""Process-wide quiet: what a user cannot act on (hub telemetry, experimental/deprecation chatter, INFO
logs) is silenced before the libraries load. :func:`quiet_env` sets only environment switches (cheap,
before any import); :func:`quiet` also tunes transformers/datasets logging.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_env() -> None:
    """Environment switches that must be set before the libraries are imported."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")  # crs logs to MLflow itself
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # a tracking server that went away must fail a run in seconds, not stall it in retries for minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def quiet() -> None:
    """Silence what a user cannot act on: hub telemetry, experimental/deprecation chatter, INFO logs."""
    quiet_env()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
    for name in ("mlflow", "alembic", "urllib3", "datasets", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass
