"""``crs compare --benchmarks METRIC``: one column per benchmark ``crs eval`` scored the selected runs on.

``crs eval source=<sweep id> …`` logs ``eval/<benchmark>/<metric>`` on every job run it evaluated
(``@`` spelled ``_at_``: ``eval/aime24/avg_at_16``); this adds those metrics as columns, so the table is
methods × benchmarks with mean ± std and the 95% interval over seeds of each cell, like any column.

    crs compare --sweep 3fa2c1d0 --benchmarks avg@16 pass@8
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from crs.compare.cells import Column
from crs.compare.selection import CompareError, Selection, _search


def benchmark_columns(sel: Selection, metrics: Sequence[str]) -> list[Column]:
    """A column per (benchmark, metric) logged on the selected runs, benchmarks in name order."""
    kwargs: dict = {"filter_string": sel.filter_string}
    if sel.experiment_ids is None:
        kwargs["search_all_experiments"] = True
    else:
        kwargs["experiment_ids"] = sel.experiment_ids
    df = _search(sel.uri, **kwargs)
    cols: list[Column] = []
    for metric in metrics:
        key = metric.replace("@", "_at_")
        pat = re.compile(rf"^metrics\.eval/([^/]+)/{re.escape(key)}$")
        benches = sorted({m.group(1) for c in df.columns if (m := pat.match(c))})
        if not benches:
            raise CompareError(
                f"--benchmarks {metric}: no run of {sel.description} has eval/<benchmark>/{key} "
                "(run crs eval source=<sweep or run id> first)"
            )
        cols += [Column(f"metric:eval/{b}/{key}", f"eval/{b}/{key}", "max", 3, "higher") for b in benches]
    return cols
