"""Multi-turn environments on TRL's ``environment_factory`` API, and the turn-level credit methods.

crs is single-turn by default; this package adds agents. An *environment benchmark* is a normal
:class:`~crs.benchmarks.Benchmark` whose ``info["environment_factory"]`` TRL 1.16's ``GRPOTrainer``
receives: each rollout gets its own environment instance, ``reset(**row)`` appends the first
observation to the prompt, every public method is a tool, tool results are appended to the
completion and masked from the loss through TRL's ``tool_mask``. Pieces:

- :mod:`crs.envs.chat` — a terse tool-calling chat format (template + response parser) for tiny policies;
- :mod:`crs.envs.base` — :class:`TurnEnv`, which logs one :class:`StepRecord` per tool call;
- :mod:`crs.envs.maze` (``benchmark=maze``) — grid maze whose observations repeat across rollouts;
- :mod:`crs.envs.calc` (``benchmark=calc_tool``) — arithmetic with a calculator tool and gold call traces;
- :mod:`crs.envs.policy` — warm-started tiny policies, built on first use and cached;
- :mod:`crs.envs.turns` — turn structure of a rollout batch (turn spans, anchors, calls, rewards) and
  the rollout-time hook the trainer calls; per-turn metrics (``env/*``);
- :mod:`crs.envs.gigpo`, :mod:`crs.envs.matchtir`, :mod:`crs.envs.a2tgpo`, :mod:`crs.envs.r3l` — methods.

    crs train benchmark=maze method=gigpo
    crs train benchmark=calc_tool method=matchtir
"""

from __future__ import annotations

from typing import Any

ENV_BENCHMARKS = ("maze", "calc_tool")


def is_env_benchmark(name: str | None) -> bool:
    return name in ENV_BENCHMARKS


def default_bench_cfg(name: str) -> dict[str, Any]:
    """The benchmark's yaml values (conf/benchmark/<name>.yaml) as a plain dict."""
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "conf" / "benchmark" / f"{name}.yaml"
    node = OmegaConf.load(path)
    return OmegaConf.to_container(node.get("benchmark", node), resolve=True)
