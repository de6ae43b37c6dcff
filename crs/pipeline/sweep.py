"""``crs pipeline sweep <grid>``: a pipeline's arms × seeds as one MLflow sweep that ``crs compare`` reads.

A grid is ``sweeps/pipelines/<grid>.yaml``: the pipeline's name, its seeds, overrides common to every arm
and one override list per arm. The sweep opens a parent run (``crs.role=sweep``, ``swept_keys=arm``) and
runs the arms one after the other (arms share stages by content key: crs/pipeline/runner.py); each arm's
final stage run is tagged ``sweep_id`` and ``sweep.arm``, so::

    crs pipeline sweep s2d
    crs compare --sweep <sweep id> --metric s2d/heldout_pass1:max s2d/heldout_passk:max --export results/s2d.json
"""

from __future__ import annotations

import uuid
from typing import Any

from omegaconf import OmegaConf

from crs.errors import ConfigError


def load_grid(grid: str) -> dict[str, Any]:
    from crs.pipeline import sweep_dir

    path = sweep_dir() / f"{grid}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in sweep_dir().glob("*.yaml"))
        raise ConfigError(f"crs pipeline sweep: no grid {grid!r} in {sweep_dir()}; known: {', '.join(names)}")
    g = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for key in ("pipeline", "seeds", "arms"):
        if key not in g:
            raise ConfigError(f"{path}: missing {key!r}")
    return g


def jobs(g: dict[str, Any], overrides: list[str]) -> list[tuple[str, int, list[str]]]:
    """``(arm, seed, pipeline overrides)`` of every job, arms in the grid's order, seeds inner.

    ``seeds=[..]`` and ``arms=[..]`` on the command line replace the grid's seeds and pick a subset of its
    arms (``crs pipeline sweep s2d arms=[full_rkl] size=debug``: one new arm, smoke-sized); an unknown arm
    is one ConfigError line naming the grid's arms."""
    seeds, arms = g["seeds"], list(g["arms"])
    rest = []
    for ov in overrides:
        key = ov.split("=", 1)[0]
        if key not in ("seeds", "arms"):
            rest.append(ov)
            continue
        value = OmegaConf.from_dotlist([ov])[key]
        picked = list(value) if OmegaConf.is_list(value) else [value]
        if key == "seeds":
            seeds = picked
            continue
        names = set(map(str, picked))
        unknown = sorted(names - set(g["arms"]))
        if unknown:
            from crs.errors import did_you_mean

            raise ConfigError(
                f"crs pipeline sweep: no arm {unknown[0]!r}{did_you_mean(unknown[0], g['arms'])}; "
                f"the grid's arms: {', '.join(g['arms'])}"
            )
        arms = [a for a in g["arms"] if a in names]  # the grid's order, not the command's
    out = []
    for arm in arms:
        for seed in seeds:
            out.append(
                (
                    arm,
                    int(seed),
                    [*g.get("common", []), *(g["arms"][arm] or []), f"arm={arm}", f"seed={seed}", *rest],
                )
            )
    return out


def run_sweep(grid: str, overrides: list[str]) -> dict[str, Any]:
    from crs.pipeline import compose_pipeline
    from crs.pipeline.runner import Pipeline, check

    g = load_grid(grid)
    planned = jobs(g, overrides)
    configs = []
    for arm, seed, ov in planned:  # every job's config checked before anything runs
        p = compose_pipeline(g["pipeline"], ov)
        check(p)
        configs.append((arm, seed, ov, p))
    from crs.quiet import quiet

    quiet()
    p0 = configs[0][3]
    from crs.tracking import MlflowTracker, git_sha

    parent = MlflowTracker(p0.tracking.uri, p0.tracking.experiment)
    sweep_id = uuid.uuid4().hex[:8]
    parent.start(
        run_name=f"sweep {grid}: arm × seed",
        tags={
            "crs.role": "sweep",
            "sweep_id": sweep_id,
            "swept_keys": "arm",
            "git_sha": git_sha(),
            "overrides": " ".join(overrides),
            "pipeline": g["pipeline"],
            "pipeline_grid": grid,  # the export's rebuild command: crs pipeline sweep <grid> <overrides>
        },
    )
    print(f"crs pipeline sweep {grid}: sweep {sweep_id}, {len(configs)} pipelines", flush=True)
    status, failed = "FINISHED", 0
    try:
        for arm, seed, ov, _ in configs:
            p = compose_pipeline(g["pipeline"], ov)
            OmegaConf.update(p, "sweep", {"run_id": parent.run_id, "sweep_id": sweep_id}, merge=False)
            try:
                Pipeline(p).run()
            except (KeyboardInterrupt, ConfigError):
                raise
            except Exception as err:  # one failed arm does not stop the comparison
                failed += 1
                print(
                    f"crs pipeline sweep: {arm} seed {seed} FAILED: {type(err).__name__}: {err}", flush=True
                )
        status = "FAILED" if failed else "FINISHED"
        return {"sweep_id": sweep_id, "run_id": parent.run_id, "failed": failed}
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        parent.set_tags({"jobs.failed": failed})
        parent.end(status)
