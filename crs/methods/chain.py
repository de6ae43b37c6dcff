"""The chain a method config describes: ``method.credit`` validated up front, knobs driven by ρ, the
mask phase before the forward pass and the advantage phase inside the loss.

Two phases, because they act on different parts of TRL's loss:

``mask`` phase (before the policy forward pass)
    Steps that decide which tokens are *in the objective* at all (TP-Schedule's trained suffix). The
    result goes into TRL's loss-only ``tool_mask``: excluded tokens stay in the context but get no policy
    gradient, no KL term and do not count in the loss normaliser or GSPO's sequence ratio.
``advantage`` phase (inside the loss, once the policy's entropies exist)
    Steps that reshape advantages — per sequence ``[B]`` or per token ``[B,T]`` — or put per-token
    policy-gradient weights on them (forking tokens), folded into the advantage
    (:func:`crs.credit.primitives.fold_token_weights`).

A schedule value ``ρ`` drives one numeric argument of a step through its ``drive`` entry::

    credit:
      forking_tokens:
        keep_fraction: 0.0                            # full-strength value ("on")
        drive: {knob: keep_fraction, neutral: 1.0}    # keep_fraction = neutral + (value − neutral)·ρ

so ``ρ = 1`` is the configured criterion and ``ρ = 0`` the neutral value, where the step is plain GRPO.
The chain is built once per run (:func:`crs.config.validate` builds it and the run reuses it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from crs.credit.features import rollout_features
from crs.credit.method import CreditBatch, Method
from crs.errors import ConfigError
from crs.ranges import check_range


def _methods() -> Mapping[str, Method]:
    from crs.methods import METHODS

    return METHODS


@dataclass
class _Planned:
    method: Method
    args: dict[str, Any]
    drive: dict[str, Any] | None


class CreditChain:
    """An ordered list of credit steps built from ``method.credit`` (validated up front).

    Example::

        chain = CreditChain({"tp_schedule": {"withhold": 1.0, "drive": {"knob": "withhold", "neutral": 0.0}}})  # noqa: E501
        mask = chain.mask_phase(batch, rho=0.5)
    """

    built = 0  # how many chains this process built (tests count: one per run)

    def __init__(self, credit: Mapping[str, Any] | None, methods: Mapping[str, Method] | None = None):
        methods = _methods() if methods is None else methods
        CreditChain.built += 1
        self.steps: list[_Planned] = []
        for name, spec in dict(credit or {}).items():
            if name not in methods:
                raise ConfigError(
                    f"method.credit: unknown step {name!r}; known: {', '.join(sorted(methods))}"
                )
            step = methods[name]
            spec = dict(spec or {})
            drive = spec.pop("drive", None)
            drive = dict(drive) if drive is not None else None
            allowed = step.arg_names
            for key in spec:
                if key not in allowed:
                    raise ConfigError(
                        f"method.credit.{name}: unknown argument {key!r}; accepted: {', '.join(allowed)}"
                    )
            args = step.defaults
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
        return {f for p in self.steps for f in p.method.features}

    @property
    def token_features(self) -> set[str]:
        return {f for p in self.steps for f in p.method.token_features}

    @property
    def has_mask_phase(self) -> bool:
        return any(p.method.phase == "mask" for p in self.steps)

    @property
    def has_advantage_phase(self) -> bool:
        return any(p.method.phase == "advantage" for p in self.steps)

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
            f"{p.method.name}/{p.drive['knob']}": a[p.drive["knob"]] for p, a in self.args_at(rho) if p.drive
        }

    def verifier_cut(self, rho: float) -> float | None:
        """The fraction of each completion to withhold from the verifier (a method's ``verifier_cut`` hook)."""
        for p, args in self.args_at(rho):
            if p.method.verifier_cut is not None:
                cut = p.method.verifier_cut(args)
                if cut is not None:
                    return cut
        return None

    def hooked(self, hook: str, rho: float = 1.0) -> list[tuple[Method, dict[str, Any]]]:
        """``(method, args at ρ)`` of every step that has ``hook`` (e.g. ``produce``, ``turn_credit``)."""
        return [(p.method, a) for p, a in self.args_at(rho) if getattr(p.method, hook) is not None]

    @property
    def methods(self) -> list[Method]:
        return [p.method for p in self.steps]

    def check_run(self, cfg: Any) -> None:
        """What each method declares about where it runs, against this run's config (one error line):
        the trainer kind, single- or multi-turn benchmark, several processes, and its own ``check``."""
        import os

        from crs.benchmarks import is_multi_turn

        kind = cfg.trainer.get("kind", "grpo")
        bench = "multi_turn" if is_multi_turn(cfg.benchmark.name) else "single_turn"
        world = int(os.environ.get("WORLD_SIZE", "1"))  # set by accelerate launch / torchrun / crs on SLURM
        for p in self.steps:
            m = p.method
            if kind not in m.trainers:
                raise ConfigError(
                    f"method {m.name} runs on trainer.kind={'|'.join(m.trainers)}, not trainer.kind={kind}"
                )
            if bench not in m.benchmarks:
                if bench == "single_turn":
                    raise ConfigError(
                        f"method {m.name} assigns credit to turns of a multi-turn environment; benchmark="
                        f"{cfg.benchmark.name} is single-turn (use benchmark=maze or benchmark=calc_tool)"
                    )
                raise ConfigError(
                    f"method {m.name} runs on single-turn benchmarks; benchmark={cfg.benchmark.name} is a "
                    "multi-turn environment, where the step level is the turn (step and turn methods there: "
                    + ", ".join(
                        sorted(
                            n
                            for n, x in _methods().items()
                            if "multi_turn" in x.benchmarks and x.substrate != "tokens"
                        )
                    )
                    + ")"
                )
            if world > 1 and m.one_process:
                raise ConfigError(
                    f"method {m.name} runs on one process for now (WORLD_SIZE={world}): {m.one_process}"
                )
            if m.check is not None:
                m.check(cfg, p.args)

    # -- application ---------------------------------------------------------------------------------
    def mask_phase(self, batch: CreditBatch, rho: float) -> Tensor:
        """Run the mask-phase steps in order; returns the ``[B,T]`` objective mask."""
        for p, args in self.args_at(rho):
            if p.method.phase == "mask":
                batch = p.method.fn(batch, **args)
        return batch.mask

    def advantage_phase(self, batch: CreditBatch, rho: float) -> CreditBatch:
        """Run the advantage-phase steps in order on a batch whose ``mask`` is final."""
        for p, args in self.args_at(rho):
            if p.method.phase == "advantage":
                if p.method.needs_entropies and batch.entropies is None:
                    raise RuntimeError(f"credit step {p.method.name} needs entropies")
                batch = p.method.fn(batch, **args)
        return batch
