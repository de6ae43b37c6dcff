"""``crs compare`` command line: parse, select (a store, or ``--from`` an export), load, render, plot, export.

crs compare --last --export results/smoke.json   # the table's rows + provenance, for committing
crs compare --from results/smoke.json --markdown # render an export without a store
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crs.compare.cells import load, parse_metric_arg
from crs.compare.export import from_export, read_export, write_export
from crs.compare.plots import log_plots, plot
from crs.compare.render import render_table, to_csv, to_json, to_markdown
from crs.compare.selection import CompareError, resolve


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crs compare",
        description="Compare the runs of a sweep: one row per configuration, mean ± std and 95% CI over seeds.",
        epilog="Without a selector: the last sweep in the store, or every run of experiment 'crs' if there is none.",
    )
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--sweep", metavar="ID", help="a sweep id, the sweep's parent run id, or its sweep dir")
    sel.add_argument("--experiment", metavar="NAME", help="every job run of an MLflow experiment")
    sel.add_argument(
        "--last", action="store_true", help="the most recent sweep (parent run tagged crs.role=sweep)"
    )
    sel.add_argument(
        "--from",
        dest="from_export",
        metavar="FILE.json",
        help="render a table from an export (crs compare --export) instead of a store",
    )
    p.add_argument(
        "--uri",
        default=None,
        help="tracking store (default: sqlite:///<cwd>/mlflow.db; a sweep dir knows its own)",
    )
    p.add_argument(
        "--format",
        choices=("table", "csv", "markdown", "json"),
        default="table",
        help="table (rich, default) or machine-readable output on stdout",
    )
    p.add_argument("--markdown", action="store_true", help="the same as --format markdown")
    p.add_argument(
        "--export",
        metavar="FILE",
        default=None,
        help="also write the rows, per-seed values and provenance to FILE (.json, or .csv)",
    )
    p.add_argument(
        "--plot", metavar="DIR", default=None, help="write learning curves and heatmaps (PNG) to DIR"
    )
    p.add_argument(
        "--threshold", type=float, default=0.5, help="train accuracy for the steps-to-threshold column"
    )
    p.add_argument(
        "--metric",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME[:max|:min]",
        help="extra columns: a metric's last logged value (e.g. final/reward_last10:max)",
    )
    p.add_argument(
        "--benchmarks",
        action="extend",
        nargs="+",
        default=[],
        metavar="METRIC",
        help="a column per benchmark crs eval logged METRIC for (avg@16, pass@8, greedy): methods × benchmarks",
    )
    return p


def main(argv: list[str]) -> None:
    """``crs compare`` entry point (called by :func:`crs.cli.main`).

    Args:
        argv: the arguments after ``compare``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.markdown:
        if args.format not in ("table", "markdown"):
            parser.error(f"--markdown and --format {args.format} ask for two formats")
        args.format = "markdown"
    if args.from_export and (args.plot or args.metric or args.uri or args.benchmarks):
        parser.error(
            "--from renders an export as it is: --plot, --metric, --benchmarks and --uri need a store"
        )
    if args.from_export and args.export:
        parser.error("--from and --export: an export is exported already (copy the file)")
    if args.export and Path(args.export).suffix not in (".json", ".csv"):
        parser.error(f"--export {args.export}: the file must end in .json or .csv")
    extra = [parse_metric_arg(m) for m in args.metric]
    machine = args.format != "table"
    # machine formats keep stdout parseable: every human message goes to stderr
    info = sys.stderr if machine else sys.stdout
    try:
        if args.from_export:
            cmp = from_export(read_export(args.from_export), args.from_export)
        else:
            sel = resolve(args)
            if args.benchmarks:
                from crs.compare.benchmarks import benchmark_columns

                extra += benchmark_columns(sel, args.benchmarks)
            cmp = load(sel, args.threshold, extra)
        if args.export:
            path = write_export(cmp, args.export, argv)
            print(f"crs compare: wrote {path}", file=info, flush=True)
    except CompareError as err:
        print(f"crs: error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)  # a user error: the same exit code as a config error of every other verb
    if args.format == "table":
        render_table(cmp)
    elif args.format == "csv":
        sys.stdout.write(to_csv(cmp))
    elif args.format == "markdown":
        sys.stdout.write(to_markdown(cmp))
    else:
        sys.stdout.write(to_json(cmp))
    sys.stdout.flush()
    if args.plot:
        paths = plot(cmp, Path(args.plot), [c.title for c in extra])
        for p in paths:
            print(f"wrote {p}", file=info)
        if not paths:
            print("crs compare: nothing to plot (no per-step metrics in the finished runs)", file=info)
        try:
            run_id = log_plots(cmp, paths)
        # the PNGs are on disk already; an unreachable or read-only artifact store must not lose them
        except Exception as err:
            print(f"crs compare: could not log the plots to the parent run: {err}", file=sys.stderr)
        else:
            if run_id:
                print(f"logged {len(paths)} plots as artifacts compare/ of parent run {run_id}", file=info)
