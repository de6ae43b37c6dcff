"""``crs pipeline``: multi-stage experiments, each stage a ``crs train`` config, as one command.

The first pipeline is **sparse-to-dense** (arXiv 2605.12483; docs/s2d.md): spend the labeled budget on
GRPO of a larger teacher (stage 1), then move it into the student with dense per-token signal — forward
KL on teacher samples (stage 2a, TRL ``GKDTrainer``: crs/trainers/gkd.py) and on-policy distillation on
student samples with per-token teacher log-ratio credit (stage 2b, ``method=opd``: crs/methods/opd.py).
A pipeline is a yaml of ``crs/pipeline/conf/`` (Hydra-composed, so ``key=value`` overrides and the ``size``
group work); each stage is an MLflow child run of one parent, its output model passed on by path, and a
stage that FINISHED is skipped on rerun (crs/pipeline/runner.py)::

    crs pipeline sparse_to_dense size=debug              # end to end in minutes
    crs pipeline sparse_to_dense seed=1 skip=[fkl]   # an ablation arm (skip=[on_policy], skip=[teacher_rl])
    crs pipeline sweep s2d                               # sweeps/pipelines/s2d.yaml: arms × seeds
    crs compare --sweep <id> --metric s2d/heldout_pass1:max s2d/heldout_passk:max
    crs pipeline plot --last --out docs/img/s2d.png      # held-out pass@1 through the stages, per arm
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from crs.errors import ConfigError

USAGE = (
    "crs pipeline <name> [key=value ...]   a pipeline of crs/pipeline/conf/ (e.g. sparse_to_dense size=debug)\n"
    "crs pipeline sweep <grid> [seeds=[..]] [arms=[..]] [key=value ...]   arms × seeds of sweeps/pipelines/<grid>.yaml\n"
    "crs pipeline plot [--last | --sweep ID] [--out PNG]   the student through the stages, per arm"
)


def pipeline_dir() -> Path:
    """The pipelines' own config tree (``crs/pipeline/conf/``): not a ``crs train`` group, so it lives beside
    the code that composes it, as ``crs eval``'s suites do (``crs/eval/conf/``)."""
    return Path(__file__).resolve().parent / "conf"


def sweep_dir() -> Path:
    from crs.locations import SWEEPS_DIR

    return Path(SWEEPS_DIR) / "pipelines"


def compose_pipeline(name: str, overrides: list[str]):
    """``crs/pipeline/conf/<name>.yaml`` with overrides (a typo or a wrong type: one ConfigError line)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from crs.pipeline.config import register

    names = sorted(p.stem for p in pipeline_dir().glob("*.yaml"))
    if name not in names:
        from crs.errors import did_you_mean

        raise ConfigError(
            f"crs pipeline: no pipeline {name!r}{did_you_mean(name, names)}; known: {', '.join(names)}"
        )
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(pipeline_dir()), version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides))
    except Exception as err:
        from crs.errors import one_line

        raise ConfigError(f"crs pipeline {name}: {one_line(err)}") from None
    finally:
        GlobalHydra.instance().clear()


def run(name: str, overrides: list[str]) -> dict[str, Any]:
    from crs.pipeline.runner import Pipeline, check

    p = compose_pipeline(name, overrides)
    check(p)
    from crs.quiet import quiet

    quiet()
    return Pipeline(p).run()


def sweep(grid: str, overrides: list[str]) -> dict[str, Any]:
    from crs.pipeline.sweep import run_sweep

    return run_sweep(grid, overrides)


def main(argv: list[str]) -> None:
    """``crs pipeline ...``: bad input is one line on stderr, exit 2, before any model loads."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    try:
        if argv[0] == "plot":
            from crs.pipeline.plot import main as plot_main

            plot_main(argv[1:])
        elif argv[0] == "sweep":
            if argv[1:2] in (["-h"], ["--help"]):
                print(USAGE)
                return
            if len(argv) < 2:
                raise ConfigError("crs pipeline sweep needs a grid: crs pipeline sweep <grid> [overrides]")
            if sweep(argv[1], argv[2:])["failed"]:  # every arm ran; a failed one makes the sweep fail
                sys.exit(1)
        else:
            run(argv[0], argv[1:])
    except ConfigError as err:
        from crs.progress import error_line

        error_line(str(err))
        sys.exit(2)
