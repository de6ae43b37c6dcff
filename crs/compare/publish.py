"""The comparison as part of the sweep: its table and plots on the parent run, when the sweep ends.

Called by :mod:`crs.sweep` after the jobs finished: ``crs compare --sweep <id> --plot`` in-process,
with the markdown table in the parent's description (``mlflow.note.content``, shown on its Overview
tab) and ``compare/table.md``, ``compare/table.csv`` and the PNGs as artifacts.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def publish(info: Mapping[str, Any], counts: Mapping[str, int] | None = None) -> None:
    """Attach the comparison of the sweep ``info`` (a ``crs_sweep.json`` record) to its parent run."""
    from mlflow.tracking import MlflowClient

    from crs.compare.cells import load
    from crs.compare.plots import plot
    from crs.compare.render import to_csv, to_markdown
    from crs.compare.selection import Selection
    from crs.naming import DESCRIPTION_TAG, parent_description

    client = MlflowClient(info["uri"])
    parent = client.get_run(info["run_id"])
    sel = Selection(
        info["uri"],
        f"sweep {info['sweep_id']}",
        [parent.info.experiment_id],
        f"tags.sweep_id = '{info['sweep_id']}'",
        parent,
        info["sweep_id"],
    )
    cmp = load(sel)
    table = to_markdown(cmp)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "compare"
        paths = plot(cmp, out)
        (out / "table.md").write_text(table)
        (out / "table.csv").write_text(to_csv(cmp))
        client.log_artifacts(info["run_id"], str(out), "compare")
    client.set_tag(info["run_id"], DESCRIPTION_TAG, parent_description(info, counts, table)[:5000])
    print(f"crs: comparison table and {len(paths)} plots attached to the sweep's parent run", flush=True)
