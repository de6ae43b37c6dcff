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

Run status is ``FINISHED``, ``FAILED`` (tag ``error``) or ``KILLED`` (SIGTERM/SIGINT/SIGHUP, e.g. a
SLURM time limit), set in a ``finally`` so a crash never loses what was logged before it.

Trust (crs/runs/): the first use of a sqlite store is serialised by a file lock (MLflow's schema
migration must not race); every param, tag and JSON artifact passes through the redactor (no
credentials stored); NaN/inf metric values are logged, not dropped; a resumed run skips metric steps
it already holds; a store that stops answering mid-run raises :class:`TrackingError` within seconds
(MLflow's HTTP retries are capped in ``crs.train.quiet_env``) instead of stalling training.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crs.locations import default_uri  # noqa: F401  (re-exported)
from crs.runs.signals import shield  # store writes are never cut by a kill signal

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


def end_status(err: BaseException) -> tuple[str, str]:
    """How a run that raised ``err`` is closed: ``KILLED`` on a signal or Ctrl-C (KeyboardInterrupt,
    crs's ``JobKilled``), else ``FAILED``; with the error's one-line description."""
    return ("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"), f"{type(err).__name__}: {err}"


class TrackingError(RuntimeError):
    """The tracking store stopped answering (or refused a write) during a run."""


class NullTracker:
    """``tracking=none``: the same interface, nothing recorded."""

    run_id: str | None = None
    uri: str | None = None

    def find_runs(self, tags: Mapping[str, str]) -> list:
        return []

    def exists(self, run_id: str | None) -> bool:
        return False

    def reopen(self, run_id: str, tags: Mapping[str, Any] | None = None) -> None: ...
    def tag_run(self, run_id: str, tags: Mapping[str, Any]) -> None: ...

    def close_other(self, run_id: str, status: str, tags: Mapping[str, Any]) -> None: ...

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

        from crs.runs.redact import use_clean_uri

        self.mlflow = mlflow
        self.uri = use_clean_uri(uri or default_uri())  # credentials go to MLflow's env vars, never stored
        self.experiment = experiment
        self.run_id = None
        self.client = None
        self.exp_id = None
        self._logged_steps: dict[str, int] = {}  # resumed run: last step each metric already holds

    def connect(self) -> None:
        """Open the store once; the first use of a sqlite file (schema creation/migration) under a lock."""
        if self.client is not None:
            return
        from mlflow.tracking import MlflowClient

        from crs.runs.lock import store_lock

        self.mlflow.set_tracking_uri(self.uri)
        with store_lock(self.uri):
            self.client = MlflowClient(self.uri)
            self.exp_id = ensure_experiment(self.client, self.experiment, self.uri)

    def find_runs(self, tags: Mapping[str, str]) -> list:
        """Job runs of this experiment carrying all ``tags``, most recent first."""
        self.connect()
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs(
            [self.exp_id], filter_string=flt, order_by=["attributes.start_time DESC"]
        )

    def exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        self.connect()
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    @shield
    def tag_run(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags on another run (a relaunched sweep adopts the runs it resumes or skips)."""
        from crs.runs.redact import redact_mapping

        self.connect()
        for k, v in redact_mapping(tags).items():
            self.client.set_tag(run_id, k, str(v))

    @shield
    def close_other(self, run_id: str, status: str, tags: Mapping[str, Any]) -> None:
        """Close another run of this store (a dead run this job replaces) with ``status`` and ``tags``."""
        self.tag_run(run_id, tags)
        self.client.set_terminated(run_id, status=status)

    @shield
    def reopen(self, run_id: str, tags: Mapping[str, Any] | None = None) -> None:
        """Continue ``run_id``: status back to RUNNING, the old ``error`` tag removed, logged steps noted."""
        self.connect()
        self.run_id = run_id
        run = self.client.get_run(run_id)
        for stale in ("error", "crs.ghost", "crs.nonfinite"):
            if stale in run.data.tags:
                self.client.delete_tag(run_id, stale)
        self.client.update_run(run_id, status="RUNNING")
        for key in run.data.metrics:
            history = self.client.get_metric_history(run_id, key)
            if history:
                self._logged_steps[key] = max(m.step for m in history)
        if tags:
            self.set_tags(tags)
        from crs.metric_layout import MetricLayout

        drives = run.data.tags.get("drives", "none")  # the same UI layout as the first attempt
        self.layout = MetricLayout(knobs=[] if drives == "none" else drives.split(","))

    @shield
    def start(
        self,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        from crs.runs.redact import redact_mapping

        self.connect()
        all_tags = {k: str(v) for k, v in redact_mapping(tags or {}).items()}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.exp_id, run_name=run_name, tags=all_tags)
        self.run_id = run.info.run_id
        from crs.metric_layout import MetricLayout

        drives = all_tags.get("drives", "none")
        self.layout = MetricLayout(knobs=[] if drives == "none" else drives.split(","))

    @shield
    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        from crs.runs.redact import redact_mapping

        items = []
        for k, v in redact_mapping(params).items():
            s = json.dumps(v) if isinstance(v, list | dict) else str(v)
            items.append(Param(k, s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 1] + "…"))
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    @shield
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        from crs.runs.redact import redact_mapping

        items = [RunTag(k, str(v)[:8000]) for k, v in redact_mapping(tags).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i : i + 100], synchronous=True)

    @shield
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
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue  # NaN/inf are kept: a diverging step must show its values
            key = _BAD_CHARS.sub("_", k)
            if self._logged_steps.get(key, -1) >= step:
                continue  # each step once (a resumed run recomputes the steps after its checkpoint)
            items.append(Metric(key, float(v), ts, int(step)))
        try:
            for i in range(0, len(items), 1000):
                self.client.log_batch(self.run_id, metrics=items[i : i + 1000], synchronous=True)
        except Exception as err:
            raise TrackingError(_store_failure(self.uri, err)) from None
        for m in items:  # one value per metric and step (HF's end-of-training log repeats `epoch`)
            self._logged_steps[m.key] = m.step

    @shield
    def log_artifacts(self, local_dir: Path | str, artifact_path: str | None = None) -> None:
        if Path(local_dir).exists():
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    @shield
    def log_dict(self, data: Any, artifact_file: str) -> None:
        from crs.runs.redact import redact_value

        self.client.log_dict(self.run_id, redact_value("", data), artifact_file)

    @shield
    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        from crs.runs.redact import redact_text

        if self.run_id is None:
            return
        if error:
            self.client.set_tag(self.run_id, "error", redact_text(error)[:8000])
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


def _store_failure(uri: str, err: BaseException) -> str:
    from crs.runs.redact import redact_text

    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return redact_text(f"tracking store {uri} failed: {type(err).__name__}: {first[:200]}")


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
