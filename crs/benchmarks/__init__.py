"""Benchmarks: verifiable tasks as (train split, eval split, reward functions, SFT data).

A benchmark is registered by name with :func:`register_benchmark` on a factory
``factory(cfg: Mapping, seed: int) -> Benchmark``; ``conf/benchmark/<name>.yaml`` selects it with
``name: <name>``. Everything a benchmark returns is in TRL's formats:

- ``train`` / ``eval``: ``datasets.Dataset`` with a ``prompt`` column (plain string or a list of chat
  messages) plus whatever columns the reward functions read (e.g. ``answer``);
- ``reward_funcs``: callables with TRL's reward signature
  ``f(prompts, completions, completion_ids, **columns, trainer_state, log_metric, log_extra, **kw) -> list[float|None]``;
- ``sft``: a prompt/completion ``Dataset`` used by ``crs pretrain`` to warm-start a model.

Example::

    crs train benchmark=arithmetic benchmark.max_terms=5
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset


@dataclass
class Benchmark:
    """What a benchmark factory returns.

    Args:
        name: registry name.
        train: RL training prompts (``prompt`` column + reward columns).
        eval: held-out prompts, same columns; fixed across run seeds so runs are comparable.
        reward_funcs: TRL reward functions; the first one is the verifier (1.0 = correct).
        verify: ``verify(completion_text, answer) -> bool`` strict final-answer check.
        sft: optional ``(n, seed) -> Dataset`` of prompt/completion pairs for warm-starting.
        step_scores: optional ``(completion_text, row) -> list[(char_start, char_end, score)]`` for
            process-level credit (PURE/CAPO-style) where the task can check intermediate steps.
        decisive: optional ``(completion_text, row) -> list[(char_start, char_end)]``: the characters
            that decide success (controlled bifurcation tasks, :mod:`crs.benchmarks.bifurcation`);
            enables the credit-localization metrics (:mod:`crs.steps.localization`).
    """

    name: str
    train: Dataset
    eval: Dataset
    reward_funcs: list[Callable[..., list[float | None]]]
    verify: Callable[[str, str], bool]
    sft: Callable[[int, int], Dataset] | None = None
    step_scores: Callable[..., list[tuple[int, int, float]]] | None = None
    decisive: Callable[..., list[tuple[int, int]]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


BENCHMARKS: dict[str, Callable[[Mapping[str, Any], int], Benchmark]] = {}


def register_benchmark(name: str):
    """Decorator: register ``factory(cfg, seed) -> Benchmark`` under ``name`` (duplicates raise)."""

    def deco(fn):
        if name in BENCHMARKS and BENCHMARKS[name] is not fn:
            raise ValueError(f"benchmark {name!r} is already registered")
        BENCHMARKS[name] = fn
        return fn

    return deco


def get_benchmark(name: str) -> Callable[[Mapping[str, Any], int], Benchmark]:
    _import_builtin()
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def build_benchmark(cfg: Mapping[str, Any], seed: int) -> Benchmark:
    """Build the benchmark named ``cfg['name']`` with the run's seed."""
    return get_benchmark(cfg["name"])(cfg, seed)


def _import_builtin() -> None:
    # importing registers; kept lazy so `crs --help` stays fast
    from crs.benchmarks import arithmetic, bifurcation  # noqa: F401
    from crs.envs import benchmarks as _envs  # noqa: F401  (multi-turn environments: maze, calc_tool)

    try:
        from crs.benchmarks import hf  # noqa: F401
    except ImportError:  # pragma: no cover - module added later
        pass
