"""A sweep's parent run, as the jobs and the tools below the sweep see it: the record the sweep wrote
into its folder (:func:`read_parent`) and the parent's closing status from its children
(:func:`finalize_sweep`). Kept in ``crs/runs`` so liveness and ``crs compare`` need nothing above them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SWEEP_FILE = "crs_sweep.json"


def read_parent(sweep_dir: str | os.PathLike | None) -> dict[str, Any] | None:
    """The parent-run record a sweep wrote, or ``None`` (tracking=none, or not launched by crs)."""
    if not sweep_dir:
        return None
    path = Path(sweep_dir) / SWEEP_FILE
    return json.loads(path.read_text()) if path.exists() else None


def finalize_sweep(info: dict[str, Any]) -> dict[str, int]:
    """Close the parent run with a status derived from its children; idempotent."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(info["uri"])
    parent = client.get_run(info["run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.sweep_id = '{info['sweep_id']}' and tags.`crs.role` = 'job'",
        max_results=10000,
    )
    counts = {"finished": 0, "failed": 0, "killed": 0, "running": 0}
    for run in children:
        status = run.info.status.lower()
        counts[status if status in counts else "running"] += 1
    for key, value in counts.items():
        client.set_tag(info["run_id"], f"jobs.{key}", str(value))
    if parent.info.status == "RUNNING":
        status = "FAILED" if counts["failed"] or counts["killed"] or not children else "FINISHED"
        client.set_terminated(info["run_id"], status=status)
    return counts
