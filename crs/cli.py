"""``crs`` command line: one verb per job.

    crs train [overrides]            GRPO + credit method + schedule (Hydra: -m, --cfg job, --help work)
    crs sweep <grid> [overrides]     a grid from sweeps/<grid>.yaml (= crs train --config-dir sweeps --config-name <grid>)
    crs pretrain [overrides]         build (or show) the embedded warm-started model
    crs schedule <option> [overrides] [--steps N] [--plot file.png]   look at a schedule before using it
    crs compare [--sweep ID | --experiment NAME | --last] [--format ...] [--plot DIR]
    crs ui [--port 5000]             the MLflow UI on ./mlflow.db, opened on the training runs
    crs runs clean [--dry-run]       close runs left RUNNING by a dead process (kill -9, node loss)

``train`` and ``pretrain`` hand argv to ``@hydra.main`` untouched, so multirun, launchers and
``--cfg`` keep working. For a single run, the config is first composed and checked here so that a
typo, a wrong type or an invalid value is one line on stderr (exit 2) before anything is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = __doc__.split("\n\n")[1]
from crs.errors import did_you_mean, one_line  # noqa: E402
from crs.locations import SWEEPS_DIR  # noqa: E402


def compose(overrides: list[str]):
    """Compose ``conf/train.yaml`` with overrides (no Hydra run directory, no logging setup)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from crs.config import register_configs
    from crs.locations import CONF_DIR

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def _keys_at(path: list[str], overrides: list[str] = ()) -> list[str]:
    """Config keys under ``path`` (``[]`` = the top level: the groups and train.yaml's own keys)."""
    from pathlib import Path

    from crs.locations import CONF_DIR

    conf = Path(CONF_DIR)
    if not path:
        groups = [p.name for p in conf.iterdir() if p.is_dir() and p.name not in ("hydra", "local")]
        return groups + ["seed", "tags", "resume", "inject_failure_at_step", "paths", "runs", "diagnostics"]
    try:
        node = compose(list(overrides))
        for part in path:
            node = node[part]
        return [str(k) for k in node.keys()]
    except Exception:
        return []


def unknown_key(err: BaseException, overrides: list[str] = ()) -> str | None:
    """Hydra's "Could not override 'a.b'" (a key no schema has) as one line with the keys that exist."""
    import re

    m = re.search(r"Could not override '([\w.]+)'", str(err))
    if not m:
        return None
    key = m.group(1)
    parts = key.split(".")
    others = [o for o in overrides if o.lstrip("+~").split("=")[0] != key]  # the user's groups still count
    keys = _keys_at(parts[:-1], others)
    hint = did_you_mean(parts[-1], keys)
    where = ".".join(parts[:-1]) or "the top level"
    return f"{key} is not a config key{hint} (keys of {where}: {', '.join(sorted(keys))})"


def _one_line(err: BaseException, overrides: list[str] = ()) -> str:
    """One line for a Hydra error; an unknown key names the keys that exist (and the closest one)."""
    return unknown_key(err, overrides) or one_line(err)


def preflight(overrides: list[str]) -> None:
    """Compose and validate a single run; exit 2 with one line on any config error."""
    from crs.config import validate
    from crs.errors import ConfigError
    from crs.progress import error_line
    from crs.runs.preflight import check_resources
    from crs.runs.redact import redact_text

    try:
        cfg = compose(overrides)
        validate(cfg)
        check_resources(cfg)
    except ConfigError as err:
        error_line(redact_text(str(err)))
        sys.exit(2)
    except Exception as err:  # Hydra composition / override grammar / OmegaConf type errors
        error_line(redact_text(_one_line(err, overrides)))
        sys.exit(2)


def _hydra_verb(verb: str, argv: list[str], entry) -> None:
    if not any(a.startswith("-") for a in argv):
        preflight(argv)  # single run with plain overrides: check before Hydra creates anything
    sys.argv = [f"crs {verb}", *argv]
    entry()


def schedule_cmd(argv: list[str]) -> None:
    p = argparse.ArgumentParser(
        prog="crs schedule", description="Print (and plot) a schedule's ρ over training."
    )
    p.add_argument("option", help="schedule option: constant, linear, cosine, sigmoid, gamma, step")
    p.add_argument(
        "overrides", nargs="*", help="Hydra overrides, e.g. schedule.end=0.5 method=forking_tokens"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="print every step of an N-step run (default: progress 0, 0.1, …, 1)",
    )
    p.add_argument("--plot", default=None, help="write a PNG of ρ (and driven knobs) vs progress")
    args = p.parse_intermixed_args(argv)
    from rich.console import Console
    from rich.table import Table

    from crs.config import validate
    from crs.errors import ConfigError
    from crs.progress import error_line
    from crs.schedules import schedule_from_cfg

    try:
        cfg = compose([f"schedule={args.option}", *args.overrides])
        chain = validate(cfg)
    except ConfigError as err:
        error_line(str(err))
        sys.exit(2)
    except Exception as err:
        error_line(_one_line(err, [f"schedule={args.option}", *args.overrides]))
        sys.exit(2)
    if args.steps is not None and args.steps < 1:
        error_line(f"--steps must be >= 1 (got {args.steps})")
        sys.exit(2)
    rho = schedule_from_cfg(cfg.schedule)
    if args.steps:
        points = [(i, i / args.steps) for i in range(args.steps)]
    else:
        points = [(None, i / 10) for i in range(11)]
    s = cfg.schedule
    title = f"schedule {s.name}: m={s.m} start={s.start} end={s.end}" + (" inverted" if s.invert else "")
    Console().print(f"[bold]{title}[/bold]")
    table = Table()
    if args.steps:
        table.add_column("step", justify="right")
    table.add_column("progress", justify="right")
    table.add_column("ρ", justify="right")
    knob_names = list(chain.knobs(1.0))
    for k in knob_names:
        table.add_column(k, justify="right")
    rows = []
    for step, prog in points:
        r = rho(prog)
        knobs = chain.knobs(r)
        rows.append((prog, r, knobs))
        cells = (
            ([str(step)] if args.steps else [])
            + [f"{prog:.3f}", f"{r:.4g}"]
            + [f"{knobs[k]:.4g}" for k in knob_names]
        )
        table.add_row(*cells)
    Console().print(table)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fine = [i / 200 for i in range(201)]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(fine, [rho(x) for x in fine], label="ρ")
        for k in knob_names:
            ax.plot(fine, [chain.knobs(rho(x))[k] for x in fine], "--", label=k)
        ax.set_xlabel("training progress (global_step / max_steps)")
        ax.set_ylabel("value")
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-0.05, max(1.05, max(rho(x) for x in fine) + 0.05))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    verb, rest = argv[0], argv[1:]
    from crs.quiet import quiet_env

    quiet_env()
    if verb == "train":
        from crs.train import main as entry

        _hydra_verb("train", rest, entry)
    elif verb == "sweep":
        if not rest or rest[0].startswith("-"):
            grids = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
            print(
                f"usage: crs sweep <grid> [overrides]   grids in {SWEEPS_DIR}: {', '.join(grids)}",
                file=sys.stderr,
            )
            sys.exit(2)
        grid = Path(rest[0])
        if grid.suffix == ".yaml":  # a grid file anywhere
            config_dir, name = grid.resolve().parent, grid.stem
        else:
            config_dir, name = SWEEPS_DIR, rest[0]
            if not (config_dir / f"{name}.yaml").exists():
                grids = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
                print(f"crs: error: no grid {name!r}; known: {', '.join(grids)}", file=sys.stderr)
                sys.exit(2)
        from crs.train import main as entry

        _hydra_verb("train", ["--config-dir", str(config_dir), "--config-name", name, *rest[1:]], entry)
    elif verb == "pretrain":
        from crs.pretrain import main as entry

        _hydra_verb("pretrain", rest, entry)
    elif verb == "schedule":
        schedule_cmd(rest)
    elif verb == "compare":
        from crs.compare import main as compare_main

        compare_main(rest)
    elif verb == "ui":
        from crs.ui import main as ui_main

        ui_main(rest)
    elif verb == "runs":
        from crs.runs.liveness import runs_main

        runs_main(rest)
    else:
        print(f"crs: unknown command {verb!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
