"""A benchmark config → the problems ``crs eval`` scores: prompts, reference answers and a grader.

Real datasets go through :mod:`crs.benchmarks.hf` (hub id, local folder or file in the hub's format,
its column check: a missing column is one line and exit 2, before any model loads); crs's own tasks
(arithmetic, bifurcation) through their registered builder's eval split. ``suite=paper`` composes each
member's ``conf/benchmark/<name>.yaml`` with the command line's ``benchmark.*`` overrides, and
``suite.data_dir`` points every member at ``<data_dir>/<name>.<ext>``.

    crs eval suite=paper suite.data_dir=/data/paper    # /data/paper/aime24.jsonl, gpqa_diamond.csv, …
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from crs.errors import ConfigError

DATA_EXTS = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class Problems:
    """What one benchmark contributes: ``prompts[i]`` (a string or chat messages) and ``answers[i]``."""

    name: str
    prompts: list[Any]
    answers: list[str]
    grader: Any
    config: dict[str, Any] = field(default_factory=dict)


def benchmark_names(cfg: DictConfig, choice: str | None) -> list[str]:
    """The benchmark options to evaluate: the suite's members, else the ``benchmark`` group's choice."""
    suite = cfg.get("suite")
    if suite is not None and suite.get("benchmarks"):
        return [str(b) for b in suite.benchmarks]
    return [choice or str(cfg.benchmark.get("name"))]


def member_configs(
    cfg: DictConfig, choice: str | None, compose: Callable[[list[str]], DictConfig], overrides: list[str]
) -> list[tuple[str, dict[str, Any]]]:
    """``(name, benchmark config)`` per benchmark: the composed one, or each suite member composed with
    the command line's other overrides (``compose(overrides + ["benchmark=<name>"])``)."""
    names = benchmark_names(cfg, choice)
    suite = cfg.get("suite")
    data_dir = suite.get("data_dir") if suite is not None else None
    out = []
    for name in names:
        if suite is not None and suite.get("benchmarks"):
            rest = [o for o in overrides if not o.lstrip("+~").startswith("benchmark")]
            try:
                node = compose([*rest, f"benchmark={name}"]).benchmark
            except Exception as err:
                raise ConfigError(
                    f"suite.benchmarks: {name!r} is not a conf/benchmark option ({err})"
                ) from None
        else:
            node = cfg.benchmark
        bench = OmegaConf.to_container(node, resolve=True)
        if suite is not None and suite.get("benchmarks"):
            for key, value in (suite.get("set") or {}).items():
                if key not in bench:
                    raise ConfigError(f"suite.set.{key}: benchmark {name} has no key {key!r}")
                bench[key] = value
        if data_dir:
            bench["path"] = str(local_file(Path(data_dir), name))
        out.append((name, bench))
    return out


def local_file(data_dir: Path, name: str) -> Path:
    """``<data_dir>/<name>.<ext>`` for the first existing extension; a one-line error otherwise."""
    for ext in DATA_EXTS:
        if (data_dir / f"{name}{ext}").is_file():
            return data_dir / f"{name}{ext}"
    raise ConfigError(
        f"suite.data_dir: no {name}{{{','.join(DATA_EXTS)}}} in {data_dir} (one file per benchmark, "
        f"in the hub's format: docs/eval.md)"
    )


def check_files(benches: list[tuple[str, Mapping[str, Any]]]) -> None:
    """Local data files exist, parse and have the columns (no ``datasets`` import): one line, exit 2."""
    from crs.runs.preflight import check_data_files

    for _, bench in benches:
        if bench.get("name") == "hf" and _is_local(str(bench.get("path"))):
            # the checker reads train and eval splits; crs eval only needs the eval one
            one = {**bench, "train_split": bench.get("eval_split", "test")}
            check_data_files(one)
            if bench.get("answer_format") == "gpqa":  # the three wrong choices are columns too
                from crs.benchmarks.hf import GPQA_WRONG

                for col in GPQA_WRONG:
                    check_data_files({**one, "answer_field": col})


def _is_local(path: str) -> bool:
    return "{split}" in path or Path(path).suffix in DATA_EXTS or Path(path).exists()


def load_problems(name: str, bench: Mapping[str, Any], n_cap: int | None) -> Problems:
    """Prompts, answers and grader of benchmark ``name`` (first ``n_cap`` problems, else ``n_eval``)."""
    from crs.eval.graders import ChoiceGrader, MathGrader, TaskGrader

    n = n_cap if n_cap is not None else bench.get("n_eval")
    if bench.get("name") == "hf":
        from crs.benchmarks.hf import _load_split, _prepare

        ds = _prepare(_load_split(bench, bench.get("eval_split", "test")), bench, n, None)
        grader = ChoiceGrader() if bench.get("answer_format") == "gpqa" else MathGrader()
        return Problems(name, list(ds["prompt"]), [str(a) for a in ds["answer"]], grader, dict(bench))
    import importlib

    from crs.benchmarks import BUILTIN, build_benchmark, is_multi_turn

    if is_multi_turn(bench.get("name")):
        raise ConfigError(f"benchmark={name}: crs eval scores single-turn benchmarks (multi-turn: crs train)")
    b = build_benchmark(dict(bench), seed=0)
    module = importlib.import_module(BUILTIN[bench["name"]][0]) if bench.get("name") in BUILTIN else None
    extract = getattr(module, "extract_answer", None)
    prompts, answers = list(b.eval["prompt"]), [str(a) for a in b.eval["answer"]]
    if n is not None:
        prompts, answers = prompts[:n], answers[:n]
    return Problems(name, prompts, answers, TaskGrader(b.verify, extract, bench["name"]), dict(bench))
