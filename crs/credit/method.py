"""The method interface: what a credit method is, and the batch its loss-time step sees.

A credit method decides which tokens, steps or turns get the learning signal and how much. Each one is
**one module** of :mod:`crs.methods` that ends with a :class:`Method`: its loss-time step (a pure
function ``fn(batch: CreditBatch, **args) -> CreditBatch``, verl ``core_algos`` style), its arguments
(the step's keyword defaults, with a help text and a declared range each), and the hooks it needs. The
trainers call hooks, never a method by name, so a new method plugs in without touching them::

    def my_step(batch: CreditBatch, strength: float = 1.0) -> CreditBatch:
        \"\"\"My method (arXiv ...): scale every advantage by ``strength``.\"\"\"
        return batch.replace(advantages=batch.advantages * strength)

    METHOD = Method(
        "my_method", my_step,
        help={"strength": "scale of the advantages; 1 = GRPO"}, ranges={"strength": "[0, inf)"},
    )

Hooks (all optional; ``None`` = the method does not need it):

===================  ==================================================================================
``phase``            ``mask`` (the step decides which tokens are in the objective, before the forward
                     pass) or ``advantage`` (it reshapes advantages / token weights inside the loss)
``produce``          step substrate (:mod:`crs.steps`): per-token tensors from scored reasoning steps,
                     run once per rollout on the whole batch
``turn_credit``      turn substrate (:mod:`crs.envs`): ``[N,K]`` turn advantages (and clip scales)
``turn_prepare``     extra per-turn quantities the turn credit needs (A²TGPO's information gain)
``verifier_cut``     what the verifier sees: the fraction of each completion withheld from it
``rollouts``         builds an object that generates the training rollouts itself (R³L's retries)
``check``            config-time checks beyond the declared ranges (one :class:`ConfigError` line)
===================  ==================================================================================

Declarations the trainers read: ``trainers`` (which crs trainer kinds can run it), ``benchmarks``
(``single_turn`` and/or ``multi_turn``), ``one_process`` (why it refuses several processes), ``features``
/ ``token_features`` (rollout tensors it reads), ``needs_entropies``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from crs.ranges import Interval, parse_ranges

BENCHMARK_KINDS = ("single_turn", "multi_turn")


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
            rollout time by a substrate (``crs.steps``: ``pure_adv``, ``decisive``, ...).
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
class Method:
    """A credit method: a loss-time step, its declared arguments, and the hooks it needs (module docstring).

    Args:
        name: the key in ``method.credit`` (and the module's name in :mod:`crs.methods`).
        fn: the step ``fn(batch, **args) -> CreditBatch``; its keyword defaults are the arguments' defaults.
        help: one help text per argument (the paper, the trade-off).
        ranges: accepted interval of each numeric argument (:mod:`crs.ranges`), checked at config time;
            for a driven knob its ``neutral`` value is checked too.
        phase: ``"mask"`` or ``"advantage"``.
        substrate: ``tokens`` | ``steps`` | ``turns`` — what the method assigns credit to (for docs/listing).
        trainers: crs trainer kinds that can run it (``trainer.kind``; :mod:`crs.trainers`).
        benchmarks: ``single_turn`` and/or ``multi_turn`` benchmarks it runs on.
        one_process: why it refuses ``WORLD_SIZE > 1`` (``None`` = any number of processes).
        features: per-row rollout features it reads (:mod:`crs.credit.features`).
        token_features: per-token ``[B,T]`` rollout tensors it reads (absent outside training rollouts:
            the step must then leave the batch unchanged).
        needs_entropies: the step reads ``batch.entropies``.
        produce / turn_credit / turn_prepare / verifier_cut / rollouts / check: hooks (module docstring).
    """

    name: str
    fn: Callable[..., CreditBatch]
    help: Mapping[str, str] = field(default_factory=dict)
    ranges: Mapping[str, Any] = field(default_factory=dict)
    phase: str = "advantage"
    substrate: str = "tokens"
    trainers: tuple[str, ...] = ("grpo",)
    benchmarks: tuple[str, ...] = BENCHMARK_KINDS
    one_process: str | None = None
    features: tuple[str, ...] = ()
    token_features: tuple[str, ...] = ()
    needs_entropies: bool = False
    produce: Callable[..., dict[str, Tensor]] | None = None
    turn_credit: Callable[..., Any] | None = None
    turn_prepare: Callable[..., None] | None = None
    verifier_cut: Callable[[Mapping[str, Any]], float | None] | None = None
    rollouts: Callable[..., Any] | None = None
    check: Callable[[Any, Mapping[str, Any]], None] | None = None

    def __post_init__(self) -> None:
        if self.phase not in ("mask", "advantage"):
            raise ValueError(f"method {self.name}: phase must be 'mask' or 'advantage', got {self.phase!r}")
        if self.phase == "mask" and self.needs_entropies:
            raise ValueError(
                f"method {self.name}: mask-phase steps run before the forward pass (no entropies)"
            )
        bad = set(self.benchmarks) - set(BENCHMARK_KINDS)
        if bad:
            raise ValueError(
                f"method {self.name}: benchmarks must be among {BENCHMARK_KINDS}, got {sorted(bad)}"
            )
        names = self.arg_names
        unknown = set(self.help) - set(names)
        if unknown:
            raise ValueError(
                f"method {self.name}: help for {sorted(unknown)}, which are not arguments ({names})"
            )
        object.__setattr__(self, "ranges", parse_ranges(dict(self.ranges), names, f"method {self.name!r}"))

    # -- arguments -----------------------------------------------------------------------------------
    @property
    def arg_names(self) -> list[str]:
        return [p for p in inspect.signature(self.fn).parameters if p != "batch"]

    @property
    def defaults(self) -> dict[str, Any]:
        params = inspect.signature(self.fn).parameters
        return {
            p: params[p].default for p in self.arg_names if params[p].default is not inspect.Parameter.empty
        }

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.fn) or ""

    def args_dataclass(self) -> type:
        """The arguments as a dataclass (defaults, ``help`` and ``range`` in each field's metadata)."""
        params = inspect.signature(self.fn).parameters
        spec = []
        for p in self.arg_names:
            meta = {"help": self.help.get(p, ""), "range": str(self.ranges.get(p, "")) or None}
            default = params[p].default
            kw = {"metadata": meta}
            if default is not inspect.Parameter.empty:
                kw["default"] = default
            spec.append((p, params[p].annotation, field(**kw)))
        return dataclasses.make_dataclass(f"{self.name}_args", spec, frozen=True)

    def range_of(self, arg: str) -> Interval | None:
        return self.ranges.get(arg)
