"""What every crs environment records per step, so the credit chain can see turns.

TRL's ``environment_factory`` loop calls an environment's public methods as tools; it keeps no
per-step structure. A :class:`TurnEnv` logs one :class:`StepRecord` per tool call — the state *before*
the call (GiGPO's anchor), the call itself (MatchTIR's predicted call), whether it was valid and the
step reward — and the trainer reads ``trainer.environments[i].steps`` right after generation
(:mod:`crs.envs.turns`). Instances are pooled and reused by TRL, so ``reset`` clears the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepRecord:
    """One tool call (one environment step).

    Attributes:
        anchor: canonical observation/state string *before* the step (GiGPO anchor state).
        name: tool name called.
        args: the call's arguments as parsed by TRL.
        valid: the call was a legal action (known tool, well-typed, episode not over).
        reward: the step reward ``r_t``.
        info: anything else (e.g. the tool's result).
    """

    anchor: str
    name: str
    args: dict[str, Any]
    valid: bool
    reward: float
    info: dict[str, Any] = field(default_factory=dict)


class TurnEnv:
    """Base class: ``reset`` clears the step log; tools call :meth:`_log`. Private helpers start with ``_``
    or are properties, so TRL does not expose them as tools."""

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []
        self.moves = 0
        self.success = False
        self.row: dict[str, Any] = {}

    def reset(self, **row: Any) -> str | None:
        self.steps = []
        self.moves = 0
        self.success = False
        self.row = dict(row)
        return None

    def _observation(self) -> str:
        """The current observation as an anchor string (a text-only turn's anchor)."""
        return f"step{len(self.steps)}"

    def _log(self, record: StepRecord) -> None:
        self.steps.append(record)
