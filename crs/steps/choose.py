"""``method.steps.scorer`` → a ready step scorer: the rule verifier, a PRM or judge (built offline on first
use when no ``path`` is given), or the online implicit PRM. Kept apart from :mod:`crs.steps.scorers` so
the scorers know nothing of how they are built."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crs.errors import ConfigError
from crs.steps.build import ensure_judge, ensure_prm
from crs.steps.implicit import ImplicitPRM
from crs.steps.scorers import JudgeScorer, PRMScorer, RuleScorer, StepScorer


def build_scorer(
    cfg: Mapping[str, Any],
    benchmark: str,
    cache_dir: str | None,
    policy_path: str | None,
    task: Mapping[str, Any] | None = None,
) -> StepScorer:
    """The scorer named ``cfg['scorer']`` (``method.steps``); PRM/judge are built on first use if ``path`` is null."""
    name = cfg.get("scorer", "rule")
    seps = tuple(cfg.get("separators") or (",", "."))
    if name == "rule":
        return RuleScorer(benchmark)
    if name == "prm":
        p = dict(cfg.get("prm") or {})
        path = p.get("path")
        if not path:
            path = str(ensure_prm(policy_path, benchmark, cache_dir, p, seps, task))
        return PRMScorer(path, p.get("step_token", "\n"), p.get("good_token", "+"), p.get("bad_token", "-"))
    if name == "judge":
        j = dict(cfg.get("judge") or {})
        path = j.get("path")
        if not path:
            path = str(ensure_judge(policy_path, benchmark, cache_dir, j, seps, task))
        return JudgeScorer(
            path, int(j.get("critiques", 4)), j.get("vote", "majority"), float(j.get("temperature", 1.0))
        )
    if name == "implicit":
        i = dict(cfg.get("implicit") or {})
        return ImplicitPRM(
            beta=float(i.get("beta", 0.05)), lr=float(i.get("lr", 1e-4)), traj_agg=i.get("traj_agg", "mean")
        )
    raise ConfigError(f"method.steps.scorer must be rule, prm, judge or implicit, got {name!r}")
