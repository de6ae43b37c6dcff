"""Registers the environment benchmarks (``benchmark=maze``, ``benchmark=calc_tool``)."""

from __future__ import annotations

from crs.benchmarks import register_benchmark


@register_benchmark("maze")
def _maze(cfg, seed):
    from crs.envs import maze

    return maze.build(cfg, seed)


@register_benchmark("calc_tool")
def _calc(cfg, seed):
    from crs.envs import calc

    return calc.build(cfg, seed)
