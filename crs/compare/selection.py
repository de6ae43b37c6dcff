"""Which runs ``crs compare`` reads: ``--sweep`` / ``--experiment`` / ``--last`` → a :class:`Selection`.

A sweep (``crs train -m``) leaves one MLflow parent run (``crs.role=sweep``, ``swept_keys``) and one child
run per job tagged ``sweep_id``; ``--sweep`` takes that id, the parent's or a job's run id, or the sweep
directory (whose ``crs_sweep.json`` knows the store). Reading never creates a store.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crs.metric_layout import ui_key


class CompareError(Exception):
    """Nothing to compare, or a selector that matches nothing: one line on stderr, exit 1."""


@dataclass
class Selection:
    """Which runs to read and how to describe them."""

    uri: str
    description: str
    experiment_ids: list[str] | None  # None: all experiments
    filter_string: str = ""
    parent: Any = None  # mlflow Run of the sweep parent
    sweep_id: str | None = None


def _default_uri() -> str:
    from crs.tracking import default_uri

    return default_uri()


def _existing_store(uri: str) -> str:
    """Refuse a sqlite path that does not exist: MLflow would silently create an empty store there."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        raise CompareError(
            f"no MLflow store at {uri[len('sqlite:///') :]} (run crs train there first, or pass --uri)"
        )
    return uri


def _quote(value: str) -> str:
    if "'" in value:
        raise CompareError(f"invalid id {value!r}")
    return f"'{value}'"


def _search(uri: str, **kwargs: Any):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(**kwargs)


def _find_parents(uri: str, filter_extra: str = "", max_results: int = 1) -> list:
    flt = "tags.`crs.role` = 'sweep'" + (f" and {filter_extra}" if filter_extra else "")
    return _search(
        uri,
        search_all_experiments=True,
        filter_string=flt,
        order_by=["attributes.start_time DESC"],
        max_results=max_results,
        output_format="list",
    )


def _from_parent(uri: str, parent, how: str) -> Selection:
    sweep_id = parent.data.tags.get("sweep_id")
    if not sweep_id:
        raise CompareError(f"run {parent.info.run_id} is tagged as a sweep but has no sweep_id tag")
    return Selection(
        uri, how, [parent.info.experiment_id], f"tags.sweep_id = {_quote(sweep_id)}", parent, sweep_id
    )


def resolve(args: argparse.Namespace) -> Selection:
    """Turn ``--sweep/--experiment/--last`` (or none) into the runs to read.

    Args:
        args: parsed command line (``sweep``, ``experiment``, ``last``, ``uri``).
    Returns:
        A :class:`Selection`.
    Raises:
        CompareError: the selector matches nothing.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = args.uri
    if args.sweep:
        from crs.runs.parent import SWEEP_FILE, read_parent

        path = Path(args.sweep).expanduser()
        if path.name == SWEEP_FILE and path.is_file():
            path = path.parent
        if path.is_dir():
            info = read_parent(path)
            if info is None:
                raise CompareError(
                    f"{path} has no {SWEEP_FILE} (a tracking=none sweep, or not launched by crs train -m)"
                )
            uri = _existing_store(uri or info["uri"])  # the file knows where the sweep was tracked
            try:
                parent = MlflowClient(uri).get_run(info["run_id"])
            except MlflowException:
                parent = None
            if parent is None:  # parent deleted: the children still carry the sweep id
                return Selection(
                    uri,
                    f"sweep {info['sweep_id']} (dir {path})",
                    None,
                    f"tags.sweep_id = {_quote(info['sweep_id'])}",
                    None,
                    info["sweep_id"],
                )
            return _from_parent(uri, parent, f"sweep {info['sweep_id']} (dir {path})")
        uri = _existing_store(uri or _default_uri())
        value = sweep_id = args.sweep.strip()
        try:
            run = MlflowClient(uri).get_run(value)
        except MlflowException:
            run = None
        if run is not None and run.data.tags.get("sweep_id"):  # a parent's or a job's run id: its sweep
            if run.data.tags.get("crs.role") == "sweep":
                return _from_parent(uri, run, f"sweep {run.data.tags['sweep_id']}")
            sweep_id = run.data.tags["sweep_id"]
        flt = f"tags.sweep_id = {_quote(sweep_id)}"
        parents = _find_parents(uri, flt)
        if parents:
            return _from_parent(uri, parents[0], f"sweep {sweep_id}")
        if _search(uri, search_all_experiments=True, filter_string=flt, max_results=1, output_format="list"):
            return Selection(uri, f"sweep {sweep_id} (no parent run)", None, flt, None, sweep_id)
        raise CompareError(f"no sweep {value!r} in {uri} (tried: sweep id, run id, sweep dir)")
    uri = _existing_store(uri or _default_uri())
    if args.experiment:
        exp = MlflowClient(uri).get_experiment_by_name(args.experiment)
        if exp is None:
            names = [e.name for e in MlflowClient(uri).search_experiments()]
            raise CompareError(
                f"no experiment {args.experiment!r} in {uri} (there are: {', '.join(names) or 'none'})"
            )
        return Selection(uri, f"experiment {args.experiment}", [exp.experiment_id])
    parents = _find_parents(uri)
    if parents:
        return _from_parent(uri, parents[0], f"last sweep {parents[0].data.tags.get('sweep_id')}")
    if args.last:
        raise CompareError(f"no sweep in {uri} (run `crs train -m ...` first, or use --experiment NAME)")
    exp = MlflowClient(uri).get_experiment_by_name("crs")
    if exp is None:
        raise CompareError(f"no sweep and no experiment 'crs' in {uri} (wrong directory? pass --uri)")
    return Selection(uri, "experiment crs (no sweep found)", [exp.experiment_id])


class Histories:
    """``MlflowClient.get_metric_history`` with a cache: each (run, metric) is read at most once.

    ``key`` is the trainer's metric name; the run's history is read under its MLflow UI key
    (:func:`crs.metric_layout.ui_key`) and, for runs logged before that layout, under the name itself.
    """

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        self.cache: dict[tuple[str, str], list[tuple[int, float]]] = {}

    def get(self, run_id: str, key: str) -> list[tuple[int, float]]:
        if (run_id, key) not in self.cache:
            metrics = []
            for name in dict.fromkeys(k for k in (ui_key(key), key) if k):
                metrics = self.client.get_metric_history(run_id, name)
                if metrics:
                    break
            metrics = sorted(metrics, key=lambda m: (m.step, m.timestamp))
            last: dict[int, float] = {}
            for m in metrics:  # a step logged twice: the later value wins, as in MLflow's "latest"
                last[int(m.step)] = float(m.value)
            self.cache[(run_id, key)] = sorted(last.items())
        return self.cache[(run_id, key)]
