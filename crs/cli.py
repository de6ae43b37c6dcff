"""``crs`` command line: one verb per job.

    crs train [overrides]            GRPO + credit method + schedule (Hydra: -m, --cfg job, --help work)
    crs sweep <grid> [overrides]     a grid from sweeps/<grid>.yaml (= crs train --config-dir sweeps --config-name <grid>)
    crs pretrain [overrides]         build (or show) the embedded warm-started model
    crs schedule <option> [overrides] [--steps N] [--plot file.png]   look at a schedule before using it
    crs eval [source=…] [benchmark=…|suite=paper] [eval.n=…]   avg@k, pass@k, greedy accuracy of any model (docs/eval.md)
    crs compare [--sweep ID | --experiment NAME | --last | --from EXPORT] [--format ...] [--plot DIR] [--export results/X.json]
    crs ui [--port 5000]             the MLflow UI on ./mlflow.db, opened on the training runs
    crs runs clean [--dry-run]       close runs left RUNNING by a dead process (kill -9, node loss)
    crs pipeline <name> [overrides]  a multi-stage experiment (crs/pipeline/conf/, e.g. sparse_to_dense size=debug)

``train`` and ``pretrain`` hand argv to ``@hydra.main`` untouched, so multirun, launchers and
``--cfg`` keep working. For a single run, the config is first composed and checked here so that a
typo, a wrong type or an invalid value is one line on stderr (exit 2) before anything is loaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

USAGE = __doc__.split("\n\n")[1]
from crs.errors import did_you_mean, one_line  # noqa: E402
from crs.locations import SWEEPS_DIR  # noqa: E402

_PARSE_ARGS = argparse.ArgumentParser.parse_args
VERBS = ("train", "sweep", "pretrain", "schedule", "compare", "ui", "runs", "pipeline")


def compose(
    overrides: list[str],
    config_dir: str | None = None,
    config_name: str = "train",
    hydra_config: bool = False,
):
    """Compose ``conf/train.yaml`` (or ``config_name`` from ``config_dir``, with ``conf/`` on the search
    path, as Hydra's ``--config-dir`` does) with overrides: no Hydra run directory, no logging setup,
    and none of torch/transformers/datasets/mlflow imported."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from crs.config import register_configs
    from crs.locations import CONF_DIR

    register_configs()
    GlobalHydra.instance().clear()
    extra, primary = [], CONF_DIR
    if config_dir is not None and str(Path(config_dir).resolve()) != str(Path(CONF_DIR).resolve()):
        # as Hydra's --config-dir: the folder joins the search path; the primary config is read from it
        # when it holds one (a grid in sweeps/), else from conf/ (a folder of extra options only)
        other = str(Path(config_dir).resolve())
        if (Path(other) / f"{config_name}.yaml").is_file():
            extra, primary = [f"hydra.searchpath=[file://{CONF_DIR}]"], other
        else:
            extra = [f"hydra.searchpath=[file://{other}]"]
    with initialize_config_dir(config_dir=primary, version_base="1.3"):
        return hydra_compose(
            config_name=config_name, overrides=[*extra, *overrides], return_hydra_config=hydra_config
        )


def _keys_at(path: list[str], overrides: list[str] = ()) -> list[str]:
    """Config keys under ``path`` (``[]`` = the top level: the groups and train.yaml's own keys)."""
    from pathlib import Path

    from crs.locations import CONF_DIR

    conf = Path(CONF_DIR)
    if not path:
        groups = [p.name for p in conf.iterdir() if p.is_dir() and p.name not in ("hydra", "local")]
        return groups + [
            "seed",
            "data_seed",
            "tags",
            "resume",
            "inject_failure_at_step",
            "paths",
            "runs",
            "diagnostics",
        ]
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


def fail(msg: str) -> NoReturn:
    """A user error: one ``crs: error:`` line on stderr (secrets masked), exit 2."""
    from crs.runs.redact import redact_text

    print(f"crs: error: {redact_text(msg)}", file=sys.stderr, flush=True)
    sys.exit(2)


def _checked(what, overrides: list[str] = (), prefix: str = ""):
    """Run ``what()``; a ConfigError or a Hydra/OmegaConf error becomes one line and exit 2."""
    from crs.errors import ConfigError

    try:
        return what()
    except ConfigError as err:
        fail(prefix + str(err))
    except Exception as err:  # Hydra composition / override grammar / OmegaConf type errors
        fail(prefix + _one_line(err, list(overrides)))


def preflight(overrides: list[str], config_dir: str | None = None, config_name: str = "train") -> None:
    """Compose and validate a single run, check its model, data, store and checkpoint; exit 2 with one
    line on any error. Nothing heavy is imported (validation and resource checks are memoised, so the
    run itself does not repeat them)."""
    from crs.config import validate, validate_values
    from crs.runs.preflight import check_resources

    cfg = _checked(lambda: compose(overrides, config_dir, config_name), overrides)
    _checked(lambda: validate_values(cfg), overrides)  # no torch yet: most errors end here
    _checked(lambda: check_resources(cfg), overrides)
    _checked(lambda: validate(cfg), overrides)  # the method modules (torch) and their declared ranges


def _sweep_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(plain, sweep) overrides of a command line (``a=1,2``, ``range()``, ``glob()`` sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    return plain, [o.input_line for o in parsed if o.is_sweep_override()]


def preflight_sweep(overrides: list[str], config_dir: str | None, config_name: str) -> None:
    """Every job of a multirun composed and checked, and the launcher's service reachable (SLURM:
    ``sinfo``), before Hydra creates a sweep folder or a parent run."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from crs.config import validate, validate_values
    from crs.runs.preflight import check_launcher, check_resources

    plain, _ = _checked(lambda: _sweep_overrides(overrides), overrides)
    base = _checked(lambda: compose(plain, config_dir, config_name, hydra_config=True), plain)
    _checked(lambda: check_launcher(OmegaConf.to_container(base.hydra.launcher, resolve=False)))
    params = base.hydra.sweeper.get("params") or {}
    params = OmegaConf.to_container(params, resolve=False) if params else {}
    args = [f"{k}={v}" for k, v in params.items()] + list(overrides)
    parsed = _checked(lambda: OverridesParser.create().parse_overrides(args), args)
    jobs = [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    seen: set[str] = set()
    for i, job in enumerate(jobs):
        prefix = f"sweep job #{i} ({' '.join(job)}): "
        cfg = _checked(lambda job=job: compose(job, config_dir, config_name), job, prefix)
        _checked(lambda cfg=cfg: validate_values(cfg), job, prefix)
        res = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["model", "benchmark", "tracking", "resume"]))
        if res not in seen:
            seen.add(res)
            _checked(lambda cfg=cfg: check_resources(cfg), job, prefix)
        _checked(lambda cfg=cfg: validate(cfg), job, prefix)


# Hydra's own flags that take a value; any other flag (--cfg, --help, --info, -c, --shell-completion …)
# is Hydra's business and skips the preflight
_VALUE_FLAGS = {"--config-dir": "dir", "-cd": "dir", "--config-name": "name", "-cn": "name"}


def _hydra_verb(verb: str, argv: list[str], module: str) -> None:
    """Check the command line's config(s) first, then hand argv to the verb's ``@hydra.main``."""
    config_dir, config_name, multirun, overrides, own = None, "train", False, [], True
    i = 0
    while i < len(argv):
        arg = argv[i]
        flag, eq, value = arg.partition("=")
        if flag in _VALUE_FLAGS:
            if not eq:
                if i + 1 >= len(argv):
                    fail(f"{flag} needs a value")
                i, value = i + 1, argv[i + 1]
            if _VALUE_FLAGS[flag] == "dir":
                if not Path(value).is_dir():
                    fail(f"{flag}: no such config folder {value!r}")
                config_dir = value
            else:
                config_name = value
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg.startswith("-"):
            own = False
        else:
            overrides.append(arg)
        i += 1
    if own:
        plain, swept = _checked(lambda: _sweep_overrides(overrides), overrides)
        if multirun or swept or config_name != "train":
            mode = _checked(
                lambda: compose(plain, config_dir, config_name, hydra_config=True).hydra.mode, plain
            )
            multirun = multirun or str(mode) == "RunMode.MULTIRUN"
        if multirun:
            preflight_sweep(overrides, config_dir, config_name)
        else:
            preflight(overrides, config_dir, config_name)
            if verb == "pretrain":
                _checked(lambda: _pretrain_check(overrides, config_dir, config_name))
    entry = load_entry(module)  # the heavy imports (transformers, trl, mlflow) start here
    sys.argv = [f"crs {verb}", *argv]
    entry()


def _eval_verb(argv: list[str]) -> None:
    """``crs eval``: compose ``conf/eval.yaml``, check values, sources and data files (one line, exit 2),
    then hand argv to :func:`crs.eval.main.main` (Hydra flags such as ``--cfg job`` skip the checks)."""
    from crs.eval.settings import register_eval_configs

    register_eval_configs()
    if not any(a.startswith("-") for a in argv):
        from crs.eval.main import prepare

        cfg = _checked(lambda: compose(argv, config_name="eval"), argv)
        choice = next((a.split("=", 1)[1] for a in argv if a.startswith("benchmark=")), None)
        _checked(lambda: prepare(cfg, choice, lambda ov: compose(ov, config_name="eval"), argv), argv)
    entry = load_entry("crs.eval.main")  # transformers and the model load start here
    sys.argv = ["crs eval", *argv]
    entry()


def load_entry(module: str):
    """The ``@hydra.main`` of a verb (tests replace this to stop right after the preflight)."""
    import importlib

    return importlib.import_module(module).main


def _pretrain_check(overrides: list[str], config_dir: str | None, config_name: str) -> None:
    from crs.errors import ConfigError

    if compose(overrides, config_dir, config_name).model.get("name_or_path"):
        raise ConfigError(
            "model.name_or_path: crs pretrain builds the embedded model; it must be null (model=embedded)"
        )


def _store_arg(verb: str, must_exist: bool) -> None:
    """Once the verb's own parser has read its flags (usage errors first), ``--uri`` must name an
    existing, readable store: a missing sqlite file is never created by a verb that only reads one."""
    from crs.errors import ConfigError
    from crs.locations import default_uri
    from crs.runs.preflight import check_store

    parse = _PARSE_ARGS

    def parse_then_check(self, args=None, namespace=None):
        argparse.ArgumentParser.parse_args = parse  # the verb's top-level parser only
        ns = parse(self, args, namespace)
        uri = getattr(ns, "uri", None)
        if uri is not None or must_exist:
            try:
                check_store(uri or default_uri(), what="--uri", create=False)
            except ConfigError as err:
                fail(f"crs {verb}: {err}")
        return ns

    argparse.ArgumentParser.parse_args = parse_then_check


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
    from crs.schedules import schedule_from_cfg

    overrides = [f"schedule={args.option}", *args.overrides]
    cfg = _checked(lambda: compose(overrides), overrides)
    chain = _checked(lambda: validate(cfg), overrides)
    if args.steps is not None and args.steps < 1:
        fail(f"--steps must be >= 1 (got {args.steps})")
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


def _user_errors(verb_main, rest: list[str]) -> None:
    """A verb's user errors — ``SystemExit("message")`` (exit 1) or a ConfigError — as one line, exit 2."""
    from crs.errors import ConfigError

    try:
        verb_main(rest)
    except SystemExit as err:
        if isinstance(err.code, str):
            fail(err.code.removeprefix("crs: error: "))
        raise
    except ConfigError as err:
        fail(str(err))


def _argparse_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    fail(f"{parser.prog}: {message} (see {parser.prog} --help)")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    verb, rest = argv[0], argv[1:]
    argparse.ArgumentParser.error = _argparse_error  # every verb's usage error: one line, exit 2
    argparse.ArgumentParser.parse_args = _PARSE_ARGS
    from crs.quiet import quiet_env

    quiet_env()
    if verb == "train":
        _hydra_verb("train", rest, "crs.train")
    elif verb == "sweep":
        if not rest or rest[0].startswith("-"):
            grids = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
            fail(
                f"crs sweep needs a grid: crs sweep <grid> [overrides]; grids in {SWEEPS_DIR}: {', '.join(grids)}"
            )
        grid = Path(rest[0])
        if grid.suffix == ".yaml":  # a grid file anywhere
            if not grid.is_file():
                fail(f"crs sweep: no such grid file {rest[0]!r}")
            config_dir, name = grid.resolve().parent, grid.stem
        else:
            config_dir, name = SWEEPS_DIR, rest[0]
            if not (config_dir / f"{name}.yaml").exists():
                grids = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
                fail(f"crs sweep: no grid {name!r}{did_you_mean(name, grids)}; known: {', '.join(grids)}")
        _hydra_verb("train", ["--config-dir", str(config_dir), "--config-name", name, *rest[1:]], "crs.train")
    elif verb == "pretrain":
        _hydra_verb("pretrain", rest, "crs.pretrain")
    elif verb == "schedule":
        schedule_cmd(rest)
    elif verb == "eval":
        _eval_verb(rest)
    elif verb == "compare":
        _store_arg("compare", must_exist=False)
        from crs.compare import main as compare_main

        _user_errors(compare_main, rest)
    elif verb == "ui":
        _store_arg("ui", must_exist=False)
        from crs.ui import main as ui_main

        _user_errors(ui_main, rest)
    elif verb == "pipeline":  # crs/pipeline: stages of crs train configs under one MLflow parent
        from crs.pipeline import main as pipeline_main

        pipeline_main(rest)
    elif verb == "runs":
        _store_arg("runs", must_exist=True)
        from crs.runs.liveness import runs_main

        _user_errors(runs_main, rest)
    else:
        fail(
            f"unknown command {verb!r}{did_you_mean(verb, VERBS)}; commands: {', '.join(VERBS)} (crs --help)"
        )


if __name__ == "__main__":
    main()
