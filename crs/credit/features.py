"""Per-row rollout features, computed once per rollout on the gathered batch (groups contiguous) and
read by credit steps through ``CreditBatch.features``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from crs.credit.primitives import group_stats

FEATURES: dict[str, Callable[..., Tensor]] = {}


def register_feature(name: str):
    def deco(fn):
        FEATURES[name] = fn
        return fn

    return deco


def rollout_features(
    rewards: Tensor, success: Tensor, lengths: Tensor, truncated: Tensor, group_size: int, extra: set[str]
) -> dict[str, Tensor]:
    """Per-row features of a gathered rollout batch ``[N]`` (groups contiguous).

    Always: ``reward``, ``group_mean``, ``group_std``, ``group_success``, ``success``, ``length``,
    ``truncated``; plus the registered features named in ``extra`` (a method module registers its own,
    e.g. ADORA's criterion).
    """
    mean, std = group_stats(rewards, group_size)
    succ_rate, _ = group_stats(success.float(), group_size)
    base = {
        "reward": rewards.float(),
        "group_mean": mean,
        "group_std": std,
        "group_success": succ_rate,
        "success": success.bool(),
        "length": lengths.long(),
        "truncated": truncated.bool(),
    }
    for name in sorted(extra):
        if name not in base:
            base[name] = FEATURES[name](base, group_size)
    return base
