"""Sweeps: one MLflow parent run per ``crs train -m``, created before any job starts.

The Hydra callback :class:`MlflowSweepCallback` runs in the launching process. At
``on_multirun_start`` it first composes and checks **every job's config** (values, model path, data
files, tracking store: :func:`check_every_job`), so one bad value stops the sweep with one line before
any job or parent run exists; then it creates the experiment (so parallel jobs never race on sqlite schema or
experiment creation) and a parent run, and writes ``<sweep dir>/crs_sweep.json`` — the parent run id,
tracking URI, experiment, sweep id and the swept keys. Jobs read that file (it works on a shared file
system, where environment variables of the launching shell do not reach SLURM array tasks) and open
their runs as children, tagged ``sweep_id``, ``job_num``, ``overrides`` and ``sweep.<key>``.

Hydra skips ``on_multirun_end`` when a job failed (it re-raises the job's exception after the batch),
so the parent is also finalised at process exit: its status becomes FAILED if any child failed or was
killed (tags ``jobs.finished``, ``jobs.failed``, ``jobs.killed`` say how many), FINISHED otherwise.
Relaunching a sweep (``resume=auto``) skips jobs whose run FINISHED and resumes unfinished ones from
their checkpoints; the new parent adopts both, so its counts cover every job.
SLURM shows Hydra jobs that raised as COMPLETED; MLflow is where the truth lives.

    crs train -m method=grpo,tp_schedule schedule=linear seed=0,1 hydra/launcher=local
    crs compare --last
"""

from __future__ import annotations

import atexit
import json
import math
import uuid
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from crs.runs.parent import SWEEP_FILE, finalize_sweep, read_parent  # noqa: F401  (re-exported)


def swept_keys(task_overrides: list[str], sweeper_params: dict[str, Any] | None) -> list[str]:
    """Keys that take several values in this sweep (CLI ``a=1,2``/``range()``/``glob()`` or sweeper params)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = [o.get_key_element() for o in parser.parse_overrides(task_overrides) if o.is_sweep_override()]
    for key, value in (sweeper_params or {}).items():
        parsed = parser.parse_overrides([f"{key}={value}"])[0]
        if parsed.is_sweep_override():
            keys.append(parsed.get_key_element())
    return list(dict.fromkeys(k.lstrip("+~") for k in keys))  # command-line order


def sweep_jobs(config: DictConfig) -> list[list[str]]:
    """Every job's overrides, as Hydra's basic sweeper will expand them (grid params, then CLI overrides)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_every_job(config: DictConfig) -> None:
    """Compose and check each job of the sweep (values, model path, data files, store); one line, exit 2."""
    import sys

    from hydra.core.global_hydra import GlobalHydra

    from crs.config import validate
    from crs.errors import ConfigError
    from crs.progress import error_line
    from crs.runs.preflight import check_resources
    from crs.runs.redact import redact_text

    loader = GlobalHydra.instance().config_loader()
    jobs = sweep_jobs(config)
    seen: set[str] = set()
    for i, job in enumerate(jobs):
        try:
            cfg = loader.load_sweep_config(config, job)
            validate(cfg)
            res = json.dumps(
                OmegaConf.to_container(
                    OmegaConf.masked_copy(cfg, ["model", "benchmark", "tracking"]), resolve=True
                ),
                sort_keys=True,
                default=str,
            )
            if res not in seen:
                seen.add(res)
                check_resources(cfg)
        except ConfigError as err:
            error_line(redact_text(f"sweep job #{i} ({' '.join(job)}): {err}"))
            sys.exit(2)
        except Exception as err:
            from crs.errors import one_line as _one_line

            error_line(redact_text(f"sweep job #{i} ({' '.join(job)}): {_one_line(err)}"))
            sys.exit(2)


class MlflowSweepCallback(Callback):
    """Parent run + experiment creation for multiruns (configured in ``conf/train.yaml`` ``hydra.callbacks``)."""

    def __init__(self) -> None:
        self.info: dict[str, Any] | None = None
        self._done = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from crs.runs.redact import install_log_redaction

        install_log_redaction()  # Hydra logs every job's overrides
        check_every_job(config)  # one bad value stops the sweep before any job or parent run exists
        if config.get("tracking") is None or config.tracking.name == "none":
            return
        from mlflow.tracking import MlflowClient

        from crs.runs.lock import store_lock
        from crs.runs.redact import redact_text, use_clean_uri
        from crs.tracking import default_uri, ensure_experiment, git_sha

        uri = use_clean_uri(config.tracking.uri or default_uri())
        with store_lock(uri):
            client = MlflowClient(uri)
            exp_id = ensure_experiment(client, config.tracking.experiment, uri)
        sweep_dir = Path(config.hydra.sweep.dir).resolve()
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
        params = config.hydra.sweeper.get("params") or {}
        params = OmegaConf.to_container(params, resolve=False) if params else {}
        keys = swept_keys(overrides, params)
        sweep_id = uuid.uuid4().hex[:8]
        choices = config.hydra.runtime.get("choices", {})
        from crs.naming import parent_name, sweep_grid

        grid = sweep_grid(overrides, params)
        config_name = str(config.hydra.job.get("config_name") or "train")
        run = client.create_run(
            exp_id,
            run_name=parent_name(config_name, keys, grid),
            tags={
                "crs.role": "sweep",
                "sweep_id": sweep_id,
                "sweep_dir": str(sweep_dir),
                "swept_keys": ",".join(keys),
                "overrides": redact_text(" ".join(overrides)),
                "sweep_params": redact_text(json.dumps(params)),
                "launcher": str(choices.get("hydra/launcher", "basic")),
                "git_sha": git_sha(),
            },
        )
        self.info = {
            "run_id": run.info.run_id,
            "uri": redact_text(uri),
            "experiment": config.tracking.experiment,
            "sweep_id": sweep_id,
            "swept_keys": keys,
            "sweep_dir": str(sweep_dir),
            # for the parent's description and the jobs' duplicate check (crs/naming.py)
            "grid": grid,
            "config_name": config_name,
            "overrides": overrides,
            "launcher": str(choices.get("hydra/launcher", "basic")),
            "n_jobs": math.prod(len(v) for v in grid.values()) if grid else 1,
        }
        _describe_parent(client, self.info)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_FILE).write_text(json.dumps(self.info, indent=2))
        atexit.register(self._finalize)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finalize()

    def _finalize(self) -> None:
        if self.info is None or self._done:
            return
        self._done = True
        try:
            counts = finalize_sweep(self.info)
            _publish_comparison(self.info, counts)
            print(
                f"crs: sweep {self.info['sweep_id']} — {counts['finished']} finished, {counts['failed']} failed, "
                f"{counts['killed']} killed. Compare with: crs compare --sweep {self.info['sweep_id']}",
                flush=True,
            )
        except Exception as err:  # never mask the sweep's own outcome
            print(f"crs: could not finalise the sweep's MLflow parent run: {err}", flush=True)


def _describe_parent(client, info: dict[str, Any]) -> None:
    """The parent's description (grid, command) and the grid as params, for the MLflow UI."""
    from mlflow.entities import Param

    from crs.naming import DESCRIPTION_TAG, parent_description

    client.set_tag(info["run_id"], DESCRIPTION_TAG, parent_description(info))
    params = [Param(f"grid.{k}", ",".join(v)[:6000]) for k, v in info["grid"].items()]
    if params:
        client.log_batch(info["run_id"], params=params, synchronous=True)


def _publish_comparison(info: dict[str, Any], counts: dict[str, int]) -> None:
    """After the jobs: the ``crs compare`` table and plots as the parent's artifacts and description."""
    try:
        from crs.compare.publish import publish

        publish(info, counts)
    except Exception as err:  # a comparison that cannot be drawn must not fail the sweep
        print(f"crs: could not attach the comparison to the sweep's parent run: {err}", flush=True)
