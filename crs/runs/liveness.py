"""No ghost runs: a heartbeat and a lock tell a live job from one whose process died.

A job records ``crs.host``, ``crs.pid``, ``crs.home`` (its folder) as tags, holds
:class:`~crs.runs.lock.RunLock` on its folder and refreshes the tag ``crs.heartbeat`` (unix time)
every ``runs.heartbeat_s`` seconds from a daemon thread. A run still RUNNING in MLflow is *dead* when

- its folder is reachable from here and nobody holds its lock (the kernel drops a ``flock`` when the
  process dies, even on ``kill -9``), or
- it ran on this host and its pid is gone, or
- its heartbeat is older than ``stale_after_s`` (another node, or an unreachable folder).

``crs compare`` shows such runs as DEAD; ``crs runs clean`` closes them as KILLED with the reason::

    crs runs clean              # close dead runs in ./mlflow.db (all experiments)
    crs runs clean --dry-run    # only list them
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from typing import Any

HEARTBEAT_TAG = "crs.heartbeat"
DEFAULT_STALE_S = 600.0


def identity_tags(home: str) -> dict[str, str]:
    tags = {"crs.host": socket.gethostname(), "crs.pid": str(os.getpid()), "crs.home": str(home)}
    if os.environ.get("SLURM_JOB_ID"):
        tags["crs.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    tags[HEARTBEAT_TAG] = f"{time.time():.0f}"
    return tags


class Heartbeat:
    """Refresh ``crs.heartbeat`` every ``interval`` seconds; errors (a store outage) are ignored here —
    the training loop's own logging fails fast and says so."""

    def __init__(self, tracker, interval: float):
        self.tracker = tracker
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.tracker.run_id is None or self.interval <= 0:
            return
        self._thread = threading.Thread(target=self._loop, name="crs-heartbeat", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.tracker.set_tags({HEARTBEAT_TAG: f"{time.time():.0f}"})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def death_reason(
    tags: dict[str, Any], now: float | None = None, stale_after_s: float = DEFAULT_STALE_S
) -> str | None:
    """Why a RUNNING run is dead, or ``None`` if it may be alive (or crs cannot tell)."""
    from crs.runs.lock import RunLock

    now = time.time() if now is None else now
    home = tags.get("crs.home")
    if home:
        held = RunLock.held(home)
        if held is False:
            return f"process died (nobody holds {home}/{RunLock.NAME})"
        if held is True:
            return None
    if tags.get("crs.host") == socket.gethostname() and tags.get("crs.pid"):
        if not _pid_alive(int(tags["crs.pid"])):
            return f"process {tags['crs.pid']} on {tags['crs.host']} is gone"
    beat = tags.get(HEARTBEAT_TAG)
    if beat is not None:
        age = now - float(beat)
        if age > stale_after_s:
            return f"no heartbeat for {age / 60:.0f} min"
    return None


def find_dead_runs(
    client, experiment_ids: list[str], stale_after_s: float = DEFAULT_STALE_S
) -> list[tuple[Any, str]]:
    """RUNNING crs job runs whose process is dead, with the reason."""
    from mlflow.entities import ViewType

    runs = client.search_runs(
        experiment_ids,
        filter_string="attributes.status = 'RUNNING'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=50000,
    )
    out = []
    for run in runs:
        if run.data.tags.get("crs.role") != "job":
            continue
        reason = death_reason(run.data.tags, stale_after_s=stale_after_s)
        if reason:
            out.append((run, reason))
    return out


def close_dead_runs(
    client, uri: str, experiment_ids: list[str], stale_after_s: float = DEFAULT_STALE_S, dry_run: bool = False
):
    """Mark dead runs KILLED (tag ``error`` says why), then close sweep parents whose jobs are all done."""
    dead = find_dead_runs(client, experiment_ids, stale_after_s)
    if not dry_run:
        for run, reason in dead:
            client.set_tag(run.info.run_id, "error", f"ghost: {reason}")
            client.set_tag(run.info.run_id, "crs.ghost", "1")
            client.set_terminated(run.info.run_id, status="KILLED")
        from crs.runs.parent import finalize_sweep

        parents = client.search_runs(
            experiment_ids,
            filter_string="attributes.status = 'RUNNING' and tags.`crs.role` = 'sweep'",
            max_results=10000,
        )
        for parent in parents:
            info = {"uri": uri, "run_id": parent.info.run_id, "sweep_id": parent.data.tags.get("sweep_id")}
            children = client.search_runs(
                [parent.info.experiment_id],
                filter_string=f"tags.sweep_id = '{info['sweep_id']}' and tags.`crs.role` = 'job' and attributes.status = 'RUNNING'",
                max_results=1,
            )
            started = float(parent.info.start_time or 0) / 1000
            if not children and time.time() - started > stale_after_s:
                finalize_sweep(info)
    return dead


def runs_main(argv: list[str]) -> None:
    """``crs runs clean [--uri URI] [--experiment NAME] [--stale-after S] [--dry-run]``."""
    import argparse

    p = argparse.ArgumentParser(prog="crs runs", description="Housekeeping of the MLflow store.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser(
        "clean", help="close runs left RUNNING by a dead process (kill -9, node loss) as KILLED"
    )
    c.add_argument("--uri", default=None, help="tracking store (default sqlite:///<cwd>/mlflow.db)")
    c.add_argument("--experiment", default=None, help="only this experiment (default: all)")
    c.add_argument(
        "--stale-after", type=float, default=DEFAULT_STALE_S, help="heartbeat age (s) that counts as dead"
    )
    c.add_argument("--dry-run", action="store_true", help="list, change nothing")
    args = p.parse_args(argv)
    from mlflow.tracking import MlflowClient

    from crs.locations import default_uri
    from crs.progress import error_line
    from crs.runs.redact import redact_text, use_clean_uri

    uri = use_clean_uri(args.uri or default_uri())
    client = MlflowClient(uri)
    if args.experiment:
        exp = client.get_experiment_by_name(args.experiment)
        if exp is None:
            error_line(f"no experiment {args.experiment!r} in {redact_text(uri)}")
            raise SystemExit(2)
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    dead = close_dead_runs(client, uri, ids, args.stale_after, args.dry_run) if ids else []
    verb = "would close" if args.dry_run else "closed"
    for run, reason in dead:
        print(f"{verb} {run.info.run_id} ({run.info.run_name}) as KILLED: {reason}")
    print(f"crs: {len(dead)} dead run(s) {verb if dead else 'found'} in {redact_text(uri)}")


def dead_in_row(row, stale_after_s: float = DEFAULT_STALE_S) -> str | None:
    """For ``crs compare``: why a RUNNING run of an ``mlflow.search_runs`` dataframe row is dead, or None."""
    if str(row.get("status")) != "RUNNING":
        return None
    tags = {}
    for key in ("crs.home", "crs.host", "crs.pid", HEARTBEAT_TAG):
        value = row.get(f"tags.{key}")
        if isinstance(value, str) and value:
            tags[key] = value
    return death_reason(tags, stale_after_s=stale_after_s) if tags else None
