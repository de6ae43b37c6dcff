"""Credit-assignment methods as pure tensor functions, composed into a chain, driven by a schedule.

A *credit method* decides which tokens, sequences or groups get the learning signal and how much.
Each method here is a pure function over a :class:`CreditBatch` (tensors in, tensors out, no trainer
inside), registered by name with :func:`register_credit` — the verl ``core_algos`` pattern. A method
config (``conf/method/*.yaml``) is an ordered mapping ``credit: {step_name: {args..., drive: ...}}``
that the trainer applies in order, so methods compose where the papers compose them
(TP-Schedule on GSPO, a scheduled forking-token mask on DAPO, ...).

Two phases, because they act on different parts of TRL's loss:

``mask`` phase (before the policy forward pass)
    Steps that decide which tokens are *in the objective* at all (TP-Schedule's trained suffix).
    The result goes into TRL's loss-only ``tool_mask``: excluded tokens stay in the context
    (``completion_mask`` is never touched, TRL also uses it as the attention mask) but get no policy
    gradient, no KL term and do not count in the loss normaliser or GSPO's sequence ratio — exactly
    as if the prefix had been moved into the prompt, which is what the authors' verl code does.

``advantage`` phase (inside the loss, once the policy's entropies exist)
    Steps that reshape advantages — per sequence ``[B]`` or per token ``[B,T]`` — or put per-token
    policy-gradient weights on them (forking tokens). Weights ``w ≥ 0`` are folded into the advantage
    (``−min(r·wA, clip(r)·wA) = w·ℓ``), optionally renormalised so the loss is a mean over the
    *selected* tokens as the 80/20 authors' code does (:func:`fold_token_weights`).

A schedule value ``ρ`` drives one numeric argument of a step through its ``drive`` entry::

    credit:
      forking_tokens:
        keep_fraction: 0.0                            # full-strength value ("on")
        drive: {knob: keep_fraction, neutral: 1.0}    # keep_fraction = neutral + (value − neutral)·ρ = 1 − ρ

so ``ρ = 1`` is the configured full-strength criterion and ``ρ = 0`` the neutral value, where the
step reduces to plain GRPO.

Adding a method = one function here + one yaml in ``conf/method/`` + one golden test::

    crs train method=forking_tokens schedule=linear
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from crs.errors import ConfigError
from crs.ranges import check_range, parse_ranges

# ---------------------------------------------------------------------------------------------------
# the batch a credit step sees


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


# ---------------------------------------------------------------------------------------------------
# pure tensor functions (the math; each one has a golden test in tests/test_credit.py)


def tp_suffix_mask(lengths: Tensor, T: int, withhold: float) -> Tensor:
    """TP-Schedule's trained window: the tail of each response.

    ``c_i = min(floor(L_i·withhold), L_i − 1)``; tokens ``t ∈ [c_i, L_i)`` are trained, so at least the
    last token always is (RLVR-Schedule ``agent_loop.py``).

    Args:
        lengths: ``[B]`` response lengths ``L_i`` (tokens, EOS included).
        T: padded completion width.
        withhold: ``ρ`` ∈ [0, 1], the withheld prefix fraction.

    Returns:
        ``[B,T]`` float mask.
    """
    L = lengths.to(torch.float64)
    cut = torch.minimum(torch.floor(L * float(withhold)), L - 1)
    t = torch.arange(T, dtype=torch.float64, device=lengths.device).unsqueeze(0)
    return ((t >= cut.unsqueeze(1)) & (t < L.unsqueeze(1))).to(torch.float32)


def tp_prefix_cut(lengths: Tensor, withhold: float) -> Tensor:
    """``[B]`` long: ``c_i``, the number of withheld prefix tokens (for ``reward_on: suffix``)."""
    L = lengths.to(torch.float64)
    return torch.minimum(torch.floor(L * float(withhold)), L - 1).clamp(min=0).long()


def top_entropy_mask(
    entropies: Tensor, mask: Tensor, keep_fraction: float, selection: str = "per_sequence"
) -> Tensor:
    """High-entropy ("forking") token selection.

    Args:
        entropies: ``[B,T]`` token entropies.
        mask: ``[B,T]`` 1 on candidate tokens.
        keep_fraction: fraction of tokens kept (the 80/20 paper: 0.2).
        selection:
            ``per_sequence`` — top ``k_i = ceil(L_i·keep)`` tokens of each response, computed in float32
            (RLVR-Schedule's scheduled forking-token baseline, ``compute_entropy_topk_response_mask``);
            ``batch_topk`` — top ``k = max(1, int(keep·|S| + 0.9999))`` over all valid tokens ``S`` of the
            micro-batch (the 80/20 authors' ``get_global_entropy_top_mask``; with several processes the
            trainer pools ``S`` over all of them);
            ``batch_quantile`` — ``H ≥ quantile(H_S, 1 − keep)`` (TRL's ``top_entropy_quantile``).

    Returns:
        ``[B,T]`` float 0/1 selection, zero outside ``mask``.
    """
    valid = mask > 0
    H = entropies.detach().float()
    if selection == "per_sequence":
        # float32, as the authors' ``(n.float() * r).ceil()`` (RLVR-Schedule ray_trainer.py:150): in float64
        # ρ = 0.99, L = 100 gives k = 2 instead of their 1
        r = min(max(float(keep_fraction), 0.0), 1.0)
        k = (valid.sum(-1).to(torch.float32) * r).ceil().long()  # [B]
        # rank tokens inside each row by entropy; invalid tokens go last
        scores = H.masked_fill(~valid, float("-inf"))
        order = scores.argsort(dim=-1, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks.scatter_(-1, order, torch.arange(H.shape[-1], device=H.device).expand_as(order))
        return ((ranks < k.unsqueeze(1)) & valid).float()
    flat = H[valid]
    if flat.numel() == 0:
        return torch.zeros_like(H)
    if selection == "batch_topk":
        # the 80/20 authors' count: max(1, int(n·r + 0.9999)) (get_global_entropy_top_mask); keep = 0 selects none
        if keep_fraction <= 0:
            return torch.zeros_like(H)
        k = min(max(1, int(flat.numel() * keep_fraction + 0.9999)), flat.numel())
        thr = flat.topk(k).values[-1]
        sel = valid & (H >= thr)
        # ties at the threshold could exceed k; keep exactly the first k in row-major order of rank
        if int(sel.sum()) > k:
            scores = H.masked_fill(~valid, float("-inf")).flatten()
            idx = scores.argsort(descending=True, stable=True)[:k]
            sel = torch.zeros_like(scores, dtype=torch.bool)
            sel[idx] = True
            sel = sel.view_as(H)
        return sel.float()
    if selection == "batch_quantile":
        thr = torch.quantile(flat, 1.0 - keep_fraction)
        return (valid & (H >= thr)).float()
    raise ConfigError(
        f"forking_tokens.selection must be per_sequence, batch_topk or batch_quantile, got {selection!r}"
    )


def entropy_shaped_advantages(
    advantages: Tensor, entropies: Tensor, mask: Tensor, alpha: float, kappa: float, strength: float
) -> Tensor:
    """Cheng et al. (arXiv 2506.14758): ``A' = (A + s·min(α·H.detach(), |A|/κ))·mask``.

    The clip at ``|A|/κ`` (κ > 1) keeps the sign of ``A``; ``s`` is the schedulable strength
    (RLVR-Schedule's ``apply_entropy_soft_weight_to_advantage`` uses ``s = ρ``).

    Args:
        advantages: ``[B]`` or ``[B,T]``.
        entropies: ``[B,T]``.
        mask: ``[B,T]``.
    Returns:
        ``[B,T]`` per-token advantages.
    """
    A = advantages if advantages.dim() == 2 else advantages.unsqueeze(1).expand_as(mask)
    bonus = torch.minimum(alpha * entropies.detach().float(), A.abs() / kappa)
    return (A + strength * bonus) * mask


def group_stats(values: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Per-row mean and (Bessel-corrected, like TRL's ``nanstd``) std of contiguous groups.

    Args:
        values: ``[N]`` with ``N = n_groups·group_size``, groups contiguous (TRL's gathered order).
    Returns:
        ``(mean[N], std[N])`` broadcast back to rows.
    """
    g = values.float().view(-1, group_size)
    mean = g.mean(1)
    std = g.std(1, unbiased=True) if group_size > 1 else torch.zeros_like(mean)
    return mean.repeat_interleave(group_size), std.repeat_interleave(group_size)


def adora_advantageous(success: Tensor, lengths: Tensor, truncated: Tensor, group_size: int) -> Tensor:
    """ADORA's length criterion (``compute_grpo_outcome_advantage_ADORA``): is a group advantageous?

    As the released code (``ADORA/verl/trainer/ppo/core_algos.py:150-179``): ``max_pos`` is the longest
    correct response (``−inf`` when none is correct), ``mean_neg`` the mean length of the incorrect,
    non-truncated ones (``−inf`` when there are none); the group is advantageous iff
    ``max_pos > mean_neg``. So a group with **no correct answer is scaled by λ** (``−inf > x`` is
    false), and a group whose incorrect answers are all truncated keeps weight 1.

    Args:
        success: ``[N]`` bool, the verifier's verdict.
        lengths: ``[N]`` response lengths.
        truncated: ``[N]`` bool, hit ``max_completion_length`` without EOS (the code's length threshold).
    Returns:
        ``[N]`` bool, broadcast per row.
    """
    ok = success.bool().view(-1, group_size)
    L = lengths.float().view(-1, group_size)
    wrong = (~ok) & (~truncated.bool().view(-1, group_size))
    neg_inf = torch.full_like(L[:, 0], float("-inf"))
    max_pos = torch.where(ok.any(1), L.masked_fill(~ok, float("-inf")).max(1).values, neg_inf)
    n_wrong = wrong.sum(1)
    mean_neg = torch.where(n_wrong > 0, (L * wrong).sum(1) / n_wrong.clamp(min=1), neg_inf)
    return (max_pos > mean_neg).repeat_interleave(group_size)


def fold_token_weights(
    advantages: Tensor, weights: Tensor, mask: Tensor, loss_type: str, renormalize: bool
) -> Tensor:
    """Fold per-token weights into advantages so TRL's loss becomes the weighted objective.

    TRL multiplies advantages into ``−min(r·A, clip(r)·A)`` and divides by ``Σ mask`` (per sequence
    for ``grpo``/``sapo``, per micro-batch otherwise). With ``w ≥ 0``, ``A·w`` gives ``w·ℓ``. When
    ``renormalize`` the result is rescaled so the normaliser becomes ``Σ w`` — the mean over selected
    tokens (80/20 official code: ``agg_loss(mask=response_mask·M, "token-mean")``). ``dapo``'s global
    token count is rescaled per micro-batch (exact when ``gradient_accumulation_steps = 1``).

    Args:
        advantages: ``[B]`` or ``[B,T]``.
        weights: ``[B,T]`` ≥ 0.
        mask: ``[B,T]`` TRL's loss mask (``completion_mask·tool_mask``).
        loss_type: TRL ``loss_type``.
        renormalize: divide by ``Σ w`` instead of ``Σ mask``.
    Returns:
        ``[B,T]`` advantages.
    """
    A = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)
    w = weights * mask
    out = A * w
    if not renormalize:
        return out
    if loss_type in ("grpo", "sapo"):
        factor = mask.sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp(min=1e-12)
        factor = torch.where(w.sum(-1, keepdim=True) > 0, factor, torch.zeros_like(factor))
    else:
        total = w.sum()
        factor = mask.sum() / total if total > 0 else torch.zeros((), device=w.device)
    return out * factor


# ---------------------------------------------------------------------------------------------------
# registered steps (thin adapters from CreditBatch to the math above)


@register_credit("tp_schedule", phase="mask", ranges={"withhold": "[0, 1]"})
def tp_schedule(batch: CreditBatch, withhold: float = 1.0, reward_on: str = "suffix") -> CreditBatch:
    """TP-Schedule (arXiv 2605.25381): train only the tail ``1 − withhold`` of each response.

    ``withhold`` is ``ρ`` when driven (``drive: {knob: withhold, neutral: 0.0}``), fixed per rollout.
    ``reward_on`` is read by the trainer at rollout time: ``suffix`` (default) scores only the trained
    tail — the released code moves the prefix into the prompt and its reward manager decodes only the
    response (``agent_loop.py:667-687``, ``reward_manager/naive.py:37-56``); ``full`` scores the whole
    completion (the paper's prose). Evaluation never cuts (``agent_loop.py:654``).
    """
    if reward_on not in ("full", "suffix"):
        raise ConfigError(f"tp_schedule.reward_on must be 'full' or 'suffix', got {reward_on!r}")
    lengths = batch.features["length"] if "length" in batch.features else batch.lengths
    return batch.replace(mask=batch.mask * tp_suffix_mask(lengths, batch.mask.shape[1], withhold))


@register_credit("forking_tokens", needs_entropies=True, ranges={"keep_fraction": "[0, 1]"})
def forking_tokens(
    batch: CreditBatch,
    keep_fraction: float = 0.2,
    selection: str = "batch_topk",
    normalize: str = "selected",
) -> CreditBatch:
    """High-entropy minority tokens (Wang et al., arXiv 2506.01939): gradient only on forking tokens.

    ``normalize: selected`` divides the loss by the number of selected tokens (official code);
    ``normalize: all_tokens`` keeps TRL's normaliser and equals TRL's ``top_entropy_quantile`` with
    ``selection: batch_quantile``.
    """
    if normalize not in ("selected", "all_tokens"):
        raise ConfigError(f"forking_tokens.normalize must be 'selected' or 'all_tokens', got {normalize!r}")
    sel = top_entropy_mask(batch.entropies, batch.mask, keep_fraction, selection)
    w = sel if batch.token_weights is None else batch.token_weights * sel
    return batch.replace(token_weights=w, renormalize=batch.renormalize or normalize == "selected")


@register_credit(
    "entropy_adv",
    needs_entropies=True,
    ranges={"alpha": "[0, inf)", "kappa": "(0, inf)", "strength": "[0, inf)"},
)
def entropy_adv(
    batch: CreditBatch, alpha: float = 0.4, kappa: float = 2.0, strength: float = 1.0
) -> CreditBatch:
    """Entropy-shaped advantages (Cheng et al.): ``A + s·min(α·H, |A|/κ)``, α = 0.4, κ = 2."""
    if kappa <= 0:
        raise ConfigError(f"entropy_adv.kappa must be > 0, got {kappa}")
    adv = entropy_shaped_advantages(batch.advantages, batch.entropies, batch.mask, alpha, kappa, strength)
    return batch.replace(advantages=adv)


def _scale_rows(adv: Tensor, scale: Tensor) -> Tensor:
    return adv * (scale if adv.dim() == 1 else scale.unsqueeze(1))


@register_credit("focal_grpo", features=("group_success",), ranges={"gamma": "[0, inf)"})
def focal_grpo(batch: CreditBatch, gamma: float = 2.0) -> CreditBatch:
    """Focal GRPO (arXiv 2602.06717): scale a group's advantages by ``(1 − p̂)^γ``.

    Not the seed page's "F-GRPO", which is *Factorized* Group-Relative Policy Optimization (arXiv
    2605.12995: candidate generation + ranking), a different method not implemented yet.
    ``p̂`` is the group's success rate, so easy groups are down-weighted. The focal form is this
    project's reading of the abstract ([INF] in the spec); ``γ = 0`` is GRPO.
    """
    p = batch.features["group_success"].float()
    return batch.replace(advantages=_scale_rows(batch.advantages, (1.0 - p).clamp(min=0) ** gamma))


@register_credit("adora", features=("adora_tas",), ranges={"lam": "[0, 1]"})
def adora(batch: CreditBatch, lam: float = 0.1) -> CreditBatch:
    """ADORA (arXiv 2602.10019, length criterion of the released code): ``A·λ`` for disadvantageous groups
    (including groups with no correct answer, as in the code; :func:`adora_advantageous`)."""
    tas = batch.features["adora_tas"].bool()
    scale = torch.where(
        tas, torch.ones_like(tas, dtype=torch.float32), torch.full_like(tas, lam, dtype=torch.float32)
    )
    return batch.replace(advantages=_scale_rows(batch.advantages, scale))


@register_credit(
    "r3l_amplify",
    features=("reward", "group_mean"),
    ranges={"alpha": "[0, inf)", "full_reward": "(-inf, inf)"},
)
def r3l_amplify(batch: CreditBatch, alpha: float = 3.0, full_reward: float = 1.0) -> CreditBatch:
    """R³L positive amplification (arXiv 2601.03715, ``opmd_reweight_adv``).

    ``s = r − mean_group(r)``; ``A = 1`` if ``r ≥ full_reward``, ``α·s`` if ``s ≥ 0``, else ``s``.
    Replaces the (std-normalised) GRPO advantage. R³L trains it with the OPMD loss
    (``−A·log π``, token-mean, ×1/(1+τ); ``loss=opmd``, the method's default); the PPO-clip losses
    remain available as another option.
    """
    r = batch.features["reward"].float()
    s = r - batch.features["group_mean"].float()
    adv = torch.where(r >= full_reward, torch.ones_like(s), torch.where(s >= 0, alpha * s, s))
    if batch.advantages.dim() == 2:
        adv = adv.unsqueeze(1) * batch.mask
    return batch.replace(advantages=adv)


# ---------------------------------------------------------------------------------------------------
# rollout features (computed on the gathered batch, where groups are contiguous)

FEATURES: dict[str, Callable[..., Tensor]] = {}


def register_feature(name: str):
    def deco(fn):
        FEATURES[name] = fn
        return fn

    return deco


@register_feature("adora_tas")
def _feature_adora_tas(base: Mapping[str, Tensor], group_size: int) -> Tensor:
    return adora_advantageous(base["success"], base["length"], base["truncated"], group_size)


def rollout_features(
    rewards: Tensor, success: Tensor, lengths: Tensor, truncated: Tensor, group_size: int, extra: set[str]
) -> dict[str, Tensor]:
    """Per-row features of a gathered rollout batch ``[N]`` (groups contiguous).

    Always: ``reward``, ``group_mean``, ``group_std``, ``group_success``, ``success``, ``length``,
    ``truncated``; plus the registered features named in ``extra``.
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


# ---------------------------------------------------------------------------------------------------
# the chain a method config describes


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
            entropies=torch.rand(2, 3),
            logps=-torch.rand(2, 3),
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


# turn-level methods for multi-turn environments register their steps from their own package
# step-level methods (PURE, CAPO, OPRL) live in their own package and register themselves on import
import crs.steps.intervention  # noqa: E402,F401  (InT)
import crs.steps.methods  # noqa: E402,F401  (PURE, CAPO, OPRL)
from crs.envs import methods as _turn_methods  # noqa: E402, F401
