"""``crs ui``: the MLflow UI on a crs store, opened where the comparison is.

    crs ui                       # ./mlflow.db; prints (and, with a display, opens) the link
    crs ui --uri sqlite:///path/to/mlflow.db --port 5001 --experiment crs

The server runs with this interpreter (``python -m mlflow server``), so it starts whether or not the
virtualenv is activated. MLflow 3 opens an experiment in its GenAI view (traces, "Evaluation runs");
crs runs are training runs, so the printed link goes to the experiment's runs page in the
machine-learning view, ``#/experiments/<id>/runs?workflowType=machine_learning`` (the UI remembers the
choice). On small machines (≤ 4 cores) the server starts one worker and no job runner (the GenAI
job queue crs does not use): 2 processes instead of ~15.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

VIEW = "runs?workflowType=machine_learning"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow's "share view" experiment tags (UI state as JSON)
VIEW_KEY = "crs"
# the runs-table columns of the crs view: what distinguishes runs, then the numbers that compare them
VIEW_COLUMNS = [
    "tags.`method`",
    "tags.`schedule`",
    "tags.`loss`",
    "tags.`seed`",
    "metrics.`1 main/eval_accuracy`",
    "metrics.`1 main/accuracy`",
    "metrics.`1 main/reward`",
    "metrics.`1 main/entropy`",
    "tags.`final.eval_accuracy_best`",
    "tags.`final.train_time_s`",
]


def find_experiment(uri: str, name: str | None = None) -> tuple[str | None, str | None]:
    """``(experiment id, parent run id of its last sweep)`` — the experiment named ``name``, else
    the one holding the last sweep, else ``crs``, else the first one with runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if name:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise SystemExit(
                f"crs: error: no experiment {name!r} in {uri} (there are: {', '.join(names) or 'none'})"
            )
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None, None
    parents = client.search_runs(
        ids, "tags.`crs.role` = 'sweep'", order_by=["attributes.start_time DESC"], max_results=1
    )
    if parents:
        return parents[0].info.experiment_id, parents[0].info.run_id
    if name:
        return ids[0], None
    exp = client.get_experiment_by_name("crs")
    if exp is not None:
        return exp.experiment_id, None
    runs = client.search_runs(ids, order_by=["attributes.start_time DESC"], max_results=1)
    return (runs[0].info.experiment_id if runs else ids[0]), None


def install_view(uri: str, exp_id: str, parent_id: str | None) -> None:
    """Save the ``crs`` runs view on the experiment (the tag MLflow's "Share" button writes).

    The MLflow server has no setting for default columns; a shared view does what a researcher would
    click together: the comparison columns (:data:`VIEW_COLUMNS`), newest first, grouped by method,
    and — when there is a sweep — only the last sweep's jobs (:func:`last_sweep_filter`), so the
    grouped charts average that sweep's seeds and nothing else. Opening ``…/runs?viewStateShareKey=crs``
    loads it; rerunning ``crs ui`` refreshes it.
    """
    import json

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    state = {
        "searchFilter": last_sweep_filter(client, parent_id),
        "orderByKey": "attributes.start_time",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": VIEW_COLUMNS,
        # the UI applies widths only to the columns listed in columnOrder (ag-grid column ids)
        "columnOrder": ["attributes.`Run Name`", *VIEW_COLUMNS, "runDateAndNestInfo", "duration"],
        "columnWidths": {"attributes.`Run Name`": 250, **{c: 120 for c in VIEW_COLUMNS}},
        "runsExpanded": {parent_id: True} if parent_id else {},
        "runsPinned": [],
        "runsHidden": [],
        "runsHiddenMode": "SHOW_ALL",  # chart every run of the table, not only the first 10 (the UI's default)
        "hideEmptyCharts": True,
        # Group by: method — one row per method, and in the charts a mean line and min-max band per method
        # over its seeds (MLflow 3.x RunsGroupByConfig; the UI's "Group by" menu writes the same)
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": "method"}],
        },
        "groupsExpanded": {},
        "useGroupedValuesInCharts": True,
    }
    client.set_experiment_tag(exp_id, SHARED_VIEW_TAG + VIEW_KEY, json.dumps(state))


def last_sweep_filter(client, parent_id: str | None) -> str:
    """The runs-table search of the crs view: the jobs of the last sweep, or ``""`` (all runs).

    With *Group by: method* every run with the same ``method`` tag joins one mean line, so without a
    filter older sweeps and single runs (other sizes, benchmarks) would be averaged in. Clearing the
    search box shows every run again. The parent still shows, under "Additional runs" (the UI loads
    the parents of the runs it lists); it logs no metrics, so in the charts it is an empty
    "Unassigned" entry of the legend (MLflow 3.17 charts that group even when its runs are hidden).
    """
    if not parent_id:
        return ""
    sweep_id = client.get_run(parent_id).data.tags.get("sweep_id")
    if not sweep_id:
        return ""
    return f"tags.sweep_id = '{sweep_id}' and tags.`crs.role` = 'job'"


def links(base: str, exp_id: str | None, parent_id: str | None) -> list[tuple[str, str]]:
    """(what, url) pairs to print: the runs page in the crs view, and the last sweep's parent run."""
    if exp_id is None:
        return [("MLflow", f"{base}/")]
    out = [("training runs", f"{base}/#/experiments/{exp_id}/{VIEW}&viewStateShareKey={VIEW_KEY}")]
    if parent_id:
        out.append(
            (
                "last sweep (parent run)",
                f"{base}/#/experiments/{exp_id}/runs/{parent_id}?workflowType=machine_learning",
            )
        )
    return out


def server_command(uri: str, host: str, port: int, workers: int) -> list[str]:
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri]
    cmd += ["--host", host, "--port", str(port), "--workers", str(workers)]
    cmd += ["--uvicorn-opts", "--no-access-log"]  # one line per UI request would bury the printed links
    if uri.startswith("sqlite:///"):  # new experiments keep their artifacts beside the store
        root = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
        cmd += ["--default-artifact-root", root]
    return cmd


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def _has_display() -> bool:
    return sys.platform in ("darwin", "win32") or bool(
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="crs ui", description="Open the MLflow UI on a crs store.")
    p.add_argument("--uri", default=None, help="tracking store (default sqlite:///<cwd>/mlflow.db)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--experiment", default=None, help="experiment to open (default: the last sweep's)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="server worker processes (default: 1 on machines with ≤ 4 cores, else 2)",
    )
    p.add_argument("--no-browser", action="store_true", help="only print the link")
    args = p.parse_args(argv)
    from crs.tracking import default_uri

    uri = args.uri or default_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        print(
            f"crs: error: no MLflow store at {uri[len('sqlite:///') :]} (run crs train here first, or pass --uri)",
            file=sys.stderr,
        )
        sys.exit(2)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    exp_id, parent_id = find_experiment(uri, args.experiment)
    if exp_id is not None:
        try:
            install_view(uri, exp_id, parent_id)
        except Exception as err:  # a read-only store still opens, without the crs view
            print(f"crs ui: could not save the crs runs view: {err}", file=sys.stderr)
    cores = os.cpu_count() or 1
    workers = args.workers or (1 if cores <= 4 else 2)
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")  # library deprecations in the server log
    if cores <= 4:
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no GenAI job runner
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    base = f"http://{host}:{args.port}"
    print(
        f"crs ui: MLflow {uri} on {base} ({workers} worker{'s' if workers > 1 else ''}; Ctrl-C to stop)",
        flush=True,
    )
    proc = subprocess.Popen(server_command(uri, args.host, args.port, workers), env=env)

    def _stop(signum, frame):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    try:
        if wait_until_up(base, proc):
            for what, url in links(base, exp_id, parent_id):
                print(f"  {what}: {url}", flush=True)
            if not args.no_browser and _has_display():
                import webbrowser

                webbrowser.open(links(base, exp_id, parent_id)[0][1])
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        try:
            sys.exit(proc.wait(timeout=20))
        except subprocess.TimeoutExpired:
            proc.kill()
            sys.exit(130)
