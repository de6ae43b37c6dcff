"""TP-Schedule (arXiv 2605.25381, "Not only where, But when"): train only the tail of each response.

``withhold`` is the fraction of each response kept out of the objective (the trained suffix is the last
``1 − withhold``); a schedule drives it (``drive: {knob: withhold, neutral: 0.0}``), fixed per rollout.
The excluded prefix stays in the context but gets no gradient (TRL's loss-only ``tool_mask``), as if it
had been moved into the prompt, which is what the authors' verl code does::

    crs train method=tp_schedule schedule=linear
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crs.credit.method import CreditBatch, Method
from crs.credit.primitives import tp_suffix_mask
from crs.errors import ConfigError


def tp_schedule(batch: CreditBatch, withhold: float = 1.0, reward_on: str = "suffix") -> CreditBatch:
    """TP-Schedule (arXiv 2605.25381): train only the tail ``1 − withhold`` of each response.

    ``withhold`` is ``ρ`` when driven (``drive: {knob: withhold, neutral: 0.0}``), fixed per rollout.
    ``reward_on`` is read at rollout time (:func:`verifier_cut`): ``suffix`` (default) scores only the
    trained tail — the released code moves the prefix into the prompt and its reward manager decodes only
    the response (``agent_loop.py:667-687``, ``reward_manager/naive.py:37-56``); ``full`` scores the whole
    completion (the paper's prose). Evaluation never cuts (``agent_loop.py:654``).
    """
    if reward_on not in ("full", "suffix"):
        raise ConfigError(f"tp_schedule.reward_on must be 'full' or 'suffix', got {reward_on!r}")
    lengths = batch.features["length"] if "length" in batch.features else batch.lengths
    return batch.replace(mask=batch.mask * tp_suffix_mask(lengths, batch.mask.shape[1], withhold))


def verifier_cut(args: Mapping[str, Any]) -> float | None:
    """With ``reward_on: suffix`` the verifier sees only the trained tail: withhold this fraction from it."""
    return float(args["withhold"]) if args.get("reward_on") == "suffix" else None


METHOD = Method(
    "tp_schedule",
    tp_schedule,
    help={
        "withhold": "Fraction of each response kept out of the objective (prefix); 0 = GRPO. The paper "
        "anneals it from 0.99 to 0 (schedule=linear); the authors' clock counts rollouts from 1.",
        "reward_on": "suffix: the verifier scores only the trained tail (released code); full: the whole "
        "completion (the paper's prose). Evaluation always scores the full completion.",
    },
    ranges={"withhold": "[0, 1]"},
    phase="mask",
    verifier_cut=verifier_cut,
)
