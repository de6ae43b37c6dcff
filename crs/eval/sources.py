"""``source=`` → the models ``crs eval`` scores.

- ``null``: the ``model`` group (``model.name_or_path``, or the embedded model crs builds and caches);
- a folder with ``config.json``: that model; with ``adapter_config.json``: a LoRA adapter (PEFT), on the
  base ``model.name_or_path`` or, when that is null, the adapter's ``base_model_name_or_path``;
- an MLflow run id (in ``tracking.uri``): the run's final model (``<paths.output_dir>/model``, saved with
  ``trainer.save_model=true``), else its last complete checkpoint;
- a sweep id (or the sweep's parent run id): every finished job's final model, grouped by the sweep's
  swept keys except the seed, so the table shows intervals over seeds.

``run:<id>`` / ``sweep:<id>`` force one reading. Nothing heavy is imported here (MLflow only for ids).

    crs eval source=outputs/runs/2026-12-07/10-00-00-ab12/model
    crs eval source=sweep:3fa2c1d0 suite=paper
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from crs.errors import ConfigError


@dataclass
class Target:
    """One model to score: ``path`` (a model folder, or None = the embedded model), an optional LoRA
    ``adapter``, the MLflow ``run_id`` it came from, the ``group`` (cell) and ``seed`` for the table."""

    label: str
    path: str | None
    adapter: str | None = None
    run_id: str | None = None
    group: str = ""
    seed: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def _folder_target(folder: Path, cfg: DictConfig, label: str | None = None, **kw: Any) -> Target:
    if (folder / "adapter_config.json").is_file():
        base = cfg.model.name_or_path
        if not base:
            base = json.loads((folder / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise ConfigError(f"source: adapter {folder} names no base model; set model.name_or_path")
        return Target(label or folder.name, str(base), adapter=str(folder), **kw)
    if not (folder / "config.json").is_file():
        raise ConfigError(f"source: {folder} has no config.json or adapter_config.json (not a model folder)")
    return Target(label or folder.name, str(folder), **kw)


def _final_model(run) -> Path:
    """A training run's final model folder, else its last complete checkpoint."""
    from crs.runs.checkpoint import latest_checkpoint

    out = run.data.params.get("paths.output_dir")
    name = run.info.run_name
    if not out:
        raise ConfigError(
            f"source: run {run.info.run_id} ({name}) has no paths.output_dir param (not a crs run)"
        )
    final = Path(out) / "model"
    if (final / "config.json").is_file() or (final / "adapter_config.json").is_file():
        return final
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        return ckpt
    raise ConfigError(
        f"source: run {run.info.run_id} ({name}) kept no final model in {final} and no checkpoint "
        "(train with trainer.save_model=true)"
    )


def _run_target(run, cfg: DictConfig, swept: list[str]) -> Target:
    tags = dict(run.data.tags)
    keys = [k for k in swept if k != "seed"] or ["method", "schedule"]
    group = " · ".join(tags.get(f"sweep.{k}", tags.get(k, "?")) for k in keys)
    return _folder_target(
        _final_model(run),
        cfg,
        label=run.info.run_name or run.info.run_id[:8],
        run_id=run.info.run_id,
        group=group,
        seed=str(tags.get("seed", "")),
        tags={k: v for k, v in tags.items() if k in ("method", "schedule", "loss", "model", "sweep_id")},
    )


def _store(cfg: DictConfig):
    from mlflow.tracking import MlflowClient

    from crs.locations import default_uri
    from crs.runs.preflight import check_store

    uri = cfg.tracking.get("uri") or default_uri()
    check_store(uri, what="tracking.uri", create=False)
    return MlflowClient(uri), uri


def _sweep_targets(client, uri: str, sweep_id: str, cfg: DictConfig, parent=None) -> list[Target]:
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.sweep_id = '{sweep_id}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )
    jobs = [r for r in runs if r.data.tags.get("crs.role") != "sweep"]
    if parent is None:
        parent = next((r for r in runs if r.data.tags.get("crs.role") == "sweep"), None)
    if not jobs:
        raise ConfigError(f"source: sweep {sweep_id} has no finished job runs in {uri}")
    swept = []
    if parent is not None:
        raw = parent.data.tags.get("swept_keys") or "[]"
        try:
            swept = json.loads(raw) if raw.startswith("[") else raw.split(",")
        except json.JSONDecodeError:
            swept = []
    if not swept:
        swept = sorted({k[len("sweep.") :] for r in jobs for k in r.data.tags if k.startswith("sweep.")})
    return [_run_target(r, cfg, swept) for r in jobs]


def resolve_sources(cfg: DictConfig) -> list[Target]:
    """The models to evaluate, cheapest checks first; a :class:`ConfigError` line for a bad source."""
    src = cfg.get("source")
    if src is None or str(src) == "":
        path = cfg.model.name_or_path
        if path and Path(str(path)).is_dir():
            return [_folder_target(Path(str(path)), cfg, label=cfg.model.name)]
        return [Target(cfg.model.name, str(path) if path else None)]
    src = str(src)
    kind, _, value = src.partition(":") if src.startswith(("run:", "sweep:")) else ("", "", src)
    if not kind and Path(value).expanduser().exists():
        folder = Path(value).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"source: {value} is a file; give a model folder, a run id or a sweep id")
        return [_folder_target(folder, cfg)]
    if not kind and ("/" in value or value.startswith((".", "~"))):
        raise ConfigError(f"source: no such model folder {value!r}")
    from mlflow.exceptions import MlflowException

    client, uri = _store(cfg)
    run = None
    if kind != "sweep":
        try:
            run = client.get_run(value)
        except MlflowException:
            run = None
    if run is not None:
        if run.data.tags.get("crs.role") == "sweep":
            return _sweep_targets(client, uri, run.data.tags.get("sweep_id", ""), cfg, run)
        return [_run_target(run, cfg, [])]
    if kind == "run":
        raise ConfigError(f"source: no run {value!r} in {uri}")
    targets = _sweep_targets(client, uri, value, cfg) if _has_sweep(client, value) else None
    if targets is None:
        raise ConfigError(
            f"source: {value!r} is not a folder, a run id or a sweep id in {uri} (tracking.uri selects the store)"
        )
    return targets


def _has_sweep(client, sweep_id: str) -> bool:
    if "'" in sweep_id:
        return False
    exps = [e.experiment_id for e in client.search_experiments()]
    return bool(client.search_runs(exps, filter_string=f"tags.sweep_id = '{sweep_id}'", max_results=1))
