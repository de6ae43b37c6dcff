"""Experiment tracking: one MLflow run per ``crs train`` job, or a null tracker (``tracking=none``).

What a run holds (names chosen to be short and comparable in the MLflow UI and ``crs compare``):

- **params**: the resolved Hydra config flattened to dotted keys (``trainer.lr``, ``method.name``,
  ``schedule.end``, ...). TRL's own ``TrainingArguments`` are *not* logged as params (they would clash
  and silently drop a whole batch of 100); they go to the artifact ``config/grpo_config.json``.
- **tags**: ``method``, ``schedule``, ``loss``, ``model``, ``benchmark`` (Hydra choices), ``seed``,
  ``git_sha``, ``version.{crs,trl,transformers,torch}``; in sweeps also ``sweep_id``, ``job_num``,
  ``overrides`` and one ``sweep.<key>`` per swept key; ``error`` on failure.
- **metrics** every optimizer step (``step = global_step``): everything TRL logs (``reward``,
  ``reward_std``, ``entropy``, ``clip_ratio/*``, ``kl``, ``completions/mean_length``, ...) plus crs's
  ``accuracy``, ``schedule/rho``, ``credit/*``, ``adv/*``, ``entropy/{all,selected,unselected}``,
  ``diag/*`` and eval metrics ``eval_accuracy``/``eval_reward`` — renamed into UI sections
  (``1 main/reward``, ``2 schedule/rho``, …; see :mod:`crs.metric_layout`); the ``final/*`` summaries
  at the end become tags ``final.<name>``.
- **artifacts**: ``hydra/`` (the job's .hydra folder), ``samples/`` (rollouts at a few steps, JSON),
  ``plots/`` (percentile heatmaps), ``summary.json``.

Run status is ``FINISHED``, ``FAILED`` (tag ``error``) or ``KILLED`` (SIGTERM/SIGINT, e.g. a SLURM
time limit), set in a ``finally`` so a crash never loses what was logged before it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
_BAD_CHARS = re.compile(r"[^0-9A-Za-z_\-. :/]")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def default_uri(cwd: str | None = None) -> str:
    """``sqlite:///<abs cwd>/mlflow.db`` — absolute, so every job of a sweep writes the same store."""
    return f"sqlite:///{Path(cwd or os.getcwd()).resolve() / 'mlflow.db'}"


def git_sha() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    import crs

    return {
        "crs": crs.__version__,
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


class NullTracker:
    """``tracking=none``: the same interface, nothing recorded."""

    run_id: str | None = None
    uri: str | None = None

    def start(self, **_: Any) -> None: ...
    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_artifacts(self, local_dir: Path | str, artifact_path: str | None = None) -> None: ...
    def log_dict(self, data: Any, artifact_file: str) -> None: ...
    def end(self, status: str = "FINISHED", error: str | None = None) -> None: ...

    def callback(self):
        """A ``transformers.TrainerCallback`` that streams the trainer's logs, or ``None``."""
        return None


class MlflowTracker(NullTracker):
    """One MLflow run, opened by crs before training and closed in ``finally``.

    Args:
        uri: tracking URI (``sqlite:///...`` or ``http://host:port``).
        experiment: experiment name (created if missing, artifacts next to the sqlite file).
    """

    def __init__(self, uri: str | None, experiment: str):
        import mlflow

        self.mlflow = mlflow
        self.uri = uri or default_uri()
        self.experiment = experiment
        self.run_id = None
        self.client = None

    def start(
        self,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(self.uri)
        exp_id = ensure_experiment(self.client, self.experiment, self.uri)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        from crs.metric_layout import MetricLayout

        drives = all_tags.get("drives", "none")
        self.layout = MetricLayout(knobs=[] if drives == "none" else drives.split(","))

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = []
        for k, v in params.items():
            s = json.dumps(v) if isinstance(v, list | dict) else str(v)
            items.append(Param(k, s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 1] + "…"))
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:8000]) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        from crs.metric_layout import MetricLayout

        # UI sections, knob charts only where a knob is driven, summaries as tags (crs/metric_layout.py)
        metrics, summary_tags = getattr(self, "layout", MetricLayout()).split(metrics)
        if summary_tags:
            self.set_tags(summary_tags)
        ts = int(time.time() * 1000)
        items = []
        for k, v in metrics.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v) or math.isinf(v):
                continue
            items.append(Metric(_BAD_CHARS.sub("_", k), float(v), ts, int(step)))
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000], synchronous=True)

    def log_artifacts(self, local_dir: Path | str, artifact_path: str | None = None) -> None:
        if Path(local_dir).exists():
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self.run_id is None:
            return
        if error:
            self.client.set_tag(self.run_id, "error", error[:8000])
        self.client.set_terminated(self.run_id, status=status)

    def callback(self):
        return mlflow_metrics_callback(self)


def ensure_experiment(client, name: str, uri: str) -> str:
    """Get or create an experiment; with a sqlite store the artifacts live in ``mlartifacts/`` beside it."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another job created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def mlflow_metrics_callback(tracker: MlflowTracker):
    """A TrainerCallback sending every trainer log (TRL's + crs's metrics) to the run at ``global_step``.

    Built lazily so that importing this module (``crs compare``) does not import transformers/torch.
    """
    from transformers import TrainerCallback

    class MlflowMetricsCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                tracker.log_metrics(logs, step=state.global_step)

    return MlflowMetricsCallback()


def build_tracker(cfg: Mapping[str, Any]) -> NullTracker:
    """``tracking`` config node → tracker (``none`` → :class:`NullTracker`)."""
    if cfg["name"] == "none":
        return NullTracker()
    return MlflowTracker(cfg.get("uri"), cfg.get("experiment", "crs"))
