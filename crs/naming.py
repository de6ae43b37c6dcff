"""Names, tags and descriptions that make runs comparable at a glance in the MLflow UI.

A job run is named after what distinguishes it, joined by ``·``: the method, the schedule (only when
the method has a knob the schedule drives), the loss preset and any other swept key when they vary,
and the seed — ``tp_schedule·linear·s0``, ``grpo·s1``, ``tp_schedule·cosine·dapo·s2``. Tags carry the
same as separate columns (``method``, ``schedule``, ``loss``, ``seed``; MLflow's own ``status``
column says FINISHED/FAILED/KILLED), plus ``drives`` — the knob(s) ρ moves, or ``none``.

A method without a driven knob ignores its schedule, so a grid of ``grpo × {constant, linear}`` would
train the same model twice: such a job is tagged ``schedule=none``, and in a sweep every job whose
schedule value is not the grid's first one is skipped as a duplicate (:func:`duplicate_of`; the sweep's
parent run lists the skipped jobs in its description).

The sweep's parent run is named ``sweep <grid>: method × schedule × seed`` and its description (the
MLflow ``mlflow.note.content`` tag, shown on the run page) holds the grid, the command line, the
skipped duplicates and, once the sweep ends, the ``crs compare`` table (:func:`parent_description`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SEP = "·"
NO_SCHEDULE = "none"
SKIP_DIR = "crs_skipped"
DESCRIPTION_TAG = "mlflow.note.content"


def driven_knobs(method_credit: Any) -> list[str]:
    """Names ``<step>/<knob>`` of the knobs the schedule drives (``[]``: none), read from ``method.credit``
    (or a built chain) without building one."""
    if hasattr(method_credit, "knobs"):
        return sorted(method_credit.knobs(1.0))
    out = []
    for name, spec in dict(method_credit or {}).items():
        drive = (spec or {}).get("drive") if hasattr(spec or {}, "get") else None
        if drive is not None and drive.get("knob") is not None:
            out.append(f"{name}/{drive['knob']}")
    return sorted(out)


def default_choice(group: str) -> str | None:
    """The option ``conf/train.yaml`` picks for a config group (e.g. the default loss preset)."""
    from omegaconf import OmegaConf

    from crs.locations import CONF_DIR

    for item in OmegaConf.load(Path(CONF_DIR) / "train.yaml").get("defaults", []):
        if isinstance(item, Mapping) or hasattr(item, "keys"):
            for k, v in item.items():
                if str(k).split("@")[0].removeprefix("override ").lstrip("/") == group:
                    return str(v)
    return None


def _short(key: str, value: str) -> str:
    """``trainer.lr=1e-5`` → ``lr=1e-5`` (the last part of a dotted key is enough in a name)."""
    return f"{key.rsplit('.', 1)[-1]}={value}"


def run_name(cfg: Any, ctx: Mapping[str, Any], parent: Mapping[str, Any] | None) -> str:
    """``method·schedule·[loss·][other swept values·]s<seed>`` (schedule only with a driven knob)."""
    if cfg.tracking.get("run_name"):
        return str(cfg.tracking.run_name)
    choices = ctx.get("choices", {})
    parts = [str(choices.get("method", cfg.method.name))]
    if driven_knobs(cfg.method.credit):
        parts.append(str(choices.get("schedule", cfg.schedule.name)))
    loss = choices.get("loss")
    swept = set(parent.get("swept_keys", [])) if parent else set()
    if loss and (loss != default_choice("loss") or "loss" in swept):
        parts.append(str(loss))
    if not parent:  # a top-level run: say where it differs from the default task and model size
        parts += _task_and_size(cfg, choices)
    for ov in ctx.get("overrides", []) if parent else []:
        key, _, value = ov.lstrip("+~").partition("=")
        if key in swept and key not in ("method", "schedule", "loss", "seed"):
            if key.startswith("schedule.") and not driven_knobs(cfg.method.credit):
                continue
            parts.append(_short(key, value) if "." in key else value)
    parts.append(f"s{cfg.seed}")
    return SEP.join(parts)


def _task_and_size(cfg: Any, choices: Mapping[str, Any]) -> list[str]:
    """``[benchmark][, model or embedded size]`` where they differ from ``conf/train.yaml``'s defaults, so two
    top-level runs from different tasks or sizes do not both read ``grpo·s0`` (``grpo·arithmetic_easy·h64x2·s0``)."""
    out = []
    bench = choices.get("benchmark") or cfg.get("benchmark", {}).get("name")
    if bench and bench != default_choice("benchmark"):
        out.append(str(bench))
    model = choices.get("model")
    if model and model != default_choice("model"):
        out.append(str(model))
    elif cfg.get("model") is not None and cfg.model.get("embedded") is not None:
        from crs.embedded import EmbeddedModelConfig

        emb, ref = cfg.model.embedded, EmbeddedModelConfig()
        h, n = emb.get("hidden_size", ref.hidden_size), emb.get("num_layers", ref.num_layers)
        if (h, n) != (ref.hidden_size, ref.num_layers):
            out.append(f"h{h}x{n}")
    return out


def job_tags(cfg: Any, ctx: Mapping[str, Any]) -> dict[str, str]:
    """The comparison tags a job adds to crs's standard ones (``schedule`` and ``drives``)."""
    knobs = driven_knobs(cfg.method.credit)
    tags = {"drives": ",".join(knobs) if knobs else NO_SCHEDULE}
    if not knobs:
        tags["schedule"] = NO_SCHEDULE
    return tags


# ---------------------------------------------------------------------------------------------------
# sweeps


def sweep_grid(
    task_overrides: list[str], sweeper_params: Mapping[str, Any] | None = None
) -> dict[str, list[str]]:
    """``{key: [values]}`` of a sweep (``method=grpo,tp_schedule`` → ``["grpo", "tp_schedule"]``).

    Grids in ``sweeps/*.yaml`` come as ``hydra.sweeper.params``; the command line wins over them, and a
    plain ``key=value`` there fixes a key the grid file sweeps (as Hydra's basic sweeper does).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    grid: dict[str, list[str]] = {}
    items = [f"{k}={v}" for k, v in (sweeper_params or {}).items()] + list(task_overrides)
    for o in parser.parse_overrides(items):
        key = o.get_key_element().lstrip("+~")
        if o.is_sweep_override():
            grid[key] = [str(v) for v in o.sweep_string_iterator()]
        else:
            grid.pop(key, None)
    return grid


def duplicate_of(cfg: Any, ctx: Mapping[str, Any], parent: Mapping[str, Any] | None) -> str | None:
    """Why this sweep job repeats another one, or ``None``.

    A method without a driven knob trains the same whatever its schedule, so of the jobs that differ
    only in schedule keys (``schedule``, ``schedule.*``) the one with each key's first grid value runs.
    """
    grid = (parent or {}).get("grid") or {}
    if not grid or driven_knobs(cfg.method.credit):
        return None
    mine = {}
    for ov in ctx.get("overrides", []):
        key, _, value = ov.lstrip("+~").partition("=")
        mine[key] = value
    for key, values in grid.items():
        if (key == "schedule" or key.startswith("schedule.")) and len(values) > 1:
            if mine.get(key, values[0]) != values[0]:
                method = ctx.get("choices", {}).get("method", cfg.method.name)
                return (
                    f"{method} has no knob the schedule drives: {key}={mine[key]} would repeat the job with "
                    f"{key}={values[0]}"
                )
    return None


def record_skip(sweep_dir: str | Path, job_num: Any, overrides: list[str], reason: str) -> None:
    """One file per skipped job (no concurrent appends on a shared file system)."""
    d = Path(sweep_dir) / SKIP_DIR
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{job_num}.json").write_text(
        json.dumps({"job_num": job_num, "overrides": overrides, "reason": reason})
    )


def read_skips(sweep_dir: str | Path) -> list[dict[str, Any]]:
    d = Path(sweep_dir) / SKIP_DIR
    if not d.is_dir():
        return []
    out = [json.loads(p.read_text()) for p in d.glob("*.json")]
    return sorted(out, key=lambda s: int(s["job_num"]) if str(s["job_num"]).isdigit() else 0)


def parent_name(config_name: str, keys: list[str], grid: Mapping[str, list[str]] | None = None) -> str:
    """``sweep methods_x_schedules: method × schedule × seed``; an ad-hoc ``crs train -m`` grid is named by
    its varied overrides: ``sweep: method=grpo,tp_schedule × seed=0,1`` (long lists as ``seed (5)``)."""
    if config_name and config_name != "train":
        return f"sweep {config_name}: {' × '.join(keys) or 'one job'}"
    parts = []
    for k in keys:
        values = list((grid or {}).get(k) or [])
        if not values:
            parts.append(k)
        elif len(values) <= 4 and len(",".join(values)) <= 40:
            parts.append(f"{k}={','.join(values)}")
        else:
            parts.append(f"{k} ({len(values)})")
    return f"sweep: {' × '.join(parts) or 'one job'}"


def parent_description(
    info: Mapping[str, Any],
    counts: Mapping[str, int] | None = None,
    table_md: str | None = None,
) -> str:
    """Markdown for the parent run's description: grid, command, skipped duplicates, compare table."""
    grid = info.get("grid") or {}
    lines = [
        f"**crs sweep** `{info.get('config_name') or 'train'}` · sweep id `{info['sweep_id']}` · "
        f"{info.get('n_jobs', '?')} jobs · launcher `{info.get('launcher', '?')}`",
        "",
    ]
    if grid:
        lines += ["| swept key | values |", "|---|---|"]
        lines += [f"| `{k}` | {', '.join(f'`{v}`' for v in vs)} |" for k, vs in grid.items()]
        lines.append("")
    fixed = [o for o in info.get("overrides", []) if o.split("=", 1)[0].lstrip("+~") not in grid]
    if fixed:
        lines += ["Fixed overrides: " + " ".join(f"`{o}`" for o in fixed), ""]
    if counts:
        lines += [", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no jobs ran", ""]
    skips = read_skips(info["sweep_dir"]) if info.get("sweep_dir") else []
    if skips:
        lines += [f"**{len(skips)} duplicate job(s) skipped** (grid cells collapsed):", ""]
        lines += [f"- job {s['job_num']} (`{' '.join(s['overrides'])}`): {s['reason']}" for s in skips]
        lines.append("")
    lines += [
        f"Compare: `crs compare --sweep {info['sweep_id']}` (table and plots: artifacts `compare/`).",
        "",
    ]
    if table_md:
        lines += ["### crs compare", "", table_md]
    return "\n".join(lines)
