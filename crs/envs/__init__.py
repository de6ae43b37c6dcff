"""Multi-turn environments on TRL's ``environment_factory`` API: the substrate turn-level methods build on.

crs is single-turn by default; this package adds agents. An *environment benchmark* is a normal
:class:`~crs.benchmarks.Benchmark` whose ``info["environment_factory"]`` TRL 1.16's ``GRPOTrainer``
receives: each rollout gets its own environment instance, ``reset(**row)`` appends the first
observation to the prompt, every public method is a tool, tool results are appended to the
completion and masked from the loss through TRL's ``tool_mask``. Pieces:

- :mod:`crs.envs.chat` — a terse tool-calling chat format (template + response parser) for tiny policies;
- :mod:`crs.envs.base` — :class:`TurnEnv`, which logs one :class:`StepRecord` per tool call;
- :mod:`crs.envs.maze` (``benchmark=maze``) — grid maze whose observations repeat across rollouts;
- :mod:`crs.envs.calc` (``benchmark=calc_tool``) — arithmetic with a calculator tool and gold call traces;
- :mod:`crs.envs.orchestra` (``benchmark=orchestra``) — an orchestrator spawning frozen sub-agents, with costs;
- :mod:`crs.envs.trace` — orchestration traces in the MAS-RL survey's schema: builder, validator, JSON Schema;
- :mod:`crs.envs.policy` — warm-started tiny policies, built on first use and cached;
- :mod:`crs.envs.turns` — turn structure of a rollout batch (turn spans, anchors, calls, rewards) and
  the rollout-time hook the trainer calls; per-turn metrics (``env/*``);
- :mod:`crs.envs.verifiers` — exact turn verifiers (where an episode first went wrong).

The turn-level methods that use this package (GiGPO, A²TGPO, MatchTIR, R³L) live in :mod:`crs.methods`.
A new environment is **three files**: its module here (a :class:`TurnEnv` and a ``build`` registered with
``@register_benchmark``), one line in :data:`crs.benchmarks.BUILTIN`, and ``conf/benchmark/<name>.yaml``.

    crs train benchmark=maze method=gigpo
    crs train benchmark=calc_tool method=matchtir
"""

from __future__ import annotations

from typing import Any


def default_bench_cfg(name: str) -> dict[str, Any]:
    """The benchmark's yaml values (conf/benchmark/<name>.yaml) as a plain dict."""
    from pathlib import Path

    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "conf" / "benchmark" / f"{name}.yaml"
    node = OmegaConf.load(path)
    return OmegaConf.to_container(node.get("benchmark", node), resolve=True)
