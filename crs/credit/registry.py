"""The batch a credit step sees (:class:`CreditBatch`) and the registry of steps (:func:`register_credit`).

A credit step is a pure function ``fn(batch: CreditBatch, **args) -> CreditBatch``; registering it
under a name makes it usable in ``method.credit`` (see :mod:`crs.credit`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from crs.ranges import parse_ranges


@dataclass(frozen=True)
class CreditBatch:
    """One micro-batch as credit steps see it (B completions, T completion positions).

    Attributes:
        advantages: ``[B]`` sequence advantages (TRL's group-normalised ones to start with) or ``[B,T]``.
        mask: ``[B,T]`` float, 1 on tokens in the objective (completion tokens after the mask phase).
        token_weights: ``[B,T]`` policy-gradient weights folded into the advantages, or ``None`` (= 1).
        renormalize: when True the loss is a mean over ``Σ token_weights`` instead of ``Σ mask``.
        features: per-row tensors ``[B]`` computed on the whole rollout group at generation time
            (``reward``, ``group_mean``, ``group_std``, ``group_success``, ``length``, ``truncated``,
            plus method features such as ``adora_tas``), and per-token tensors ``[B,T]`` produced at
            rollout time by the step substrate (``crs.steps``: ``pure_adv``, ``decisive``, ...).
        entropies: ``[B,T]`` detached token entropies of the policy (advantage phase only).
        logps: ``[B,T]`` detached token log-probs of the policy (advantage phase only).
    """

    advantages: Tensor
    mask: Tensor
    token_weights: Tensor | None = None
    renormalize: bool = False
    features: Mapping[str, Tensor] = field(default_factory=dict)
    entropies: Tensor | None = None
    logps: Tensor | None = None

    def replace(self, **changes: Any) -> CreditBatch:
        return dataclasses.replace(self, **changes)

    @property
    def lengths(self) -> Tensor:
        """``[B]`` number of tokens in the objective per row."""
        return self.mask.sum(-1)

    def token_advantages(self) -> Tensor:
        """Advantages broadcast to ``[B,T]`` (zero outside the mask)."""
        adv = self.advantages if self.advantages.dim() == 2 else self.advantages.unsqueeze(1)
        return adv.expand_as(self.mask) * self.mask


@dataclass(frozen=True)
class CreditStep:
    name: str
    fn: Callable[..., CreditBatch]
    phase: str  # "mask" | "advantage"
    features: tuple[str, ...] = ()
    needs_entropies: bool = False
    doc: str = ""
    ranges: Mapping[str, Any] = field(default_factory=dict)  # argument -> crs.ranges.Interval
    token_features: tuple[str, ...] = ()


CREDIT: dict[str, CreditStep] = {}


def register_credit(
    name: str,
    *,
    phase: str = "advantage",
    features: tuple[str, ...] = (),
    needs_entropies: bool = False,
    ranges: Mapping[str, str] | None = None,
    token_features: tuple[str, ...] = (),
):
    """Decorator: register a pure credit step ``fn(batch: CreditBatch, **args) -> CreditBatch``.

    Args:
        name: the key used in ``method.credit``.
        phase: ``"mask"`` (may only change ``batch.mask``; runs before the forward pass) or
            ``"advantage"`` (may change advantages / token weights; runs inside the loss).
        features: per-row rollout features the step reads from ``batch.features``.
        needs_entropies: the step reads ``batch.entropies``.
        ranges: accepted interval of numeric arguments, e.g. ``{"keep_fraction": "[0, 1]"}``
            (:mod:`crs.ranges`); checked up front for configured values and, for a driven knob, for
            its ``neutral`` value too (the knob moves between the two as ρ goes from 0 to 1).
        token_features: per-token ``[B,T]`` tensors the step reads from ``batch.features``, produced once
            per rollout by :class:`crs.steps.hook.StepHook` (absent outside training: the step must then
            leave the batch unchanged).
    """
    if phase not in ("mask", "advantage"):
        raise ValueError(f"phase must be 'mask' or 'advantage', got {phase!r}")
    if phase == "mask" and needs_entropies:
        raise ValueError("mask-phase steps run before the forward pass and cannot read entropies")

    def deco(fn):
        if name in CREDIT and CREDIT[name].fn is not fn:
            raise ValueError(f"credit step {name!r} is already registered")
        allowed = [p for p in inspect.signature(fn).parameters if p != "batch"]
        CREDIT[name] = CreditStep(
            name,
            fn,
            phase,
            tuple(features),
            needs_entropies,
            inspect.getdoc(fn) or "",
            parse_ranges(dict(ranges or {}), allowed, f"credit step {name!r}"),
            tuple(token_features),
        )
        return fn

    return deco
