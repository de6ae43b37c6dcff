"""``crs compare``: one row per configuration of a sweep, mean ± std and a 95% interval over seeds.

A sweep (``crs train -m ...``) leaves one MLflow parent run and one child run per job; ``crs compare``
reads them back and groups the jobs into **cells** (the swept keys except ``seed``). Per cell it
reports finished and failed/killed runs (never hidden) and, over the finished seeds, mean ± std with a
95% percentile-bootstrap interval of the mean (always inside the metric's possible range) of:

- final and best eval accuracy;
- steps to reach ``--threshold`` train accuracy (first step where the mean of the last 5 per-step
  accuracies reaches it; ``k/n`` seeds that did);
- final entropy and training time (model build excluded);
- any ``--metric NAME[:max|:min]`` you add (the run's last logged value, or a ``final/*`` summary).

The package reads in four parts, each on its own:

- :mod:`~crs.compare.selection` — which runs (``--sweep/--experiment/--last``), metric histories;
- :mod:`~crs.compare.cells` — runs → cells (pandas ``groupby``) and their statistics;
- :mod:`~crs.compare.statistics` — the bootstrap interval and steps-to-threshold;
- :mod:`~crs.compare.render` — rich table, csv, markdown, json; :mod:`~crs.compare.plots` — PNGs;
- :mod:`~crs.compare.publish` — the table and plots as the sweep parent's artifacts and description;
- :mod:`~crs.compare.export` — ``--export`` (rows, per-seed values, provenance) and ``--from`` (render it).

    crs compare                                   # the last sweep (or every run of experiment "crs")
    crs compare --last --plot plots               # + PNGs in plots/, also logged to the parent run
    crs compare --sweep 3fa2c1d0                  # a sweep id, a parent run id, or a sweep dir
    crs compare --sweep multirun/2026-01-01/12-00-00 --format markdown > table.md
    crs compare --experiment crs --format json --threshold 0.8 --metric final/reward_last10
    crs compare --last --export results/smoke.json  # commit it; make results SWEEP=smoke rebuilds it
    crs compare --from results/smoke.json --markdown
"""

from crs.compare.cells import Comparison, load
from crs.compare.cli import build_parser, main
from crs.compare.plots import plot
from crs.compare.render import render_table, to_csv, to_json, to_markdown
from crs.compare.selection import CompareError, resolve
from crs.compare.statistics import Stat, bootstrap_ci, describe, steps_to_threshold

__all__ = [
    "CompareError",
    "Comparison",
    "Stat",
    "bootstrap_ci",
    "build_parser",
    "describe",
    "load",
    "main",
    "plot",
    "render_table",
    "resolve",
    "steps_to_threshold",
    "to_csv",
    "to_json",
    "to_markdown",
]
