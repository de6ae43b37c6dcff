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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # datasets is imported by the benchmark modules, not by config checks
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
        decisive: optional ``(completion_text, row) -> list[(char_start, char_end)]``: the characters
            that decide success (controlled bifurcation tasks, :mod:`crs.benchmarks.bifurcation`);
            enables the credit-localization metrics (:mod:`crs.steps.localization`).
        parts: optional ``(completion_text, row) -> {name: (char spans, reward or None)}``: the named parts
            of a structured completion (:mod:`crs.benchmarks.slate_rank`: slate, ranking), each with its own
            reward; the step hook turns them into ``part_<name>`` ``[B,T]`` masks and group-centred
            ``part_adv_<name>`` ``[B]`` advantages for methods that read them (per-phase credit, F-GRPO).
    """

    name: str
    train: Dataset
    eval: Dataset
    reward_funcs: list[Callable[..., list[float | None]]]
    verify: Callable[[str, str], bool]
    sft: Callable[[int, int], Dataset] | None = None
    decisive: Callable[..., list[tuple[int, int]]] | None = None
    parts: Callable[..., dict[str, tuple[list[tuple[int, int]], float | None]]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


BENCHMARKS: dict[str, Callable[[Mapping[str, Any], int], Benchmark]] = {}

# The one list of built-in benchmarks: name -> (module that registers it, multi-turn environment?).
# Modules are imported on first use (``crs --help`` and config errors stay fast); a new benchmark or
# environment is its module + a line here + its yaml in conf/benchmark/.
BUILTIN: dict[str, tuple[str, bool]] = {
    "arithmetic": ("crs.benchmarks.arithmetic", False),
    "bifurcation": ("crs.benchmarks.bifurcation", False),
    "slate_rank": ("crs.benchmarks.slate_rank", False),
    "hf": ("crs.benchmarks.hf", False),
    "maze": ("crs.envs.maze", True),
    "calc_tool": ("crs.envs.calc", True),
    "orchestra": ("crs.envs.orchestra", True),
}


def is_multi_turn(name: str | None) -> bool:
    """Whether benchmark ``name`` is a multi-turn environment (TRL ``environment_factory``)."""
    return name in BUILTIN and BUILTIN[name][1]


def register_benchmark(name: str):
    """Decorator: register ``factory(cfg, seed) -> Benchmark`` under ``name`` (duplicates raise)."""

    def deco(fn):
        if name in BENCHMARKS and BENCHMARKS[name] is not fn:
            raise ValueError(f"benchmark {name!r} is already registered")
        BENCHMARKS[name] = fn
        return fn

    return deco


def get_benchmark(name: str) -> Callable[[Mapping[str, Any], int], Benchmark]:
    if name not in BENCHMARKS and name in BUILTIN:
        import importlib

        importlib.import_module(BUILTIN[name][0])  # registers it
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(set(BENCHMARKS) | set(BUILTIN))}")
    return BENCHMARKS[name]


def build_benchmark(cfg: Mapping[str, Any], seed: int) -> Benchmark:
    """Build the benchmark named ``cfg['name']`` with the run's seed."""
    return get_benchmark(cfg["name"])(cfg, seed)
