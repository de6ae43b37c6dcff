"""The chain a method config describes: ``method.credit`` validated up front, knobs driven by ρ, the
mask phase before the forward pass and the advantage phase inside the loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from crs.credit.features import rollout_features
from crs.credit.registry import CREDIT, CreditBatch, CreditStep
from crs.errors import ConfigError
from crs.ranges import check_range


@dataclass
class _Planned:
    step: CreditStep
    args: dict[str, Any]
    drive: dict[str, Any] | None


class CreditChain:
    """An ordered list of credit steps built from ``method.credit`` (validated up front).

    Example::

        chain = CreditChain({"tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}})
        mask = chain.mask_phase(batch, rho=0.5)
    """

    def __init__(self, credit: Mapping[str, Any] | None):
        self.steps: list[_Planned] = []
        for name, spec in dict(credit or {}).items():
            if name not in CREDIT:
                raise ConfigError(f"method.credit: unknown step {name!r}; known: {', '.join(sorted(CREDIT))}")
            step = CREDIT[name]
            spec = dict(spec or {})
            drive = spec.pop("drive", None)
            drive = dict(drive) if drive is not None else None
            params = inspect.signature(step.fn).parameters
            allowed = [p for p in params if p != "batch"]
            for key in spec:
                if key not in allowed:
                    raise ConfigError(
                        f"method.credit.{name}: unknown argument {key!r}; accepted: {', '.join(allowed)}"
                    )
            args = {p: params[p].default for p in allowed if params[p].default is not inspect.Parameter.empty}
            args.update(spec)
            if drive is not None:
                if set(drive) - {"knob", "neutral"} or "knob" not in drive:
                    raise ConfigError(
                        f"method.credit.{name}.drive must be {{knob: <argument>, neutral: <value at ρ=0>}}, got {drive}"
                    )
                if drive["knob"] not in allowed:
                    raise ConfigError(
                        f"method.credit.{name}.drive.knob: {drive['knob']!r} is not an argument of {name} "
                        f"({', '.join(allowed)})"
                    )
                if not isinstance(args.get(drive["knob"]), int | float) or isinstance(
                    args.get(drive["knob"]), bool
                ):
                    raise ConfigError(f"method.credit.{name}.drive.knob {drive['knob']!r} must be numeric")
                if drive["knob"] in step.ranges:
                    check_range(
                        f"method.credit.{name}.drive.neutral",
                        drive.get("neutral", 0.0),
                        step.ranges[drive["knob"]],
                    )
            for key, interval in step.ranges.items():
                if key in args:
                    check_range(f"method.credit.{name}.{key}", args[key], interval)
            self.steps.append(_Planned(step, args, drive))
        self._dry_run()

    def _dry_run(self) -> None:
        """Run every step once on a tiny synthetic batch, so bad argument *values* fail at config time."""
        if not self.steps:
            return
        feats = rollout_features(
            torch.tensor([1.0, 0.0]),
            torch.tensor([True, False]),
            torch.tensor([3, 2]),
            torch.tensor([False, False]),
            2,
            self.features,
        )
        feats.update({name: torch.zeros(2, 3) for name in self.token_features})
        batch = CreditBatch(
            advantages=torch.tensor([0.5, -0.5]),
            mask=torch.tensor([[1.0, 1, 1], [1, 1, 0]]),
            features=feats,
            # a private generator: validating a method must not move the run's RNG (same seed ⇒ the same
            # start evaluation and first rollout whatever the method, so grid cells stay paired)
            entropies=torch.rand(2, 3, generator=torch.Generator().manual_seed(0)),
            logps=-torch.rand(2, 3, generator=torch.Generator().manual_seed(1)),
        )
        for rho in (0.0, 1.0):
            try:
                self.advantage_phase(batch.replace(mask=self.mask_phase(batch, rho)), rho)
            except ConfigError:
                raise
            except Exception as err:  # a value the math cannot take (e.g. a negative exponent base)
                raise ConfigError(f"method.credit: {type(err).__name__}: {err}") from None

    # -- introspection -------------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        return not self.steps

    @property
    def features(self) -> set[str]:
        return {f for p in self.steps for f in p.step.features}

    @property
    def token_features(self) -> set[str]:
        return {f for p in self.steps for f in p.step.token_features}

    @property
    def has_mask_phase(self) -> bool:
        return any(p.step.phase == "mask" for p in self.steps)

    @property
    def has_advantage_phase(self) -> bool:
        return any(p.step.phase == "advantage" for p in self.steps)

    def args_at(self, rho: float) -> list[tuple[_Planned, dict[str, Any]]]:
        """Arguments of every step with driven knobs set: ``knob = neutral + (value − neutral)·ρ``."""
        out = []
        for p in self.steps:
            args = dict(p.args)
            if p.drive is not None:
                value, neutral = float(args[p.drive["knob"]]), float(p.drive.get("neutral", 0.0))
                args[p.drive["knob"]] = neutral + (value - neutral) * rho
            out.append((p, args))
        return out

    def knobs(self, rho: float) -> dict[str, float]:
        """``{"<step>/<knob>": value}`` for driven knobs (logged every step)."""
        return {
            f"{p.step.name}/{p.drive['knob']}": a[p.drive["knob"]] for p, a in self.args_at(rho) if p.drive
        }

    def suffix_reward_withhold(self, rho: float) -> float | None:
        """The TP ``withhold`` to cut completions at for ``reward_on: suffix``, else ``None``."""
        for p, args in self.args_at(rho):
            if p.step.name == "tp_schedule" and args.get("reward_on") == "suffix":
                return float(args["withhold"])
        return None

    # -- application ---------------------------------------------------------------------------------
    def mask_phase(self, batch: CreditBatch, rho: float) -> Tensor:
        """Run the mask-phase steps in order; returns the ``[B,T]`` objective mask."""
        for p, args in self.args_at(rho):
            if p.step.phase == "mask":
                batch = p.step.fn(batch, **args)
        return batch.mask

    def advantage_phase(self, batch: CreditBatch, rho: float) -> CreditBatch:
        """Run the advantage-phase steps in order on a batch whose ``mask`` is final."""
        for p, args in self.args_at(rho):
            if p.step.phase == "advantage":
                if p.step.needs_entropies and batch.entropies is None:
                    raise RuntimeError(f"credit step {p.step.name} needs entropies")
                batch = p.step.fn(batch, **args)
        return batch
